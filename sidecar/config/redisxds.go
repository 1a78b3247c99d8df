package config

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	redisv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/redis_proxy/v3"
	hcredisv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/health_checkers/redis/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/redisproxy/hashkit"
	"github.com/weftmesh/weft/sidecar/redisproxy/ring"
)

func redisSortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// RedisConfigFromXDS decodes the redis listener, its pool clusters and their
// endpoints as the control plane emits them (docs/xds-contract.md), with no SDS
// secrets: a listener or cluster naming one is refused. See RedisConfigWithSecrets.
func RedisConfigFromXDS(l *listenerv3.Listener, clusters map[string]*clusterv3.Cluster, endpoints map[string]*endpointv3.ClusterLoadAssignment) (RedisConfig, error) {
	return RedisConfigWithSecrets(l, clusters, endpoints, nil)
}

// RedisConfigWithSecrets decodes the redis listener, its pool clusters and their
// endpoints, taking the passwords they name (contract.SecretRefMetadataKey) from secrets
// (SDS Secrets by name). Fields that would change behaviour but are not implemented are
// refused by name, so the sidecar NACKs instead of silently behaving differently. It is
// pure.
func RedisConfigWithSecrets(l *listenerv3.Listener, clusters map[string]*clusterv3.Cluster, endpoints map[string]*endpointv3.ClusterLoadAssignment, secrets map[string]proto.Message) (RedisConfig, error) {
	var cfg RedisConfig
	if l == nil {
		return cfg, errors.New("no redis listener")
	}
	rp, err := redisFilter(l)
	if err != nil {
		return cfg, fmt.Errorf("listener %s: %w", l.GetName(), err)
	}
	if sa := l.GetAddress().GetSocketAddress(); sa != nil {
		cfg.Listen = net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
	}
	cfg.StatPrefix = rp.GetStatPrefix()
	if rb, _, ok := redisListenerFilters(l.GetFilterChains()[0].GetFilters()); ok {
		if cfg.Authz, err = decodeRedisAuthz(l, rb); err != nil {
			return cfg, fmt.Errorf("listener %s: %w", l.GetName(), err)
		}
	}
	if cfg.Authz.Refuses() {
		// The control plane judged this sidecar's identity and refused it: it sends the
		// listener without passwords, clusters or servers, and every command is answered
		// with the refusal (redisproxy).
		return cfg, nil
	}
	if ref, _ := secretRef(l.GetMetadata()); ref != "" {
		// The password is the SDS secret; what stands in the inline field is a placeholder
		// that makes sidecars without SDS secrets refuse the listener (fail closed).
		rp.DownstreamAuthPasswords, rp.DownstreamAuthPassword = nil, nil
	}
	if err := decodeRedisProxy(rp, &cfg); err != nil {
		return cfg, fmt.Errorf("listener %s: %w", l.GetName(), err)
	}
	if pw, ok, err := redisSecret(l.GetMetadata(), secrets); err != nil {
		return cfg, fmt.Errorf("listener %s: downstream password: %w", l.GetName(), err)
	} else if ok {
		cfg.DownstreamPasswords = append(cfg.DownstreamPasswords, pw)
	}
	cfg.Pools = map[string]RedisPool{}
	want := []string{}
	if cfg.CatchAll != "" {
		want = append(want, cfg.CatchAll)
	}
	for _, r := range cfg.Routes {
		want = append(want, r.Pool)
	}
	for _, name := range want {
		if _, done := cfg.Pools[name]; done {
			continue
		}
		pl, err := decodeRedisPool(clusters[name], endpoints[name], rp.GetSettings().GetEnableHashtagging())
		if err != nil {
			return cfg, fmt.Errorf("listener %s: cluster %s: %w", l.GetName(), name, err)
		}
		if pw, ok, err := redisSecret(clusters[name].GetMetadata(), secrets); err != nil {
			return cfg, fmt.Errorf("listener %s: cluster %s: upstream password: %w", l.GetName(), name, err)
		} else if ok {
			pl.UpstreamPassword = pw
		}
		cfg.Pools[name] = pl
	}
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("listener %s: %w", l.GetName(), err)
	}
	return cfg, nil
}

