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
	Namespace, Name      string
	HoldTimeout          time.Duration
	MaxPending           int
	ContainerConcurrency int
	Async                bool
	MinScale             int
	// Policy is the async policy, defaults filled; DefaultAsyncPolicy when PolicyErr is set.
	Policy AsyncPolicy
	// PolicyErr, when set, is why the metadata's async policy could not be read.
	PolicyErr error
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
}

func decodeCluster(c *clusterv3.Cluster) (*Cluster, error) {
	where := "cluster " + c.GetName()
	if err := onlyFields(c, where, "name", "type", "eds_cluster_config", "connect_timeout", "lb_policy",
		"ring_hash_lb_config", "circuit_breakers", "outlier_detection", "health_checks",
		"typed_extension_protocol_options", "load_assignment", "metadata", "alt_stat_name"); err != nil {
		return nil, err
	}
	out := &Cluster{Name: c.GetName(), ConnectTimeout: dur(c.GetConnectTimeout())}
	if out.ConnectTimeout == 0 {
		out.ConnectTimeout = 5 * time.Second // Envoy's default
	}
	switch c.GetType() {
	case clusterv3.Cluster_EDS:
		if c.GetLoadAssignment() != nil {
			return nil, fmt.Errorf("%s: type EDS with an inline load_assignment is not supported; drop one of them", where)
		}
	case clusterv3.Cluster_STATIC:
		out.Static = true
		eps, err := decodeEndpoints(c.GetLoadAssignment(), where)
		if err != nil {
			return nil, err
		}
		out.Endpoints = eps
	default:
		return nil, fmt.Errorf("%s: type %s is not supported; use EDS or STATIC", where, c.GetType())
	}
	switch c.GetLbPolicy() {
	case clusterv3.Cluster_ROUND_ROBIN:
		out.LB = RoundRobin
	case clusterv3.Cluster_LEAST_REQUEST:
		out.LB = LeastRequest
	case clusterv3.Cluster_RANDOM:
		out.LB = Random
	case clusterv3.Cluster_RING_HASH:
		out.LB = RingHash
		rh := c.GetRingHashLbConfig()
		if err := onlyFields(rh, where+" ring_hash_lb_config", "minimum_ring_size", "hash_function"); err != nil {
			return nil, err
		}
		if rh.GetHashFunction() != clusterv3.Cluster_RingHashLbConfig_XX_HASH {
			return nil, fmt.Errorf("%s: ring hash_function %s is not supported; use XX_HASH", where, rh.GetHashFunction())
		}
		out.MinRingSize = rh.GetMinimumRingSize().GetValue()
	default:
		return nil, fmt.Errorf("%s: lb_policy %s is not supported; use ROUND_ROBIN, LEAST_REQUEST, RANDOM or RING_HASH", where, c.GetLbPolicy())
	}
	if out.MinRingSize == 0 {
		out.MinRingSize = 1024
	}
	out.Limits = Limits{MaxConnections: 1024, MaxPending: 1024, MaxRequests: 1024, MaxRetries: 3}
	if cb := c.GetCircuitBreakers(); cb != nil {
		if err := onlyFields(cb, where+" circuit_breakers", "thresholds"); err != nil {
			return nil, err
		}
		if len(cb.GetThresholds()) > 1 {
			return nil, fmt.Errorf("%s: circuit_breakers has %d thresholds; only one (DEFAULT priority) is supported", where, len(cb.GetThresholds()))
		}
		for _, t := range cb.GetThresholds() {
			if err := onlyFields(t, where+" circuit_breakers.thresholds[0]", "priority", "max_connections",
				"max_pending_requests", "max_requests", "max_retries", "track_remaining"); err != nil {
				return nil, err
			}
			if t.GetPriority() != corev3.RoutingPriority_DEFAULT {
				return nil, fmt.Errorf("%s: circuit breaker priority %s is not supported; use DEFAULT", where, t.GetPriority())
			}
			setU32(&out.Limits.MaxConnections, t.GetMaxConnections())
			setU32(&out.Limits.MaxPending, t.GetMaxPendingRequests())
			setU32(&out.Limits.MaxRequests, t.GetMaxRequests())
			setU32(&out.Limits.MaxRetries, t.GetMaxRetries())
		}
	}
	if od := c.GetOutlierDetection(); od != nil {
		if err := onlyFields(od, where+" outlier_detection", "consecutive_5xx", "enforcing_consecutive_5xx",
			"consecutive_gateway_failure", "enforcing_consecutive_gateway_failure", "interval",
			"base_ejection_time", "max_ejection_percent"); err != nil {
			return nil, err
		}
		o := &Outlier{Consecutive5xx: 5, Enforce5xx: true, ConsecutiveGateway: 5, Interval: 10 * time.Second,
			BaseEjection: 30 * time.Second, MaxEjectionPercent: 10}
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
		out.Outlier = o
	}
	if hcs := c.GetHealthChecks(); len(hcs) > 0 {
		if len(hcs) > 1 {
			return nil, fmt.Errorf("%s: %d health_checks; only one is supported", where, len(hcs))
		}
		hc := hcs[0]
		if err := onlyFields(hc, where+" health_checks[0]", "timeout", "interval", "healthy_threshold",
			"unhealthy_threshold", "http_health_check", "custom_health_check"); err != nil {
			return nil, err
		}
		if h := hc.GetHttpHealthCheck(); h != nil {
			if err := onlyFields(h, where+" http_health_check", "path", "host"); err != nil {
				return nil, err
			}
			out.HealthCheck = &HealthCheck{Path: h.GetPath(), Host: h.GetHost(), Interval: dur(hc.GetInterval()), Timeout: dur(hc.GetTimeout()),
				Healthy: hc.GetHealthyThreshold().GetValue(), Unhealthy: hc.GetUnhealthyThreshold().GetValue()}
			if out.HealthCheck.Interval <= 0 {
				out.HealthCheck.Interval = 10 * time.Second
			}
			if out.HealthCheck.Timeout <= 0 {
				out.HealthCheck.Timeout = time.Second
			}
			if out.HealthCheck.Healthy == 0 {
				out.HealthCheck.Healthy = 1
			}
			if out.HealthCheck.Unhealthy == 0 {
				out.HealthCheck.Unhealthy = 1
			}
		} else if ch := hc.GetCustomHealthCheck(); ch != nil && ch.GetName() != contract.RedisHealthCheckerName {
			return nil, fmt.Errorf("%s: custom health checker %q is not supported; use http_health_check", where, ch.GetName())
		}
	}
	for key, anyMsg := range c.GetTypedExtensionProtocolOptions() {
		switch key {
		case contract.HTTPProtocolOptionsKey:
			var po httpupv3.HttpProtocolOptions
			if err := anyMsg.UnmarshalTo(&po); err != nil {
				return nil, fmt.Errorf("%s: decoding %s: %w", where, key, err)
			}
			if err := onlyFields(&po, where+" "+key, "common_http_protocol_options", "explicit_http_config", "use_downstream_protocol_config"); err != nil {
				return nil, err
			}
			cp := po.GetCommonHttpProtocolOptions()
			if err := onlyFields(cp, where+" common_http_protocol_options", "idle_timeout", "max_requests_per_connection"); err != nil {
				return nil, err
			}
			out.IdleTimeout = dur(cp.GetIdleTimeout())
			out.MaxRequestsPerConn = cp.GetMaxRequestsPerConnection().GetValue()
		case contract.RedisProtocolOptionsKey:
			var ro redisv3.RedisProtocolOptions
			if err := anyMsg.UnmarshalTo(&ro); err != nil {
				return nil, fmt.Errorf("%s: decoding %s: %w", where, key, err)
			}
		default:
			return nil, fmt.Errorf("%s: typed_extension_protocol_options %q is not supported", where, key)
		}
	}
	md := c.GetMetadata().GetFilterMetadata()
	if s, ok := md[contract.FunctionMetadataKey]; ok {
		fm, err := DecodeFunctionMeta(s)
		if err != nil {
			return nil, fmt.Errorf("%s: metadata %s: %w", where, contract.FunctionMetadataKey, err)
		}
		out.Function = fm
	}
	if s, ok := md[contract.QueueMetadataKey]; ok {
		q, err := contract.DecodeQueueMeta(s)
		if err != nil {
			return nil, fmt.Errorf("%s: metadata %s: %w", where, contract.QueueMetadataKey, err)
		}
		out.Queue = &q
	}
	if s, ok := md[contract.UnresolvedMetadataKey]; ok {
		u, err := contract.DecodeUnresolvedMeta(s)
		if err != nil {
			return nil, fmt.Errorf("%s: metadata %s: %w", where, contract.UnresolvedMetadataKey, err)
		}
		out.Unresolved = u.Reason
		if out.Unresolved == "" {
			out.Unresolved = "destination " + c.GetName() + " could not be resolved"
		}
	}
	return out, nil
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
		HoldTimeout:          m.HoldTimeout,
		MaxPending:           int(m.MaxPending),
		ContainerConcurrency: int(m.ContainerConcurrency),
		Async:                m.Async.Enabled,
		MinScale:             int(m.MinScale),
		Policy:               policy,
		PolicyErr:            err,
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
			e := Endpoint{Address: addr, Hostname: ep.GetHostname(), Weight: 1}
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
