package snapshot

import (
	"net"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	redisv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/redis_proxy/v3"
	hcredisv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/health_checkers/redis/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
)

// RedisPool is one RedisProxy's resources. The listener goes only to sidecars its
// workloadSelector matches; the cluster also goes wherever another pool's prefix routes
// point at it.
type RedisPool struct {
	Key      ObjectKey
	Selector map[string]string
	// Listener is nil when the pool must not be served (a referenced Secret is missing, or
	// another pool holds its listener address).
	Listener  *listenerv3.Listener
	Cluster   *clusterv3.Cluster
	Endpoints *endpointv3.ClusterLoadAssignment
	// Routes are the names of the other pools' clusters the listener's prefix routes use.
	Routes []string
	// DownstreamSecret is the password clients must AUTH with, which the listener names
	// (nil: no client auth); UpstreamSecret the one the proxy sends to the servers, which
	// the cluster names (nil: none). Each goes only with the resource naming it.
	DownstreamSecret, UpstreamSecret *tlsv3.Secret
}

// Selects reports whether a sidecar in view v serves this pool's listener.
func (p *RedisPool) Selects(v View) bool {
	if v.RedisProxy != "" {
		return v.RedisProxy == p.Key.Namespace+"/"+p.Key.Name
	}
	return p.Key.Namespace == v.Namespace && labelsMatch(v.Labels, p.Selector)
}

func (t *translator) secret(ns string, ref meshv1alpha1.SecretKeyRef, what string, p *problems) (string, bool) {
	key := ref.Key
	if key == "" {
		key = "password"
	}
	s, ok := t.ix.secrets[nsName(ns, ref.Name)]
	if !ok {
		p.secretf("%s Secret %s/%s not found; create it: the pool is not served until then", what, ns, ref.Name)
		return "", false
	}
	v, ok := s.Data[key]
	if !ok {
		sv, ok2 := s.StringData[key]
		if !ok2 {
			p.secretf("%s Secret %s/%s has no key %q; add it: the pool is not served until then", what, ns, ref.Name, key)
			return "", false
		}
		v = []byte(sv)
	}
	// Auth configured with no password is a mistake the sidecar would refuse (NACK): say so
	// here. Found by FuzzBuild, as the next case.
	if len(v) == 0 {
		p.secretf("%s Secret %s/%s key %q is empty; set the password: the pool is not served until then", what, ns, ref.Name, key)
		return "", false
	}
	// A Secret's data is bytes; SDS carries a password as a string, which must be UTF-8
	// (a binary one failed to marshal and stopped the snapshot: found by FuzzBuild).
	if !utf8.Valid(v) {
		p.secretf("%s Secret %s/%s key %q is not UTF-8 text; store the password as text: the pool is not served until then", what, ns, ref.Name, key)
		return "", false
	}
	return string(v), true
}

// Defaults for RedisProxy fields left unset: the CRD's kubebuilder defaults, applied here too
// for objects that reach the translator without them (built in tests, or stored before the
// default existed).
const (
	// redisDefaultPort is Redis's port: the listener's and a serviceRef's when unset.
	redisDefaultPort = 6379
	// redisDefaultAddress is where the sidecar serves Redis unless told otherwise: loopback,
	// for the application in the same pod only.
	redisDefaultAddress = "127.0.0.1"
	// redisDefaultHealthInterval and redisDefaultHealthTimeout: a PING every 3 s, failing
	// after 1 s.
	redisDefaultHealthInterval = 3 * time.Second
	redisDefaultHealthTimeout  = time.Second
	// redisDefaultHealthy and redisDefaultUnhealthy: one good PING returns a server, three
	// bad ones in a row take it out.
	redisDefaultHealthy   = 1
	redisDefaultUnhealthy = 3
	// redisDefaultFailures and redisDefaultEjection: two consecutive failures eject a server
	// for 30 s (twemproxy's server_failure_limit and server_retry_timeout).
	redisDefaultFailures = 2
	redisDefaultEjection = 30 * time.Second
	// redisDefaultHash is twemproxy's default key hash.
	redisDefaultHash = "fnv1a_64"
	// redisDefaultOpTimeout bounds one command's round trip to a server (1 s).
	redisDefaultOpTimeout = time.Second
)

