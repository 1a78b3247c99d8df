package snapshot

import (
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	connlimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/connection_limit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	corev1 "k8s.io/api/core/v1"

	"github.com/weftmesh/weft/contract"
)

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err) // only registered Envoy types are packed
	}
	return a
}

func httpFilter(name string, cfg proto.Message) *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: name, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(cfg)}}
}

// The limits every HTTP listener states explicitly, in Envoy's fields, so a sidecar (or an
// Envoy) fed the snapshot enforces the same bounds whatever its own defaults
// (sidecar/config HTTPLimits explains each value).
const (
	maxRequestHeadersKB   = 60  // Envoy's default max_request_headers_kb
	maxHeadersCount       = 100 // Envoy's default max_headers_count
	requestHeadersTimeout = 10 * time.Second
	downstreamIdleTimeout = 5 * time.Minute
	maxDownstreamConns    = 10_000 // per listener
)

// hcmListener wraps hcm, with the listener-wide limits set on it, in a listener whose
// filter chain caps its connections first (envoy.filters.network.connection_limit).
func hcmListener(name, addr string, port uint32, dir corev3.TrafficDirection, hcm *hcmv3.HttpConnectionManager) *listenerv3.Listener {
	setHCMLimits(hcm)
	limit := &connlimitv3.ConnectionLimit{StatPrefix: name, MaxConnections: wrapperspb.UInt64(maxDownstreamConns)}
	return &listenerv3.Listener{
		Name:    name,
		Address: socketAddress(addr, port),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{
			{Name: contract.ConnectionLimitFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(limit)}},
			{Name: contract.HCMFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)}},
		}}},
		TrafficDirection: dir,
	}
}

// setHCMLimits sets the listener-wide limits on hcm.
func setHCMLimits(hcm *hcmv3.HttpConnectionManager) {
	hcm.MaxRequestHeadersKb = wrapperspb.UInt32(maxRequestHeadersKB)
	hcm.RequestHeadersTimeout = durationpb.New(requestHeadersTimeout)
	hcm.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{
		IdleTimeout:     durationpb.New(downstreamIdleTimeout),
		MaxHeadersCount: wrapperspb.UInt32(maxHeadersCount),
	}
}

// inbound returns the inbound listener and the STATIC cluster of the local app. For a
// function pod the route timeout is the function's (Knative's revision timeout, counted
// from when the call reaches the function's sidecar). The MeshPolicies' RBAC filters, if
// any, come before the router (policy.go).
func inbound(appPort uint32, timeout time.Duration, rbac []*hcmv3.HttpFilter) (*listenerv3.Listener, *clusterv3.Cluster) {
	name := contract.InboundClusterName(appPort)
	l := hcmListener(contract.InboundListenerName, contract.InboundAddress, contract.InboundPort, corev3.TrafficDirection_INBOUND,
		&hcmv3.HttpConnectionManager{
			StatPrefix: contract.InboundListenerName,
			CodecType:  hcmv3.HttpConnectionManager_AUTO,
			RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
				Name: contract.InboundRouteName,
				VirtualHosts: []*routev3.VirtualHost{{
					Name: contract.InboundRouteName, Domains: []string{"*"},
					Routes: []*routev3.Route{{
						Name:  contract.InboundRouteName,
						Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
						Action: &routev3.Route_Route{Route: &routev3.RouteAction{
							ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: name},
							Timeout:          durationpb.New(timeout),
						}},
					}},
				}},
			}},
			HttpFilters: append(rbac, httpFilter(contract.RouterFilterName, &routerv3.Router{})),
		})
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(defaultConnectTimeout),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
				Endpoint: &endpointv3.Endpoint{Address: socketAddress("127.0.0.1", appPort)}}}},
		}}},
	}
	// The app is spoken to in the caller's protocol: a gRPC call arrives as HTTP/2 and
	// must reach the app as HTTP/2 (Istio's inbound clusters sniff the same way).
	return captureInbound(l, appPort), withPortProtocol(c, corev1.ServicePort{})
}