// redisSecret is the password md names (ok false when it names none).
func redisSecret(md *corev3.Metadata, secrets map[string]proto.Message) (string, bool, error) {
	ref, err := secretRef(md)
	if err != nil || ref == "" {
		return "", false, err
	}
	one, _, ok, err := secretValue(secrets, ref)
	if !ok {
		return "", false, fmt.Errorf("secret %s has not arrived over SDS", ref)
	}
	if err != nil {
		return "", false, err
	}
	if one == "" {
		return "", false, fmt.Errorf("secret %s: want one value in generic_secret.secret", ref)
	}
	return one, true, nil
}

func redisFilter(l *listenerv3.Listener) (*redisv3.RedisProxy, error) {
	if len(l.GetFilterChains()) != 1 {
		return nil, fmt.Errorf("want exactly one filter chain, got %d", len(l.GetFilterChains()))
	}
	filters := l.GetFilterChains()[0].GetFilters()
	if _, rf, ok := redisListenerFilters(filters); ok {
		filters = []*listenerv3.Filter{rf} // the RBAC filters before it: decodeRedisAuthz
	}
	if len(filters) == 0 {
		return nil, fmt.Errorf("no %s filter", contract.RedisFilterName)
	}
	for _, f := range filters {
		if f.GetName() != contract.RedisFilterName {
			return nil, fmt.Errorf("unsupported network filter %q next to %s", f.GetName(), contract.RedisFilterName)
		}
	}
	if len(filters) > 1 {
		return nil, fmt.Errorf("want exactly one %s filter, got %d", contract.RedisFilterName, len(filters))
	}
	rp := &redisv3.RedisProxy{}
	if err := filters[0].GetTypedConfig().UnmarshalTo(rp); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", contract.RedisFilterName, err)
	}
	return rp, nil
}

// unsupported returns an error naming the first set field from names.
func redisUnsupported(set map[string]bool) error {
	for _, n := range redisSortedKeys(set) {
		if set[n] {
			return fmt.Errorf("field %s is not supported by the Weft sidecar's Redis proxy; remove it", n)
		}
	}
	return nil
}

func decodeRedisProxy(rp *redisv3.RedisProxy, cfg *RedisConfig) error {
	s := rp.GetSettings()
	if err := redisUnsupported(map[string]bool{
		"faults":                                len(rp.GetFaults()) > 0,
		"external_auth_provider":                rp.GetExternalAuthProvider() != nil,
		"custom_commands":                       len(rp.GetCustomCommands()) > 0,
		"protocol_version":                      rp.GetProtocolVersion() != redisv3.RedisProxy_RESP2,
		"settings.enable_redirection":           s.GetEnableRedirection(),
		"settings.dns_cache_config":             s.GetDnsCacheConfig() != nil,
		"settings.read_policy":                  s.GetReadPolicy() != redisv3.RedisProxy_ConnPoolSettings_MASTER,
		"settings.connection_rate_limit":        s.GetConnectionRateLimit() != nil,
		"downstream_auth_password (deprecated)": rp.GetDownstreamAuthPassword() != nil && len(rp.GetDownstreamAuthPasswords()) > 0,
	}); err != nil {
		return err
	}
	// max_buffer_size_before_flush, buffer_flush_timeout, enable_command_stats
	// and latency_in_micros are tuning and stats knobs: the proxy always
	// batches writes and always keeps per-command stats.
	cfg.OpTimeout = s.GetOpTimeout().AsDuration()
	pws := rp.GetDownstreamAuthPasswords()
	if p := rp.GetDownstreamAuthPassword(); p != nil {
		pws = append(pws, p)
	}
	for i, ds := range pws {
		pw, err := inlineSecret(ds)
		if err != nil {
			return fmt.Errorf("downstream_auth_passwords[%d]: %w", i, err)
		}
		cfg.DownstreamPasswords = append(cfg.DownstreamPasswords, pw)
	}
	if u := rp.GetDownstreamAuthUsername(); u != nil {
		name, err := inlineSecret(u)
		if err != nil {
			return fmt.Errorf("downstream_auth_username: %w", err)
		}
		cfg.DownstreamUsername = name
	}
	pr := rp.GetPrefixRoutes()
	cfg.RoutesCaseInsensitive = pr.GetCaseInsensitive()
	if ca := pr.GetCatchAllRoute(); ca != nil {
		if err := redisRouteFieldsOK(ca, "catch_all_route"); err != nil {
			return err
		}
		cfg.CatchAll = ca.GetCluster()
	}
	for i, r := range pr.GetRoutes() {
		if err := redisRouteFieldsOK(r, fmt.Sprintf("routes[%d]", i)); err != nil {
			return err
		}
		cfg.Routes = append(cfg.Routes, RedisRoute{Prefix: r.GetPrefix(), RemovePrefix: r.GetRemovePrefix(), Pool: r.GetCluster()})
	}
	return nil
}

