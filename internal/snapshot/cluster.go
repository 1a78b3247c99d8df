package snapshot

import (
	"math"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpupv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
)

// Defaults the API documents; repeated here because objects read in tests (and objects
// created before a default was added) may lack them.
const (
	defaultConnectTimeout  = 500 * time.Millisecond // the API default; see TrafficPolicy.ConnectionPool.ConnectTimeout
	defaultMinRingSize     = 1024
	defaultHCInterval      = 5 * time.Second
	defaultHCTimeout       = time.Second
	defaultHCUnhealthy     = 3
	defaultHCHealthy       = 1
	defaultOutlierInterval = 10 * time.Second
	defaultBaseEjection    = 30 * time.Second
	defaultMaxEjectionPct  = 10
	defaultConsecutive5xx  = 5
)

func durOr(d *meshv1alpha1.Duration, def time.Duration) *durationpb.Duration {
	if d == nil {
		return durationpb.New(def)
	}
	return durationpb.New(d.Duration)
}

func u32(v int32) *wrapperspb.UInt32Value { return wrapperspb.UInt32(uint32(v)) }

// adsSource is the ADS config source every EDS cluster and RDS listener uses.
func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

// edsCluster is the skeleton of every EDS cluster: its endpoints come over ADS under its
// own name.
func edsCluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: name},
		ConnectTimeout:       durationpb.New(defaultConnectTimeout),
		LbPolicy:             clusterv3.Cluster_LEAST_REQUEST,
	}
}

// metadata is filter_metadata with one Weft key; the payload comes from a contract type's
// Encode.
func metadata(key string, payload *structpb.Struct) *corev3.Metadata {
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{key: payload}}
}

// Transport socket names of a Service cluster's two matches (Envoy's extension names).
const (
	tlsTransportSocket       = "envoy.transport_sockets.tls"
	rawBufferTransportSocket = "envoy.transport_sockets.raw_buffer"
)

// withMeshTLSMatches gives a Service cluster Istio's auto-mTLS transport socket matches:
// endpoints whose metadata says tlsMode: weft (meshedEndpoint) get mutual TLS, any other
// plaintext. Every Service cluster has them, whatever its endpoints are now, so an
// endpoint-only update (eds.go) can mark a new endpoint without rebuilding the cluster.
// The UpstreamTlsContext is empty on purpose: the certificate and trust bundle are the
// sidecar's workload identity (issued over weft.identity.v1.Certificates/Sign) and the
// ALPN follows the cluster's HTTP version, so nothing here would be read (the sidecar
// refuses any field it sets).
func withMeshTLSMatches(c *clusterv3.Cluster) *clusterv3.Cluster {
	tlsCtx, _ := anypb.New(&tlsv3.UpstreamTlsContext{})
	raw, _ := anypb.New(&rawbufferv3.RawBuffer{})
	c.TransportSocketMatches = []*clusterv3.Cluster_TransportSocketMatch{
		{Name: contract.TLSModeMatchName, Match: tlsModeMatch(),
			TransportSocket: &corev3.TransportSocket{Name: tlsTransportSocket, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: tlsCtx}}},
		{Name: contract.PlaintextMatchName, Match: &structpb.Struct{},
			TransportSocket: &corev3.TransportSocket{Name: rawBufferTransportSocket, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: raw}}},
	}
	return c
}

// tlsModeMatch is {tlsMode: weft}: the cluster's match and the endpoints' metadata.
func tlsModeMatch() *structpb.Struct {
	return &structpb.Struct{Fields: map[string]*structpb.Value{contract.TLSModeKey: structpb.NewStringValue(contract.TLSModeWeft)}}
}

