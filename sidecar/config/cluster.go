package config

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	redisv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/redis_proxy/v3"
	httpupv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/weftmesh/weft/contract"
)

// LBPolicy is a cluster's load-balancing policy.
type LBPolicy int

// Supported load-balancing policies.
const (
	RoundRobin LBPolicy = iota
	LeastRequest
	Random
	RingHash
)

// Cluster is a decoded cluster with its endpoints.
type Cluster struct {
	Name               string
	ConnectTimeout     time.Duration
	LB                 LBPolicy
	MinRingSize        uint64
	Limits             Limits
	Outlier            *Outlier
	HealthCheck        *HealthCheck
	MaxRequestsPerConn uint32
	IdleTimeout        time.Duration
	// Protocol and MaxStreamsPerConn: the HTTP version spoken upstream (protocol.go).
	Protocol          UpstreamProtocol
	MaxStreamsPerConn uint32
	// Function is set for function clusters (metadata weft.dev/function).
	Function *FunctionMeta
	// Queue is set on the cluster that carries the async queue's address.
	Queue *contract.QueueMeta
	// Unresolved, when set, is why the control plane could not resolve this destination;
	// requests routed here get a 503 with this reason.
	Unresolved string
	Endpoints  []Endpoint
	// Static is true for clusters with an inline load_assignment (no EDS).
	Static bool
	// OriginalDst is set for an ORIGINAL_DST cluster: a connection goes to its original
	// destination (contract.PassthroughClusterName, InboundPassthroughClusterName).
	OriginalDst bool
	// MeshTLSMatch: the cluster's transport_socket_matches send endpoints marked
	// tlsMode: weft over mutual TLS (meshtls.go); Endpoint.MeshTLS counts only then.
	MeshTLSMatch bool
}

// Limits are the cluster's circuit-breaker thresholds. Zero values mean Envoy's defaults
// (1024 connections, pending and requests; 3 retries), applied at decode time.
type Limits struct {
	MaxConnections, MaxPending, MaxRequests, MaxRetries uint32
}

// Outlier is passive health checking: eject endpoints after consecutive failures.
type Outlier struct {
	Consecutive5xx     uint32
	Enforce5xx         bool
	ConsecutiveGateway uint32
	EnforceGateway     bool
	Interval           time.Duration
	BaseEjection       time.Duration
	MaxEjectionPercent uint32
}

// HealthCheck is an active HTTP health check.
type HealthCheck struct {
	Path, Host         string // Host empty: the cluster name, as in Envoy
	Interval, Timeout  time.Duration
	Healthy, Unhealthy uint32
}

// FunctionMeta is the weft.dev/function cluster metadata.
type FunctionMeta struct {
	Namespace, Name string
	// Revision names the revision whose cluster this is (functions with spec.traffic);
	// demand goes to it (ScaleName).
	Revision             string
	HoldTimeout          time.Duration
	MaxPending           int
	ContainerConcurrency int
	Async                bool
	MinScale             int
	// Policy is the async policy, defaults filled; DefaultAsyncPolicy when PolicyErr is set.
	Policy AsyncPolicy
	// PolicyErr, when set, is why the metadata's async policy could not be read.
	PolicyErr error
	// Traffic is the split of a function with revisions, on its own cluster: its pods
	// dispatch queued calls by it (sidecar/async). Empty for other clusters.
	Traffic []contract.RevisionTraffic
}

// ScaleName is what a caller's demand for this cluster names: the revision of a revision's
// cluster, else the function.
func (m *FunctionMeta) ScaleName() string {
	if m.Revision != "" {
		return m.Revision
	}
	return m.Name
}

// Health is an endpoint's EDS health status as the data plane uses it.
type Health int

// Endpoint health as seen by load balancing.
const (
	Healthy Health = iota
	Draining
	Unhealthy
)

// Endpoint is one upstream address.
type Endpoint struct {
	Address  string // host:port
	Hostname string
	Health   Health
	Weight   uint32
	// MeshTLS: the endpoint is a pod whose sidecar terminates mesh TLS on this port
	// (metadata envoy.transport_socket_match {tlsMode: weft}) and its cluster has the
	// matching transport socket (meshtls.go).
	MeshTLS bool
}

