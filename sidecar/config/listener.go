package config

import (
	"fmt"
	"net"
	"strconv"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	connlimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/connection_limit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	redisv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/redis_proxy/v3"

	// The router's typed config must resolve when static configs and /config_dump pass
	// through protojson.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"

	"github.com/weftmesh/weft/contract"
)

// ListenerInfo is what the xDS client needs to know about a validated listener: which
// route configuration it waits for and which clusters it references directly.
type ListenerInfo struct {
	Name          string
	Address       string
	RDSName       string      // empty if the routes are inline or the listener is not HTTP
	Inline        *RouteTable // inline route_config
	StatPrefix    string
	Redis         *listenerv3.Listener
	RedisClusters []string
	Limits        HTTPLimits // HTTP listeners: from the HCM and a connection_limit filter
	// Authz is the HCM's RBAC filters (authz.go); nil: none, every request is allowed.
	Authz *Authz
	// Capture is set for a listener with original_dst and chains matched on the original
	// destination (capture.go).
	Capture *CaptureListener
}

// DecodeListener validates one listener.
func DecodeListener(l *listenerv3.Listener) (*ListenerInfo, error) {
	where := "listener " + l.GetName()
	if err := onlyFields(l, where, "name", "address", "filter_chains", "traffic_direction", "metadata", "stat_prefix",
		"listener_filters", "default_filter_chain"); err != nil {
		return nil, err
	}
	sa := l.GetAddress().GetSocketAddress()
	if sa == nil {
		return nil, fmt.Errorf("%s: address must be a socket_address", where)
	}
	if err := onlyFields(sa, where+" address", "address", "port_value", "protocol"); err != nil {
		return nil, err
	}
	info := &ListenerInfo{Name: l.GetName(), Address: net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))}
	if isCapture(l) {
		if err := decodeCaptureListener(l, info, where); err != nil {
			return nil, err
		}
		return info, nil
	}
	if len(l.GetFilterChains()) != 1 {
		return nil, fmt.Errorf("%s: has %d filter chains; exactly one is supported", where, len(l.GetFilterChains()))
	}
	fc := l.GetFilterChains()[0]
	if err := onlyFields(fc, where+" filter chain", "filters", "name"); err != nil {
		return nil, err
	}
	filters := fc.GetFilters()
	info.Limits = DefaultHTTPLimits()
	if len(filters) == 2 && filters[0].GetName() == ConnectionLimitFilterName && filters[1].GetName() == contract.HCMFilterName {
		var cl connlimitv3.ConnectionLimit
		if err := filters[0].GetTypedConfig().UnmarshalTo(&cl); err != nil {
			return nil, fmt.Errorf("%s: decoding connection_limit: %w", where, err)
		}
		if err := decodeConnectionLimit(&cl, &info.Limits, where); err != nil {
			return nil, err
		}
		filters = filters[1:]
	}
	var redisAuthz *RedisAuthz
	if rb, _, ok := redisListenerFilters(filters); ok {
		// MeshPolicies on a Redis pool (redisauthz.go): RBAC network filters before redis_proxy.
		a, err := decodeRedisAuthz(l, rb)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		redisAuthz, filters = a, filters[len(rb):]
	}
	if len(filters) != 1 {
		return nil, fmt.Errorf("%s: filter chain has %d filters; one network filter is supported (%s may come before %s)",
			where, len(fc.GetFilters()), ConnectionLimitFilterName, contract.HCMFilterName)
	}
	f := filters[0]
	switch f.GetName() {
	case contract.HCMFilterName:
		var hcm hcmv3.HttpConnectionManager
		if err := f.GetTypedConfig().UnmarshalTo(&hcm); err != nil {
			return nil, fmt.Errorf("%s: decoding http_connection_manager: %w", where, err)
		}
		if err := decodeHCM(&hcm, info, where); err != nil {
			return nil, err
		}
	case contract.RedisFilterName:
		var rp redisv3.RedisProxy
		if err := f.GetTypedConfig().UnmarshalTo(&rp); err != nil {
			return nil, fmt.Errorf("%s: decoding redis_proxy: %w", where, err)
		}
		info.Redis = l
		if !redisAuthz.Refuses() { // a pool this sidecar may not use comes without its clusters
			info.RedisClusters = redisClusters(&rp)
		}
	default:
		return nil, fmt.Errorf("%s: network filter %q is not supported; use %s or %s", where, f.GetName(), contract.HCMFilterName, contract.RedisFilterName)
	}
	return info, nil
}