// serviceCluster is the cluster of one route destination with the route's traffic policy
// (Istio's DestinationRule translation, b.2 in the routing reference).
func serviceCluster(name string, tp *meshv1alpha1.TrafficPolicy) *clusterv3.Cluster {
	c := withMeshTLSMatches(edsCluster(name))
	defer unlimitedRetries(c)
	if tp == nil {
		return c
	}
	if lb := tp.LoadBalancer; lb != nil {
		switch {
		case lb.ConsistentHash != nil:
			c.LbPolicy = clusterv3.Cluster_RING_HASH
			size := lb.ConsistentHash.MinimumRingSize
			if size == 0 {
				size = defaultMinRingSize
			}
			c.LbConfig = &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{
				MinimumRingSize: wrapperspb.UInt64(uint64(size)),
			}}
		case lb.Simple == meshv1alpha1.LBRoundRobin:
			c.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
		case lb.Simple == meshv1alpha1.LBRandom:
			c.LbPolicy = clusterv3.Cluster_RANDOM
		}
	}
	if cp := tp.ConnectionPool; cp != nil {
		c.ConnectTimeout = durOr(cp.ConnectTimeout, defaultConnectTimeout)
		t := &clusterv3.CircuitBreakers_Thresholds{}
		set := false
		for _, f := range []struct {
			v   *int32
			dst **wrapperspb.UInt32Value
		}{{cp.MaxConnections, &t.MaxConnections}, {cp.MaxPendingRequests, &t.MaxPendingRequests},
			{cp.MaxRequests, &t.MaxRequests}, {cp.MaxRetries, &t.MaxRetries}} {
			if f.v != nil {
				*f.dst = u32(*f.v)
				set = true
			}
		}
		if set {
			c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{t}}
		}
		common := &corev3.HttpProtocolOptions{IdleTimeout: durOr(cp.IdleTimeout, time.Hour)}
		if cp.MaxRequestsPerConnection != nil && *cp.MaxRequestsPerConnection > 0 {
			common.MaxRequestsPerConnection = u32(*cp.MaxRequestsPerConnection)
		}
		po, err := anypb.New(&httpupv3.HttpProtocolOptions{
			CommonHttpProtocolOptions: common,
			// The upstream speaks whatever the caller spoke (HTTP/1.1 or h2c), as with Istio's
			// default h2UpgradePolicy.
			UpstreamProtocolOptions: &httpupv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
				UseDownstreamProtocolConfig: &httpupv3.HttpProtocolOptions_UseDownstreamHttpConfig{
					HttpProtocolOptions:  &corev3.Http1ProtocolOptions{},
					Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
				},
			},
		})
		if err != nil {
			panic(err)
		}
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{contract.HTTPProtocolOptionsKey: po}
	}
	if od := tp.OutlierDetection; od != nil {
		c.OutlierDetection = outlier(od)
	}
	if hc := tp.HealthCheck; hc != nil {
		c.HealthChecks = []*corev3.HealthCheck{httpHealthCheck(hc)}
	}
	return c
}

func outlier(od *meshv1alpha1.OutlierDetection) *clusterv3.OutlierDetection {
	o := &clusterv3.OutlierDetection{
		Consecutive_5Xx:    u32(defaultConsecutive5xx),
		Interval:           durOr(od.Interval, defaultOutlierInterval),
		BaseEjectionTime:   durOr(od.BaseEjectionTime, defaultBaseEjection),
		MaxEjectionPercent: u32(defaultMaxEjectionPct),
	}
	if od.Consecutive5xxErrors != nil {
		o.Consecutive_5Xx = u32(*od.Consecutive5xxErrors)
		if *od.Consecutive5xxErrors == 0 {
			o.EnforcingConsecutive_5Xx = u32(0)
		}
	}
	if od.ConsecutiveGatewayErrors != nil && *od.ConsecutiveGatewayErrors > 0 {
		o.ConsecutiveGatewayFailure = u32(*od.ConsecutiveGatewayErrors)
		o.EnforcingConsecutiveGatewayFailure = u32(100)
	}
	if od.MaxEjectionPercent != nil {
		o.MaxEjectionPercent = u32(*od.MaxEjectionPercent)
	}
	return o
}