// redisProxy translates a RedisProxy into its listener, pool cluster and endpoints.
func (t *translator) redisProxy(rp *meshv1alpha1.RedisProxy) (*RedisPool, *problems) {
	p := &problems{}
	name := contract.RedisName(rp.Namespace, rp.Name)
	pool := &RedisPool{Key: ObjectKey{KindRedisProxy, rp.Namespace, rp.Name}}
	if ws := rp.Spec.WorkloadSelector; ws != nil {
		pool.Selector = ws.Labels
	}
	c := edsCluster(name)
	if rp.Spec.ServiceRef != nil {
		// Servers behind sidecars (injected pods whose capture takes the Redis port) are
		// marked tlsMode: weft, as a Service's endpoints are: the pool's sidecar dials them
		// with mutual TLS (weft-tcp). spec.servers are addresses, never marked.
		c = withMeshTLSMatches(c)
	}
	c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN // the sidecar's ring places keys, not Envoy's LB
	c.HealthChecks = redisHealthChecks(rp.Spec.HealthCheck)
	c.OutlierDetection, c.Metadata = redisPoolPolicy(&rp.Spec)
	serve := t.redisUpstreamAuth(rp, c, pool, p)
	pool.Cluster = c
	pool.Endpoints = t.redisEndpoints(rp, name, p)

	filter := t.redisFilter(rp, name, pool, p)
	if !t.redisDownstreamAuth(rp, filter, pool, p) {
		serve = false // never serve a pool without the password its clients must give
	}
	if !serve {
		return pool, p
	}
	pool.Listener = redisListener(rp.Spec.Listener, name, filter)
	if pool.DownstreamSecret != nil {
		pool.Listener.Metadata = withSecretRef(nil, pool.DownstreamSecret.GetName())
	}
	return pool, p
}

// redisHealthChecks is the pool cluster's active health check: the Redis PING checker,
// defaults filled.
func redisHealthChecks(hc meshv1alpha1.RedisHealthCheck) []*corev3.HealthCheck {
	healthy, unhealthy := hc.HealthyThreshold, hc.UnhealthyThreshold
	if healthy == 0 {
		healthy = redisDefaultHealthy
	}
	if unhealthy == 0 {
		unhealthy = redisDefaultUnhealthy
	}
	hcCfg, _ := anypb.New(&hcredisv3.Redis{})
	return []*corev3.HealthCheck{{
		Interval:           durOr(hc.Interval, redisDefaultHealthInterval),
		Timeout:            durOr(hc.Timeout, redisDefaultHealthTimeout),
		HealthyThreshold:   u32(healthy),
		UnhealthyThreshold: u32(unhealthy),
		HealthChecker: &corev3.HealthCheck_CustomHealthCheck_{CustomHealthCheck: &corev3.HealthCheck_CustomHealthCheck{
			Name: contract.RedisHealthCheckerName, ConfigType: &corev3.HealthCheck_CustomHealthCheck_TypedConfig{TypedConfig: hcCfg}}},
	}}
}