func redisRouteFieldsOK(r *redisv3.RedisProxy_PrefixRoutes_Route, where string) error {
	return redisUnsupported(map[string]bool{
		"prefix_routes." + where + ".request_mirror_policy": len(r.GetRequestMirrorPolicy()) > 0,
		"prefix_routes." + where + ".key_formatter":         r.GetKeyFormatter() != "",
		"prefix_routes." + where + ".read_command_policy":   r.GetReadCommandPolicy() != nil,
	})
}

// inlineSecret accepts only inline DataSources: the sidecar has no access to
// files or environment of the control plane.
func inlineSecret(ds *corev3.DataSource) (string, error) {
	switch v := ds.GetSpecifier().(type) {
	case *corev3.DataSource_InlineString:
		return v.InlineString, nil
	case *corev3.DataSource_InlineBytes:
		return string(v.InlineBytes), nil
	}
	return "", errors.New("only inline_string or inline_bytes data sources are supported")
}

// decodeRedisPool builds a pool from its cluster and endpoints. hashtagging is
// the listener's enable_hashtagging, which means a "{}" tag unless the
// cluster's weft.dev/redis metadata names another.
func decodeRedisPool(c *clusterv3.Cluster, cla *endpointv3.ClusterLoadAssignment, hashtagging bool) (RedisPool, error) {
	var pl RedisPool
	if c == nil {
		return pl, errors.New("cluster is missing from CDS")
	}
	if cla == nil {
		return pl, errors.New("endpoints are missing from EDS")
	}
	if o := c.GetTypedExtensionProtocolOptions()[contract.RedisFilterName]; o != nil {
		po := &redisv3.RedisProtocolOptions{}
		if err := o.UnmarshalTo(po); err != nil {
			return pl, fmt.Errorf("decoding RedisProtocolOptions: %w", err)
		}
		if err := redisUnsupported(map[string]bool{"aws_iam": po.GetAwsIam() != nil, "credentials": len(po.GetCredentials()) > 0}); err != nil {
			return pl, err
		}
		if ref, _ := secretRef(c.GetMetadata()); ref != "" {
			po.AuthPassword = nil // a placeholder: the SDS secret is the password
		}
		if po.GetAuthPassword() != nil {
			pw, err := inlineSecret(po.GetAuthPassword())
			if err != nil {
				return pl, fmt.Errorf("auth_password: %w", err)
			}
			pl.UpstreamPassword = pw
		}
		if po.GetAuthUsername() != nil {
			u, err := inlineSecret(po.GetAuthUsername())
			if err != nil {
				return pl, fmt.Errorf("auth_username: %w", err)
			}
			pl.UpstreamUsername = u
		}
	}
	if hashtagging {
		pl.HashTag = "{}"
	}
	if err := decodeRedisMetadata(c.GetMetadata().GetFilterMetadata()[contract.RedisMetadataKey], &pl); err != nil {
		return pl, fmt.Errorf("metadata %s: %w", contract.RedisMetadataKey, err)
	}
	if err := decodeRedisHealth(c.GetHealthChecks(), &pl); err != nil {
		return pl, err
	}
	var tlsMatch Cluster // the cluster's transport_socket_matches (meshtls.go)
	if err := decodeTransportSocketMatches(c, "cluster "+c.GetName(), &tlsMatch); err != nil {
		return pl, err
	}
	for _, le := range cla.GetEndpoints() {
		for _, lb := range le.GetLbEndpoints() {
			ep := lb.GetEndpoint()
			sa := ep.GetAddress().GetSocketAddress()
			if sa == nil {
				return pl, errors.New("an endpoint has no socket address")
			}
			addr := net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
			name := ep.GetHostname()
			if name == "" {
				name = addr // twemproxy's ring name without an explicit name
			}
			w := uint32(1)
			if lw := lb.GetLoadBalancingWeight(); lw != nil {
				w = lw.GetValue()
			}
			if w < 1 {
				return pl, fmt.Errorf("endpoint %s has weight 0; redis weights must be at least 1", name)
			}
			pl.Servers = append(pl.Servers, RedisServer{Name: name, Addr: addr, Weight: w,
				MeshTLS: tlsMatch.MeshTLSMatch && endpointMeshTLS(lb.GetMetadata())})
		}
	}
	return pl, nil
}