// Envoy's defaults for the cluster fields Weft decodes, applied when xDS leaves a field unset so
// both HTTP paths see the values Envoy would use.
const (
	// defaultConnectTimeout is Envoy's cluster connect_timeout default.
	defaultConnectTimeout = 5 * time.Second
	// defaultMinRingSize is Envoy's ring_hash_lb_config minimum_ring_size default (1,024 entries).
	defaultMinRingSize = 1024
	// defaultMaxConnections, defaultMaxPending and defaultMaxRequests are Envoy's DEFAULT-priority
	// circuit-breaker thresholds: 1,024 connections, pending requests and active requests.
	defaultMaxConnections = 1024
	defaultMaxPending     = 1024
	defaultMaxRequests    = 1024
	// defaultMaxRetries is Envoy's DEFAULT-priority max_retries threshold: 3 concurrent retries.
	defaultMaxRetries = 3
	// defaultConsecutive5xx and defaultConsecutiveGateway are Envoy's outlier-detection
	// consecutive_5xx and consecutive_gateway_failure defaults: eject after 5 failures in a row.
	// Envoy enforces the 5xx rule at 100 % and the gateway rule at 0 % unless told otherwise.
	defaultConsecutive5xx     = 5
	defaultConsecutiveGateway = 5
	// defaultOutlierInterval is Envoy's outlier-detection sweep interval (10 s).
	defaultOutlierInterval = 10 * time.Second
	// defaultBaseEjection is Envoy's base_ejection_time (30 s, multiplied by the ejection count).
	defaultBaseEjection = 30 * time.Second
	// defaultMaxEjectionPercent is Envoy's max_ejection_percent: at most 10 % of the endpoints
	// are ejected at once.
	defaultMaxEjectionPercent = 10
	// defaultHealthCheckInterval, defaultHealthCheckTimeout and defaultHealthThreshold fill an
	// HTTP health check whose interval, timeout or thresholds are unset (Envoy requires them;
	// Weft accepts their absence): probe every 10 s, 1 s per probe, one result flips the state.
	defaultHealthCheckInterval = 10 * time.Second
	defaultHealthCheckTimeout  = time.Second
	defaultHealthThreshold     = 1
)

func decodeCluster(c *clusterv3.Cluster) (*Cluster, error) {
	where := "cluster " + c.GetName()
	if err := onlyFields(c, where, "name", "type", "eds_cluster_config", "connect_timeout", "lb_policy",
		"ring_hash_lb_config", "circuit_breakers", "outlier_detection", "health_checks",
		"typed_extension_protocol_options", "load_assignment", "metadata", "alt_stat_name", "transport_socket_matches"); err != nil {
		return nil, err
	}
	out := &Cluster{Name: c.GetName(), ConnectTimeout: dur(c.GetConnectTimeout())}
	if err := decodeTransportSocketMatches(c, where, out); err != nil { // meshtls.go
		return nil, err
	}
	if out.ConnectTimeout == 0 {
		out.ConnectTimeout = defaultConnectTimeout
	}
	var err error
	if err = decodeDiscovery(c, where, out); err != nil {
		return nil, err
	}
	if c.GetType() == clusterv3.Cluster_ORIGINAL_DST && c.GetLbPolicy() != clusterv3.Cluster_CLUSTER_PROVIDED {
		return nil, fmt.Errorf("%s: an ORIGINAL_DST cluster needs lb_policy CLUSTER_PROVIDED", where)
	}
	if out.LB, out.MinRingSize, err = decodeLB(c, where); err != nil {
		return nil, err
	}
	if out.Limits, err = decodeLimits(c.GetCircuitBreakers(), where); err != nil {
		return nil, err
	}
	if out.Outlier, err = decodeOutlier(c.GetOutlierDetection(), where); err != nil {
		return nil, err
	}
	if out.HealthCheck, err = decodeHealthCheck(c.GetHealthChecks(), where); err != nil {
		return nil, err
	}
	if err = decodeProtocolOptions(c.GetTypedExtensionProtocolOptions(), where, out); err != nil {
		return nil, err
	}
	if err = decodeClusterMetadata(c, where, out); err != nil {
		return nil, err
	}
	return out, nil
}

// decodeDiscovery reads the cluster's type: EDS clusters get their endpoints later, STATIC ones
// carry them inline.
func decodeDiscovery(c *clusterv3.Cluster, where string, out *Cluster) error {
	switch c.GetType() {
	case clusterv3.Cluster_EDS:
		if c.GetLoadAssignment() != nil {
			return fmt.Errorf("%s: type EDS with an inline load_assignment is not supported; drop one of them", where)
		}
	case clusterv3.Cluster_STATIC:
		out.Static = true
		eps, err := decodeEndpoints(c.GetLoadAssignment(), where)
		if err != nil {
			return err
		}
		out.Endpoints = eps
	case clusterv3.Cluster_ORIGINAL_DST:
		if c.GetLoadAssignment() != nil {
			return fmt.Errorf("%s: type ORIGINAL_DST with a load_assignment is not supported; drop it", where)
		}
		out.OriginalDst, out.Static = true, true
	default:
		return fmt.Errorf("%s: type %s is not supported; use EDS, STATIC or ORIGINAL_DST", where, c.GetType())
	}
	return nil
}

