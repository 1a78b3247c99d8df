package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// TrafficPolicy is how a sidecar treats the endpoints of a destination.
type TrafficPolicy struct {
	// LoadBalancer picks an endpoint for each request.
	// +optional
	LoadBalancer *LoadBalancer `json:"loadBalancer,omitempty"`

	// ConnectionPool limits connections and requests (Envoy circuit breakers). Requests over a
	// limit get 503 with header x-weft-overloaded: true.
	// +optional
	ConnectionPool *ConnectionPool `json:"connectionPool,omitempty"`

	// OutlierDetection ejects endpoints that keep failing.
	// +optional
	OutlierDetection *OutlierDetection `json:"outlierDetection,omitempty"`

	// HealthCheck probes endpoints actively over HTTP.
	// +optional
	HealthCheck *HTTPHealthCheck `json:"healthCheck,omitempty"`
}

// SimpleLB is a load-balancing algorithm without affinity.
// +kubebuilder:validation:Enum=RoundRobin;LeastRequest;Random
type SimpleLB string

// Simple load balancers. LeastRequest uses the power of two choices, like Envoy.
const (
	LBRoundRobin   SimpleLB = "RoundRobin"
	LBLeastRequest SimpleLB = "LeastRequest"
	LBRandom       SimpleLB = "Random"
)

// LoadBalancer is either simple or consistent-hash.
// +kubebuilder:validation:XValidation:rule="!(has(self.simple) && has(self.consistentHash))",message="loadBalancer takes simple or consistentHash, not both"
type LoadBalancer struct {
	// Simple algorithm. Defaults to LeastRequest, like Istio.
	// +optional
	Simple SimpleLB `json:"simple,omitempty"`

	// ConsistentHash sends requests with the same key to the same endpoint (ring hash).
	// +optional
	ConsistentHash *ConsistentHash `json:"consistentHash,omitempty"`
}

// ConsistentHash names the request property hashed for affinity. Exactly one is set.
// +kubebuilder:validation:XValidation:rule="(has(self.httpHeaderName) ? 1 : 0) + (has(self.httpCookie) ? 1 : 0) + (has(self.httpQueryParameterName) ? 1 : 0) + (has(self.useSourceIP) && self.useSourceIP ? 1 : 0) == 1",message="consistentHash needs exactly one of httpHeaderName, httpCookie, httpQueryParameterName or useSourceIP: true"
type ConsistentHash struct {
	// HTTPHeaderName hashes the value of this header.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	HTTPHeaderName *string `json:"httpHeaderName,omitempty"`

	// HTTPCookie hashes the value of this cookie.
	// +optional
	HTTPCookie *HTTPCookie `json:"httpCookie,omitempty"`

	// HTTPQueryParameterName hashes the value of this query parameter.
	// +optional
	// +kubebuilder:validation:MaxLength=256
	HTTPQueryParameterName *string `json:"httpQueryParameterName,omitempty"`

	// UseSourceIP hashes the caller's IP address (Envoy's source_ip): the calling pod's IP,
	// whether its app's calls are captured or reach the sidecar through HTTP_PROXY (the
	// sidecar then hashes its own pod's IP, from POD_IP, instead of 127.0.0.1).
	// +optional
	UseSourceIP bool `json:"useSourceIP,omitempty"`

	// MinimumRingSize is the number of points on the hash ring (Istio's minimum is 1024).
	// +optional
	// +kubebuilder:default=1024
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=8388608
	MinimumRingSize int64 `json:"minimumRingSize,omitempty"`
}

// HTTPCookie names a cookie.
type HTTPCookie struct {
	// Name of the cookie.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	Name string `json:"name"`

	// TTL of a cookie the sidecar generates when the request has none; unset means it
	// generates none.
	// +optional
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self) <= duration('720h')",message="httpCookie.ttl must be a duration from 0s to 720h, such as 30s or 1m30s"
	TTL *Duration `json:"ttl,omitempty"`
}

// ConnectionPool limits what a sidecar sends to a destination. Unset limits use Envoy's
// defaults (1024 connections, 1024 pending, 1024 requests, 3 concurrent retries).
type ConnectionPool struct {
	// MaxConnections open from each calling sidecar to all endpoints together, idle ones
	// included (Envoy's max_connections; Istio's tcp.maxConnections). A request that finds
	// them all busy waits for one, in arrival order, up to maxPendingRequests.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000
	// +kubebuilder:validation:XValidation:rule="self >= 1 && self <= 1000000",message="connectionPool.maxConnections must be between 1 and 1000000"
	MaxConnections *int32 `json:"maxConnections,omitempty"`

	// MaxPendingRequests waiting for a connection in each calling sidecar (Envoy's
	// max_pending_requests; Istio's http1MaxPendingRequests). A wait ends at the rule's
	// timeout (or retries.perTryTimeout) with 504; a request beyond this many gets 503 with
	// x-weft-overloaded: true and a body saying the pool is full.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000
	// +kubebuilder:validation:XValidation:rule="self >= 1 && self <= 1000000",message="connectionPool.maxPendingRequests must be between 1 and 1000000"
	MaxPendingRequests *int32 `json:"maxPendingRequests,omitempty"`

	// MaxRequests in flight to all endpoints together.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000000
	// +kubebuilder:validation:XValidation:rule="self >= 1 && self <= 1000000",message="connectionPool.maxRequests must be between 1 and 1000000"
	MaxRequests *int32 `json:"maxRequests,omitempty"`

	// MaxRetries in flight to all endpoints together. Defaults to 2^32-1 (no limit beyond
	// each route's retry attempts), like Istio.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000000
	// +kubebuilder:validation:XValidation:rule="self >= 0 && self <= 1000000",message="connectionPool.maxRetries must be between 0 and 1000000"
	MaxRetries *int32 `json:"maxRetries,omitempty"`

	// MaxRequestsPerConnection closes a connection after this many requests; 0 means no limit.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000000
	// +kubebuilder:validation:XValidation:rule="self >= 0 && self <= 1000000",message="connectionPool.maxRequestsPerConnection must be between 0 and 1000000"
	MaxRequestsPerConnection *int32 `json:"maxRequestsPerConnection,omitempty"`

	// ConnectTimeout for new connections. Defaults to 500ms (Istio: 10s): inside a mesh a
	// connect completes in a millisecond or two, and one that takes longer is to a pod
	// that is gone; failing it fast lets the retry and outlier detection move on.
	// +optional
	// +kubebuilder:default="500ms"
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self) <= duration('1h')",message="connectionPool.connectTimeout must be a duration from 0s to 1h, such as 30s or 1m30s"
	ConnectTimeout *Duration `json:"connectTimeout,omitempty"`

	// IdleTimeout closes upstream connections idle this long. Defaults to 1h, like Istio.
	// +optional
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self) <= duration('720h')",message="connectionPool.idleTimeout must be a duration from 0s to 720h, such as 30s or 1m30s"
	IdleTimeout *Duration `json:"idleTimeout,omitempty"`
}