// redisPoolPolicy is the pool cluster's outlier detection and its weft.dev/redis metadata:
// the sharding (distribution, hash, hash tag) and the ejection policy the sidecar's ring
// applies, defaults filled.
func redisPoolPolicy(spec *meshv1alpha1.RedisProxySpec) (*clusterv3.OutlierDetection, *corev3.Metadata) {
	od := spec.OutlierDetection
	failures := od.ConsecutiveFailures
	if failures == 0 {
		failures = redisDefaultFailures
	}
	ejection := durOr(od.EjectionTime, redisDefaultEjection)
	mode := od.Mode
	if mode == "" {
		mode = meshv1alpha1.EjectFail
	}
	sh := spec.Sharding
	dist, hash := sh.Distribution, sh.Hash
	if dist == "" {
		dist = meshv1alpha1.DistributionKetama
	}
	if hash == "" {
		hash = redisDefaultHash
	}
	tag := sh.HashTag
	md := metadata(contract.RedisMetadataKey, contract.RedisPoolMeta{
		Distribution: string(dist), Hash: string(hash), HashTag: &tag,
		EjectMode: string(mode), FailureLimit: failures, RetryTimeout: ejection.AsDuration(),
	}.Encode())
	return &clusterv3.OutlierDetection{Consecutive_5Xx: u32(failures), BaseEjectionTime: ejection}, md
}

// redisUpstreamAuth makes the password the servers ask for the pool's UpstreamSecret and
// names it on the pool cluster; the username (not a secret) rides in the cluster's
// RedisProtocolOptions. It reports false when the password's Secret is missing (a problem is
// recorded).
func (t *translator) redisUpstreamAuth(rp *meshv1alpha1.RedisProxy, c *clusterv3.Cluster, pool *RedisPool, p *problems) bool {
	a := rp.Spec.Auth
	if a == nil || a.Upstream == nil {
		return true
	}
	pw, ok := t.secret(rp.Namespace, a.Upstream.PasswordSecretRef, "upstream password", p)
	if !ok {
		return false
	}
	pool.UpstreamSecret = genericSecret(contract.RedisUpstreamSecretName(rp.Namespace, rp.Name), pw)
	c.Metadata = withSecretRef(c.Metadata, pool.UpstreamSecret.GetName())
	po := &redisv3.RedisProtocolOptions{AuthPassword: sdsPlaceholder(pool.UpstreamSecret.GetName())}
	if a.Upstream.Username != "" {
		po.AuthUsername = inlineString(a.Upstream.Username)
	}
	anyPO, _ := anypb.New(po)
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{contract.RedisFilterName: anyPO}
	return true
}

// redisFilter is the pool listener's redis_proxy filter: its settings, a catch-all route
// to the pool and the prefix routes to other pools, whose clusters it adds to pool.Routes.
// A prefix route to a RedisProxy that does not exist is dropped (a problem is recorded).
func (t *translator) redisFilter(rp *meshv1alpha1.RedisProxy, name string, pool *RedisPool, p *problems) *redisv3.RedisProxy {
	spec := &rp.Spec
	ps := &redisv3.RedisProxy_ConnPoolSettings{OpTimeout: durOr(spec.OpTimeout, redisDefaultOpTimeout), EnableHashtagging: spec.Sharding.HashTag != ""}
	filter := &redisv3.RedisProxy{
		StatPrefix: strings.NewReplacer("|", "_", "/", "_").Replace(name),
		Settings:   ps,
		PrefixRoutes: &redisv3.RedisProxy_PrefixRoutes{
			CatchAllRoute: &redisv3.RedisProxy_PrefixRoutes_Route{Cluster: name},
		},
	}
	for _, r := range spec.PrefixRoutes {
		if _, ok := t.ix.redis[nsName(rp.Namespace, r.RedisProxy)]; !ok {
			p.missingf("prefix route %q names RedisProxy %s/%s, which does not exist; create it or remove the route: until then those keys go to this pool", r.Prefix, rp.Namespace, r.RedisProxy)
			continue
		}
		target := contract.RedisName(rp.Namespace, r.RedisProxy)
		filter.PrefixRoutes.Routes = append(filter.PrefixRoutes.Routes, &redisv3.RedisProxy_PrefixRoutes_Route{
			Prefix: r.Prefix, RemovePrefix: r.RemovePrefix, Cluster: target})
		if target != name {
			pool.Routes = append(pool.Routes, target)
		}
	}
	return filter
}