func decodeRedisMetadata(s *structpb.Struct, pl *RedisPool) error {
	pl.Distribution, pl.Hash = ring.Ketama, hashkit.Default
	if s == nil {
		return nil
	}
	m, err := contract.DecodeRedisPoolMeta(s)
	if err != nil {
		return err
	}
	if m.Distribution != "" {
		pl.Distribution = ring.Distribution(m.Distribution)
	}
	if m.Hash != "" {
		pl.Hash = m.Hash
	}
	if m.HashTag != nil {
		pl.HashTag = *m.HashTag
	}
	pl.EjectMode = EjectMode(m.EjectMode)
	pl.FailureLimit = int(m.FailureLimit)
	pl.RetryTimeout = m.RetryTimeout
	return nil
}

func decodeRedisHealth(hcs []*corev3.HealthCheck, pl *RedisPool) error {
	if len(hcs) == 0 {
		return nil
	}
	if len(hcs) > 1 {
		return fmt.Errorf("%d health checks; the redis proxy supports one", len(hcs))
	}
	hc := hcs[0]
	ch := hc.GetCustomHealthCheck()
	if ch == nil || ch.GetName() != contract.RedisHealthCheckerName {
		return fmt.Errorf("health check must be custom_health_check %s", contract.RedisHealthCheckerName)
	}
	if tc := ch.GetTypedConfig(); tc != nil {
		r := &hcredisv3.Redis{}
		if err := tc.UnmarshalTo(r); err != nil {
			return fmt.Errorf("decoding %s config: %w", contract.RedisHealthCheckerName, err)
		}
		if err := redisUnsupported(map[string]bool{"health_checks[0].key (EXISTS probe)": r.GetKey() != "", "health_checks[0].aws_iam": r.GetAwsIam() != nil}); err != nil {
			return err
		}
	}
	pl.HealthCheck = &RedisHealthCheck{
		Interval:           hc.GetInterval().AsDuration(),
		Timeout:            hc.GetTimeout().AsDuration(),
		HealthyThreshold:   int(hc.GetHealthyThreshold().GetValue()),
		UnhealthyThreshold: int(hc.GetUnhealthyThreshold().GetValue()),
	}
	return nil
}