// OutlierDetection ejects endpoints that keep failing, for baseEjectionTime times the number
// of times they were ejected.
type OutlierDetection struct {
	// Consecutive5xxErrors ejects an endpoint after this many 5xx answers in a row (502, 503
	// and 504 and connection failures included). 0 disables it.
	// +optional
	// +kubebuilder:default=5
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	Consecutive5xxErrors *int32 `json:"consecutive5xxErrors,omitempty"`

	// ConsecutiveGatewayErrors ejects an endpoint after this many 502, 503 or 504 answers or
	// connection failures in a row. Unset disables it.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	ConsecutiveGatewayErrors *int32 `json:"consecutiveGatewayErrors,omitempty"`

	// Interval between ejection sweeps.
	// +optional
	// +kubebuilder:default="10s"
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self) <= duration('1h')",message="outlierDetection.interval must be a duration from 0s to 1h, such as 30s or 1m30s"
	Interval *Duration `json:"interval,omitempty"`

	// BaseEjectionTime is the first ejection's length.
	// +optional
	// +kubebuilder:default="30s"
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self) <= duration('24h')",message="outlierDetection.baseEjectionTime must be a duration from 0s to 24h, such as 30s or 1m30s"
	BaseEjectionTime *Duration `json:"baseEjectionTime,omitempty"`

	// MaxEjectionPercent of endpoints that may be ejected at once.
	// +optional
	// +kubebuilder:default=10
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	MaxEjectionPercent *int32 `json:"maxEjectionPercent,omitempty"`
}

// HTTPHealthCheck probes endpoints with HTTP GETs.
type HTTPHealthCheck struct {
	// Path probed; a 2xx answer is healthy.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:Pattern=`^/`
	Path string `json:"path"`

	// Interval between probes.
	// +optional
	// +kubebuilder:default="5s"
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self) <= duration('1h')",message="healthCheck.interval must be a duration from 0s to 1h, such as 30s or 1m30s"
	Interval *Duration `json:"interval,omitempty"`

	// Timeout of one probe.
	// +optional
	// +kubebuilder:default="1s"
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self) <= duration('1h')",message="healthCheck.timeout must be a duration from 0s to 1h, such as 30s or 1m30s"
	Timeout *Duration `json:"timeout,omitempty"`

	// HealthyThreshold is how many passing probes make an unhealthy endpoint healthy.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	HealthyThreshold int32 `json:"healthyThreshold,omitempty"`

	// UnhealthyThreshold is how many failing probes make a healthy endpoint unhealthy.
	// +optional
	// +kubebuilder:default=3
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	UnhealthyThreshold int32 `json:"unhealthyThreshold,omitempty"`
}

// MeshRouteStatus reports whether the route is accepted and which sidecars have it.
type MeshRouteStatus struct {
	MeshStatus `json:",inline"`
}

// MeshRoute routes calls to a set of hosts (Istio's VirtualService and DestinationRule in one).
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=mr,categories=weft
// +kubebuilder:printcolumn:name="Hosts",type=string,JSONPath=`.spec.hosts`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,description="Why the object is or is not ready"
// +kubebuilder:printcolumn:name="Accepted",type=string,JSONPath=`.status.conditions[?(@.type=="Accepted")].status`
// +kubebuilder:printcolumn:name="Synced",type=integer,JSONPath=`.status.syncedSidecars`,description="Sidecars that ACKed the current version"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type MeshRoute struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec MeshRouteSpec `json:"spec"`
	// Status is defaulted to {observedGeneration: 0} so an object Weft has not reconciled
	// yet reads InProgress to kstatus (which skips its generation check when
	// observedGeneration is absent and would call the object Current).
	// +kubebuilder:default={observedGeneration: 0}
	Status MeshRouteStatus `json:"status,omitempty"`
}

// MeshRouteList is a list of MeshRoutes.
//
// +kubebuilder:object:root=true
type MeshRouteList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MeshRoute `json:"items"`
}