// decodeLB reads lb_policy and, for RING_HASH, its ring configuration. The minimum ring size is
// defaultMinRingSize whatever the policy when unset.
func decodeLB(c *clusterv3.Cluster, where string) (LBPolicy, uint64, error) {
	var lb LBPolicy
	var minRing uint64
	switch c.GetLbPolicy() {
	case clusterv3.Cluster_ROUND_ROBIN:
		lb = RoundRobin
	case clusterv3.Cluster_LEAST_REQUEST:
		lb = LeastRequest
	case clusterv3.Cluster_RANDOM:
		lb = Random
	case clusterv3.Cluster_CLUSTER_PROVIDED:
		if c.GetType() != clusterv3.Cluster_ORIGINAL_DST {
			return 0, 0, fmt.Errorf("%s: lb_policy CLUSTER_PROVIDED is supported only on ORIGINAL_DST clusters", where)
		}
		lb = RoundRobin
	case clusterv3.Cluster_RING_HASH:
		lb = RingHash
		rh := c.GetRingHashLbConfig()
		if err := onlyFields(rh, where+" ring_hash_lb_config", "minimum_ring_size", "hash_function"); err != nil {
			return 0, 0, err
		}
		if rh.GetHashFunction() != clusterv3.Cluster_RingHashLbConfig_XX_HASH {
			return 0, 0, fmt.Errorf("%s: ring hash_function %s is not supported; use XX_HASH", where, rh.GetHashFunction())
		}
		minRing = rh.GetMinimumRingSize().GetValue()
	default:
		return 0, 0, fmt.Errorf("%s: lb_policy %s is not supported; use ROUND_ROBIN, LEAST_REQUEST, RANDOM or RING_HASH", where, c.GetLbPolicy())
	}
	if minRing == 0 {
		minRing = defaultMinRingSize
	}
	return lb, minRing, nil
}

// decodeLimits reads the circuit breakers: one DEFAULT-priority threshold set at most, each unset
// threshold left at Envoy's default.
func decodeLimits(cb *clusterv3.CircuitBreakers, where string) (Limits, error) {
	l := Limits{MaxConnections: defaultMaxConnections, MaxPending: defaultMaxPending,
		MaxRequests: defaultMaxRequests, MaxRetries: defaultMaxRetries}
	if cb == nil {
		return l, nil
	}
	if err := onlyFields(cb, where+" circuit_breakers", "thresholds"); err != nil {
		return Limits{}, err
	}
	if len(cb.GetThresholds()) > 1 {
		return Limits{}, fmt.Errorf("%s: circuit_breakers has %d thresholds; only one (DEFAULT priority) is supported", where, len(cb.GetThresholds()))
	}
	for _, t := range cb.GetThresholds() {
		if err := onlyFields(t, where+" circuit_breakers.thresholds[0]", "priority", "max_connections",
			"max_pending_requests", "max_requests", "max_retries", "track_remaining"); err != nil {
			return Limits{}, err
		}
		if t.GetPriority() != corev3.RoutingPriority_DEFAULT {
			return Limits{}, fmt.Errorf("%s: circuit breaker priority %s is not supported; use DEFAULT", where, t.GetPriority())
		}
		setU32(&l.MaxConnections, t.GetMaxConnections())
		setU32(&l.MaxPending, t.GetMaxPendingRequests())
		setU32(&l.MaxRequests, t.GetMaxRequests())
		setU32(&l.MaxRetries, t.GetMaxRetries())
	}
	return l, nil
}