// redisDownstreamAuth makes the password clients must give the pool's DownstreamSecret (the
// listener names it); the username (not a secret) stays on the filter. It reports false
// when the password's Secret is missing (a problem is recorded).
func (t *translator) redisDownstreamAuth(rp *meshv1alpha1.RedisProxy, filter *redisv3.RedisProxy, pool *RedisPool, p *problems) bool {
	a := rp.Spec.Auth
	if a == nil || a.Downstream == nil {
		return true
	}
	pw, ok := t.secret(rp.Namespace, a.Downstream.PasswordSecretRef, "downstream password", p)
	if !ok {
		return false
	}
	pool.DownstreamSecret = genericSecret(contract.RedisDownstreamSecretName(rp.Namespace, rp.Name), pw)
	filter.DownstreamAuthPasswords = []*corev3.DataSource{sdsPlaceholder(pool.DownstreamSecret.GetName())}
	if a.Downstream.Username != "" {
		filter.DownstreamAuthUsername = inlineString(a.Downstream.Username)
	}
	return true
}

// redisListener is the pool's listener at spec.listener, defaults filled, serving filter.
func redisListener(l meshv1alpha1.RedisListener, name string, filter *redisv3.RedisProxy) *listenerv3.Listener {
	addr, port := l.Address, l.Port
	if addr == "" {
		addr = redisDefaultAddress
	}
	if port == 0 {
		port = redisDefaultPort
	}
	tc, _ := anypb.New(filter)
	return &listenerv3.Listener{
		Name:    name,
		Address: socketAddress(addr, uint32(port)),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: contract.RedisFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: tc}}}}},
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
	}
}

// redisEndpoints lists the pool's servers: spec.servers with their ring names and weights,
// or the ready endpoints of spec.serviceRef named by hostname (StatefulSet) or pod.
func (t *translator) redisEndpoints(rp *meshv1alpha1.RedisProxy, name string, p *problems) *endpointv3.ClusterLoadAssignment {
	if ref := rp.Spec.ServiceRef; ref != nil {
		svc, ok := t.ix.services[nsName(rp.Namespace, ref.Name)]
		if !ok {
			p.missingf("serviceRef: Service %s/%s not found; create it or fix serviceRef", rp.Namespace, ref.Name)
			return &endpointv3.ClusterLoadAssignment{ClusterName: name}
		}
		port := ref.Port
		if port == 0 {
			port = redisDefaultPort
		}
		sp, why := servicePort(svc, port)
		if why != "" {
			p.missingf("serviceRef: Service %s/%s %s", rp.Namespace, ref.Name, why)
			return &endpointv3.ClusterLoadAssignment{ClusterName: name}
		}
		f := filterFor(sp)
		f.readyOnly, f.preferHostname, f.meshTLS = true, true, true
		return t.ix.loadAssignment(name, t.ix.slices[nsName(rp.Namespace, ref.Name)], f)
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	loc := &endpointv3.LocalityLbEndpoints{}
	seen := map[string]string{}
	for _, s := range rp.Spec.Servers {
		host, portStr, err := net.SplitHostPort(s.Address)
		port, perr := strconv.ParseUint(portStr, 10, 16)
		if err != nil || perr != nil || port == 0 {
			p.invalidf("server %s: address %q is not host:port; fix it: the server is left out", s.Name, s.Address)
			continue
		}
		if other, dup := seen[s.Address]; dup {
			p.invalidf("servers %s and %s have the same address %s; remove one: %s is left out", other, s.Name, s.Address, s.Name)
			continue
		}
		seen[s.Address] = s.Name
		w := s.Weight
		if w == 0 {
			w = 1
		}
		loc.LbEndpoints = append(loc.LbEndpoints, &endpointv3.LbEndpoint{
			HealthStatus:        corev3.HealthStatus_HEALTHY,
			LoadBalancingWeight: wrapperspb.UInt32(uint32(w)),
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: socketAddress(host, uint32(port)), Hostname: s.Name}},
		})
	}
	if len(loc.LbEndpoints) > 0 {
		cla.Endpoints = []*endpointv3.LocalityLbEndpoints{loc}
	}
	return cla
}