func decodeHCM(h *hcmv3.HttpConnectionManager, info *ListenerInfo, where string) error {
	where += " http_connection_manager"
	if err := onlyFields(h, where, "stat_prefix", "codec_type", "rds", "route_config", "http_filters",
		"max_request_headers_kb", "request_headers_timeout", "common_http_protocol_options"); err != nil {
		return err
	}
	if err := decodeHCMLimits(h, &info.Limits, where); err != nil {
		return err
	}
	info.StatPrefix = h.GetStatPrefix()
	switch rs := h.GetRouteSpecifier().(type) {
	case *hcmv3.HttpConnectionManager_Rds:
		if err := onlyFields(rs.Rds, where+" rds", "config_source", "route_config_name"); err != nil {
			return err
		}
		cs := rs.Rds.GetConfigSource()
		if cs.GetAds() == nil && cs.GetSelf() == nil {
			return fmt.Errorf("%s: rds config_source must be ads or self", where)
		}
		if rs.Rds.GetRouteConfigName() == "" {
			return fmt.Errorf("%s: rds.route_config_name is empty", where)
		}
		info.RDSName = rs.Rds.GetRouteConfigName()
	case *hcmv3.HttpConnectionManager_RouteConfig:
		t, err := DecodeRouteConfig(rs.RouteConfig)
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		info.Inline = t
	default:
		return fmt.Errorf("%s: needs rds or route_config", where)
	}
	fs := h.GetHttpFilters()
	if len(fs) == 0 || fs[len(fs)-1].GetName() != contract.RouterFilterName {
		return fmt.Errorf("%s: the last http filter must be %s", where, contract.RouterFilterName)
	}
	seen := map[string]bool{}
	for i, f := range fs {
		if seen[f.GetName()] && f.GetName() != contract.RBACFilterName {
			return fmt.Errorf("%s: http filter %q appears twice", where, f.GetName())
		}
		seen[f.GetName()] = true
		switch f.GetName() {
		case contract.RouterFilterName:
			if i != len(fs)-1 {
				return fmt.Errorf("%s: %s must be the last http filter", where, contract.RouterFilterName)
			}
		case contract.RBACFilterName:
			var cfg rbacv3.RBAC
			if err := f.GetTypedConfig().UnmarshalTo(&cfg); err != nil {
				return fmt.Errorf("%s: decoding rbac filter: %w", where, err)
			}
			if info.Authz == nil {
				info.Authz = &Authz{}
			}
			if err := decodeRBACFilter(&cfg, info.Authz, where); err != nil {
				return err
			}
		case contract.FaultFilterName:
			if tc := f.GetTypedConfig(); tc != nil {
				var hf faultv3.HTTPFault
				if err := tc.UnmarshalTo(&hf); err != nil {
					return fmt.Errorf("%s: decoding fault filter: %w", where, err)
				}
				if err := onlyFields(&hf, where+" fault filter (listener-wide faults are not supported; configure them per route)"); err != nil {
					return err
				}
			}
		default:
			if !f.GetIsOptional() {
				return fmt.Errorf("%s: http filter %q is not supported", where, f.GetName())
			}
		}
	}
	return nil
}

func redisClusters(rp *redisv3.RedisProxy) []string {
	var out []string
	add := func(r *redisv3.RedisProxy_PrefixRoutes_Route) {
		if r == nil {
			return
		}
		if r.GetCluster() != "" {
			out = append(out, r.GetCluster())
		}
		for _, m := range r.GetRequestMirrorPolicy() {
			if m.GetCluster() != "" {
				out = append(out, m.GetCluster())
			}
		}
	}
	add(rp.GetPrefixRoutes().GetCatchAllRoute())
	for _, r := range rp.GetPrefixRoutes().GetRoutes() {
		add(r)
	}
	return out
}