// decodeOutlier reads outlier detection; nil when the cluster has none. Unset fields take
// Envoy's defaults; an enforcing_* percentage above zero enables its rule.
func decodeOutlier(od *clusterv3.OutlierDetection, where string) (*Outlier, error) {
	if od == nil {
		return nil, nil
	}
	if err := onlyFields(od, where+" outlier_detection", "consecutive_5xx", "enforcing_consecutive_5xx",
		"consecutive_gateway_failure", "enforcing_consecutive_gateway_failure", "interval",
		"base_ejection_time", "max_ejection_percent"); err != nil {
		return nil, err
	}
	o := &Outlier{Consecutive5xx: defaultConsecutive5xx, Enforce5xx: true, ConsecutiveGateway: defaultConsecutiveGateway,
		Interval: defaultOutlierInterval, BaseEjection: defaultBaseEjection, MaxEjectionPercent: defaultMaxEjectionPercent}
	setU32(&o.Consecutive5xx, od.GetConsecutive_5Xx())
	setU32(&o.ConsecutiveGateway, od.GetConsecutiveGatewayFailure())
	if v := od.GetEnforcingConsecutive_5Xx(); v != nil {
		o.Enforce5xx = v.GetValue() > 0
	}
	if v := od.GetEnforcingConsecutiveGatewayFailure(); v != nil {
		o.EnforceGateway = v.GetValue() > 0
	}
	if d := dur(od.GetInterval()); d > 0 {
		o.Interval = d
	}
	if d := dur(od.GetBaseEjectionTime()); d > 0 {
		o.BaseEjection = d
	}
	setU32(&o.MaxEjectionPercent, od.GetMaxEjectionPercent())
	return o, nil
}

// decodeHealthCheck reads the one active health check a cluster may have. It returns nil for no
// health check and for the Redis proxy's custom checker, which the Redis proxy runs itself.
func decodeHealthCheck(hcs []*corev3.HealthCheck, where string) (*HealthCheck, error) {
	if len(hcs) == 0 {
		return nil, nil
	}
	if len(hcs) > 1 {
		return nil, fmt.Errorf("%s: %d health_checks; only one is supported", where, len(hcs))
	}
	hc := hcs[0]
	if err := onlyFields(hc, where+" health_checks[0]", "timeout", "interval", "healthy_threshold",
		"unhealthy_threshold", "http_health_check", "custom_health_check"); err != nil {
		return nil, err
	}
	h := hc.GetHttpHealthCheck()
	if h == nil {
		if ch := hc.GetCustomHealthCheck(); ch != nil && ch.GetName() != contract.RedisHealthCheckerName {
			return nil, fmt.Errorf("%s: custom health checker %q is not supported; use http_health_check", where, ch.GetName())
		}
		return nil, nil
	}
	if err := onlyFields(h, where+" http_health_check", "path", "host"); err != nil {
		return nil, err
	}
	out := &HealthCheck{Path: h.GetPath(), Host: h.GetHost(), Interval: dur(hc.GetInterval()), Timeout: dur(hc.GetTimeout()),
		Healthy: hc.GetHealthyThreshold().GetValue(), Unhealthy: hc.GetUnhealthyThreshold().GetValue()}
	if out.Interval <= 0 {
		out.Interval = defaultHealthCheckInterval
	}
	if out.Timeout <= 0 {
		out.Timeout = defaultHealthCheckTimeout
	}
	if out.Healthy == 0 {
		out.Healthy = defaultHealthThreshold
	}
	if out.Unhealthy == 0 {
		out.Unhealthy = defaultHealthThreshold
	}
	return out, nil
}

// decodeProtocolOptions reads typed_extension_protocol_options: the HTTP upstream options set the
// idle timeout and requests per connection; the Redis options are accepted and carry nothing Weft
// uses; any other key is refused.
func decodeProtocolOptions(opts map[string]*anypb.Any, where string, out *Cluster) error {
	for key, anyMsg := range opts {
		switch key {
		case contract.HTTPProtocolOptionsKey:
			var po httpupv3.HttpProtocolOptions
			if err := anyMsg.UnmarshalTo(&po); err != nil {
				return fmt.Errorf("%s: decoding %s: %w", where, key, err)
			}
			if err := onlyFields(&po, where+" "+key, "common_http_protocol_options", "explicit_http_config", "use_downstream_protocol_config"); err != nil {
				return err
			}
			cp := po.GetCommonHttpProtocolOptions()
			if err := onlyFields(cp, where+" common_http_protocol_options", "idle_timeout", "max_requests_per_connection"); err != nil {
				return err
			}
			out.IdleTimeout = dur(cp.GetIdleTimeout())
			out.MaxRequestsPerConn = cp.GetMaxRequestsPerConnection().GetValue()
			if err := decodeUpstreamProtocol(&po, where+" "+key, out); err != nil {
				return err
			}
		case contract.RedisProtocolOptionsKey:
			var ro redisv3.RedisProtocolOptions
			if err := anyMsg.UnmarshalTo(&ro); err != nil {
				return fmt.Errorf("%s: decoding %s: %w", where, key, err)
			}
		default:
			return fmt.Errorf("%s: typed_extension_protocol_options %q is not supported", where, key)
		}
	}
	return nil
}