func httpHealthCheck(hc *meshv1alpha1.HTTPHealthCheck) *corev3.HealthCheck {
	healthy, unhealthy := hc.HealthyThreshold, hc.UnhealthyThreshold
	if healthy == 0 {
		healthy = defaultHCHealthy
	}
	if unhealthy == 0 {
		unhealthy = defaultHCUnhealthy
	}
	return &corev3.HealthCheck{
		Timeout:            durOr(hc.Timeout, defaultHCTimeout),
		Interval:           durOr(hc.Interval, defaultHCInterval),
		HealthyThreshold:   u32(healthy),
		UnhealthyThreshold: u32(unhealthy),
		HealthChecker: &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{
			Path: hc.Path,
		}},
	}
}

// unlimitedRetries sets the max_retries circuit breaker to Istio's default, 2^32-1, unless
// the traffic policy set it. Envoy's own default, 3 retries in flight per cluster, made the
// retries of Istio's default policy overflow when a pod vanished: every call in flight to it
// fails its connect within a few milliseconds of the others and needs its retry at once, so
// with 5 callers 2 of 5 got the connect error instead of a retry (issue 12 item 5). Each
// call's retries stay bounded by its route's attempts.
func unlimitedRetries(c *clusterv3.Cluster) {
	if c.CircuitBreakers == nil {
		c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{}}}
	}
	if t := c.CircuitBreakers.Thresholds[0]; t.MaxRetries == nil {
		t.MaxRetries = wrapperspb.UInt32(math.MaxUint32)
	}
}

// unresolvedCluster stands in for a weighted destination that could not be resolved: it has
// no endpoints and says why, so its share of requests gets a 503 with that reason.
func unresolvedCluster(name, reason string) (*clusterv3.Cluster, *endpointv3.ClusterLoadAssignment) {
	c := edsCluster(name)
	c.Metadata = metadata(contract.UnresolvedMetadataKey, contract.UnresolvedMeta{Reason: reason}.Encode())
	return c, &endpointv3.ClusterLoadAssignment{ClusterName: name}
}

// functionCluster is a MeshFunction's cluster with the metadata callers' sidecars use to
// hold requests while it scales from zero.
func functionCluster(fn *meshv1alpha1.MeshFunction) *clusterv3.Cluster {
	c := edsCluster(contract.FunctionClusterName(fn.Namespace, fn.Name))
	unlimitedRetries(c)
	c.Metadata = metadata(contract.FunctionMetadataKey, functionMeta(fn).Encode())
	return c
}

// functionMeta is the weft.dev/function metadata of a MeshFunction's clusters.
func functionMeta(fn *meshv1alpha1.MeshFunction) contract.FunctionMeta {
	hold := fn.Spec.Activation.HoldTimeout.Duration
	if hold == 0 {
		hold = 30 * time.Second
	}
	maxPending := fn.Spec.Activation.MaxPending
	if maxPending == 0 {
		maxPending = 100
	}
	return contract.FunctionMeta{
		Namespace:            fn.Namespace,
		Name:                 fn.Name,
		HoldTimeout:          hold,
		MaxPending:           maxPending,
		ContainerConcurrency: fn.Spec.Concurrency.ContainerConcurrency,
		MinScale:             fn.Spec.Scale.Min,
		Timeout:              functionTimeout(fn),
		Async:                asyncPolicy(fn.Spec.Async),
	}
}

// asyncPolicy is the function's async policy as the sidecars' publisher and consumer read
// it. Unset fields stay unset; the sidecar fills the CRD's defaults.
func asyncPolicy(a *meshv1alpha1.Async) contract.AsyncPolicy {
	if a == nil {
		return contract.AsyncPolicy{}
	}
	p := contract.AsyncPolicy{Enabled: a.Enabled, MaxAttempts: a.MaxAttempts, MaxInflight: a.MaxInflight,
		MaxBodyBytes: int64(a.MaxBodyBytes), DeadLetter: a.DeadLetter}
	for _, d := range []struct {
		src *meshv1alpha1.Duration
		dst *time.Duration
	}{{a.Backoff, &p.Backoff}, {a.MaxBackoff, &p.MaxBackoff}, {a.MaxAge, &p.MaxAge}} {
		if d.src != nil && d.src.Duration > 0 {
			*d.dst = d.src.Duration
		}
	}
	if len(a.RetryOn) > 0 {
		p.RetryOn = append([]int32(nil), a.RetryOn...)
	}
	return p
}