// decodeClusterMetadata reads Weft's filter metadata: the function, the async queue's address and
// the reason a destination is unresolved.
func decodeClusterMetadata(c *clusterv3.Cluster, where string, out *Cluster) error {
	md := c.GetMetadata().GetFilterMetadata()
	if s, ok := md[contract.FunctionMetadataKey]; ok {
		fm, err := DecodeFunctionMeta(s)
		if err != nil {
			return fmt.Errorf("%s: metadata %s: %w", where, contract.FunctionMetadataKey, err)
		}
		out.Function = fm
	}
	if s, ok := md[contract.QueueMetadataKey]; ok {
		q, err := contract.DecodeQueueMeta(s)
		if err != nil {
			return fmt.Errorf("%s: metadata %s: %w", where, contract.QueueMetadataKey, err)
		}
		out.Queue = &q
	}
	if s, ok := md[contract.UnresolvedMetadataKey]; ok {
		u, err := contract.DecodeUnresolvedMeta(s)
		if err != nil {
			return fmt.Errorf("%s: metadata %s: %w", where, contract.UnresolvedMetadataKey, err)
		}
		out.Unresolved = u.Reason
		if out.Unresolved == "" {
			out.Unresolved = "destination " + c.GetName() + " could not be resolved"
		}
	}
	return nil
}

func setU32(dst *uint32, v *wrapperspb.UInt32Value) {
	if v != nil {
		*dst = v.GetValue()
	}
}

// DecodeFunctionMeta reads weft.dev/function. A malformed async policy does not refuse the
// cluster: the function still takes synchronous calls, its Policy is DefaultAsyncPolicy
// and PolicyErr says why.
func DecodeFunctionMeta(s *structpb.Struct) (*FunctionMeta, error) {
	m, err := contract.DecodeFunctionMeta(s)
	policy := asyncPolicy(m)
	switch {
	case errors.Is(err, contract.ErrAsyncPolicy):
		policy = DefaultAsyncPolicy()
	case err != nil:
		return nil, err
	}
	return &FunctionMeta{
		Namespace:            m.Namespace,
		Name:                 m.Name,
		Revision:             m.Revision,
		HoldTimeout:          m.HoldTimeout,
		MaxPending:           int(m.MaxPending),
		ContainerConcurrency: int(m.ContainerConcurrency),
		Async:                m.Async.Enabled,
		MinScale:             int(m.MinScale),
		Policy:               policy,
		PolicyErr:            err,
		Traffic:              m.Traffic,
	}, nil
}

func decodeEndpoints(cla *endpointv3.ClusterLoadAssignment, where string) ([]Endpoint, error) {
	if err := onlyFields(cla, where+" load assignment", "cluster_name", "endpoints"); err != nil {
		return nil, err
	}
	var out []Endpoint
	seen := map[string]bool{}
	for _, loc := range cla.GetEndpoints() {
		if err := onlyFields(loc, where+" locality", "locality", "lb_endpoints", "load_balancing_weight", "priority"); err != nil {
			return nil, err
		}
		if loc.GetPriority() != 0 {
			return nil, fmt.Errorf("%s: endpoint priority %d is not supported; use priority 0", where, loc.GetPriority())
		}
		for _, lbe := range loc.GetLbEndpoints() {
			if err := onlyFields(lbe, where+" lb_endpoint", "endpoint", "health_status", "load_balancing_weight", "metadata"); err != nil {
				return nil, err
			}
			ep := lbe.GetEndpoint()
			if err := onlyFields(ep, where+" endpoint", "address", "hostname"); err != nil {
				return nil, err
			}
			sa := ep.GetAddress().GetSocketAddress()
			if sa == nil {
				return nil, fmt.Errorf("%s: endpoint without socket_address", where)
			}
			addr := net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
			if seen[addr] {
				return nil, fmt.Errorf("%s: duplicate endpoint address %s", where, addr)
			}
			seen[addr] = true
			e := Endpoint{Address: addr, Hostname: ep.GetHostname(), Weight: 1, MeshTLS: endpointMeshTLS(lbe.GetMetadata())}
			if w := lbe.GetLoadBalancingWeight(); w != nil {
				if w.GetValue() == 0 {
					return nil, fmt.Errorf("%s: endpoint %s has load_balancing_weight 0", where, addr)
				}
				e.Weight = w.GetValue()
			}
			switch lbe.GetHealthStatus() {
			case corev3.HealthStatus_HEALTHY, corev3.HealthStatus_UNKNOWN:
				e.Health = Healthy
			case corev3.HealthStatus_DRAINING:
				e.Health = Draining
			default:
				e.Health = Unhealthy
			}
			out = append(out, e)
		}
	}
	return out, nil
}
