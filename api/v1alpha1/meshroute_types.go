package v1alpha1

// MeshRouteSpec says how calls to a set of hosts are routed: the union of what Istio splits
// across VirtualService and DestinationRule.
//
// +kubebuilder:validation:XValidation:rule="self.http.all(r, !has(r.name) || self.http.exists_one(o, has(o.name) && o.name == r.name))",message="http rule names must be unique: rename or remove the duplicate rule"
// +kubebuilder:validation:XValidation:rule="!has(self.subsets) || self.subsets.all(s, self.subsets.exists_one(o, o.name == s.name))",message="subset names must be unique: rename or remove the duplicate subset"
// +kubebuilder:validation:XValidation:rule="size(self.http.filter(r, (!has(r.match) || size(r.match) == 0 || r.match.exists(m, !has(m.method) && (!has(m.headers) || size(m.headers) == 0) && (!has(m.queryParams) || size(m.queryParams) == 0) && (!has(m.path) || (m.path.type == 'Prefix' && m.path.value == '/')))))) == 0 || (size(self.http.filter(r, (!has(r.match) || size(r.match) == 0 || r.match.exists(m, !has(m.method) && (!has(m.headers) || size(m.headers) == 0) && (!has(m.queryParams) || size(m.queryParams) == 0) && (!has(m.path) || (m.path.type == 'Prefix' && m.path.value == '/')))))) == 1 && (!has(self.http[size(self.http) - 1].match) || size(self.http[size(self.http) - 1].match) == 0 || self.http[size(self.http) - 1].match.exists(m, !has(m.method) && (!has(m.headers) || size(m.headers) == 0) && (!has(m.queryParams) || size(m.queryParams) == 0) && (!has(m.path) || (m.path.type == 'Prefix' && m.path.value == '/')))))",message="a rule that matches every request (no match, or only path prefix /) must be the last rule: the rules after it would never match; move it last or give it a match"
// +kubebuilder:validation:XValidation:rule="self.http.all(r, (!has(r.route) || r.route.all(d, !has(d.subset) || (has(self.subsets) && self.subsets.exists(s, s.name == d.subset)))) && (!has(r.mirror) || !has(r.mirror.subset) || (has(self.subsets) && self.subsets.exists(s, s.name == r.mirror.subset))))",message="a destination names a subset that spec.subsets does not define: add the subset or fix the destination's subset"
type MeshRouteSpec struct {
	// Hosts are the names callers use for this route: a Service-style short name ("reviews"),
	// which also matches "reviews.<ns>", "reviews.<ns>.svc" and
	// "reviews.<ns>.svc.cluster.local", with or without a port; or a full DNS name, optionally
	// starting with "*." to match every subdomain. A host has no port: it matches calls on any
	// port.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:XValidation:rule="self.all(h, !h.contains(':'))",message="ports are not part of a host: a host matches calls on any port, and the port of each destination is set with its port field"
	// +kubebuilder:validation:XValidation:rule="self.all(h, h.matches('^(\\\\*\\\\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$'))",message="each host must be a lower-case DNS name such as reviews, api.example.com or *.example.com, with no spaces, ports or upper-case letters"
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:items:Pattern=`^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	// +listType=set
	Hosts []string `json:"hosts"`

	// HTTP rules, evaluated in order: the first rule with a matching match wins.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +listType=atomic
	HTTP []HTTPRule `json:"http"`

	// Subsets are named groups of the destination's pods, selected by label (Istio's
	// DestinationRule subsets). A destination names one with `subset`.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	Subsets []Subset `json:"subsets,omitempty"`

	// TrafficPolicy applies to every destination of this route: load balancing, connection
	// limits, outlier detection and active health checks.
	// +optional
	TrafficPolicy *TrafficPolicy `json:"trafficPolicy,omitempty"`
}

// HTTPRule is one routing rule. It has exactly one action: route, redirect or directResponse.
//
// +kubebuilder:validation:XValidation:rule="(has(self.route) ? 1 : 0) + (has(self.redirect) ? 1 : 0) + (has(self.directResponse) ? 1 : 0) == 1",message="a rule needs exactly one of route, redirect or directResponse"
// +kubebuilder:validation:XValidation:rule="!has(self.timeout) || !has(self.retries) || !has(self.retries.perTryTimeout) || !self.timeout.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') || !self.retries.perTryTimeout.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') || duration(self.retries.perTryTimeout) <= duration(self.timeout)",message="retries.perTryTimeout must not be longer than the rule's timeout: shorten perTryTimeout or raise timeout"
// +kubebuilder:validation:XValidation:rule="!has(self.rewrite) || has(self.route)",message="rewrite applies only to rules with a route"
// +kubebuilder:validation:XValidation:rule="!has(self.mirror) || has(self.route)",message="mirror applies only to rules with a route"
type HTTPRule struct {
	// Name identifies the rule in stats, status and logs. Unique within the route.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name,omitempty"`

	// Match conditions; the rule applies when any one of them matches (OR). Within one match
	// every field must match (AND). No match means every request.
	// +optional
	// +kubebuilder:validation:MaxItems=8
	// +listType=atomic
	Match []HTTPMatch `json:"match,omitempty"`

	// Route sends the request to one of these weighted destinations.
	// +optional
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:XValidation:rule="self.exists(d, d.weight > 0)",message="at least one destination needs a weight above 0"
	// +listType=atomic
	Route []RouteDestination `json:"route,omitempty"`

	// Redirect answers with an HTTP redirect instead of forwarding.
	// +optional
	Redirect *HTTPRedirect `json:"redirect,omitempty"`

	// DirectResponse answers with a fixed status and body instead of forwarding.
	// +optional
	DirectResponse *HTTPDirectResponse `json:"directResponse,omitempty"`

	// Rewrite changes the path prefix or the Host header before forwarding.
	// +optional
	Rewrite *HTTPRewrite `json:"rewrite,omitempty"`

	// Timeout for the whole request including retries. Unset or 0s means no timeout
	// (Istio's default, unlike Envoy's 15s).
	// +optional
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self) <= duration('24h')",message="timeout must be a duration from 0s to 24h, such as 30s or 1m30s"
	Timeout *Duration `json:"timeout,omitempty"`

	// Retries says when and how often a failed request is tried again. Unset means Istio's
	// default: 2 retries on connect-failure, refused-stream and 503 (none on a rule with a
	// fault); set attempts: 0 to disable retries.
	// +optional
	Retries *HTTPRetry `json:"retries,omitempty"`

	// Fault injects delays or aborts into a share of requests, for testing resilience.
	// +optional
	Fault *HTTPFault `json:"fault,omitempty"`

	// Mirror copies a share of requests to another destination, fire-and-forget. Its answers
	// are discarded; its Host header gets the "-shadow" suffix.
	// +optional
	Mirror *HTTPMirror `json:"mirror,omitempty"`

	// Headers sets, adds or removes request and response headers.
	// +optional
	Headers *HeaderOperations `json:"headers,omitempty"`
}

// HTTPMatch is one set of conditions a request must all meet.
type HTTPMatch struct {
	// Name of the match, shown in stats.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	Name string `json:"name,omitempty"`

	// Path matches the request path (without the query string).
	// +optional
	Path *PathMatch `json:"path,omitempty"`

	// Method matches the HTTP method exactly.
	// +optional
	// +kubebuilder:validation:Enum=GET;HEAD;POST;PUT;DELETE;CONNECT;OPTIONS;TRACE;PATCH
	Method string `json:"method,omitempty"`

	// Headers that must match, all of them.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	Headers []HeaderMatch `json:"headers,omitempty"`

	// QueryParams that must match, all of them.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	QueryParams []QueryParamMatch `json:"queryParams,omitempty"`
}

// MatchType says how a value is compared.
// +kubebuilder:validation:Enum=Exact;Prefix;Suffix;RegularExpression;Present
type MatchType string

// Match types. RegularExpression uses RE2 syntax and must match the whole value.
const (
	MatchExact             MatchType = "Exact"
	MatchPrefix            MatchType = "Prefix"
	MatchSuffix            MatchType = "Suffix"
	MatchRegularExpression MatchType = "RegularExpression"
	MatchPresent           MatchType = "Present"
)

// PathMatch matches the request path.
// +kubebuilder:validation:XValidation:rule="self.type in ['Exact', 'Prefix', 'RegularExpression']",message="path match type must be Exact, Prefix or RegularExpression"
// +kubebuilder:validation:XValidation:rule="self.type == 'RegularExpression' || self.value.startsWith('/')",message="an Exact or Prefix path must start with '/'"
type PathMatch struct {
	// Type of comparison: Exact, Prefix or RegularExpression.
	// +kubebuilder:default=Prefix
	Type MatchType `json:"type,omitempty"`

	// Value to compare with.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	Value string `json:"value"`
}

// HeaderMatch matches one request header.
// +kubebuilder:validation:XValidation:rule="self.type == 'Present' || has(self.value)",message="value is required unless type is Present"
type HeaderMatch struct {
	// Name of the header, case-insensitive.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^:?[A-Za-z0-9!#$%&'*+\-.^_\x60|~]+$`
	Name string `json:"name"`

	// Type of comparison.
	// +kubebuilder:default=Exact
	Type MatchType `json:"type,omitempty"`

	// Value to compare with; not used for Present.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	Value *string `json:"value,omitempty"`

	// Invert makes the match succeed when the comparison fails (Istio's withoutHeaders).
	// +optional
	Invert bool `json:"invert,omitempty"`
}

// QueryParamMatch matches one query parameter.
// +kubebuilder:validation:XValidation:rule="self.type in ['Exact', 'RegularExpression', 'Present']",message="query parameter match type must be Exact, RegularExpression or Present"
// +kubebuilder:validation:XValidation:rule="self.type == 'Present' || has(self.value)",message="value is required unless type is Present"
type QueryParamMatch struct {
	// Name of the query parameter, case-sensitive.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	Name string `json:"name"`

	// Type of comparison.
	// +kubebuilder:default=Exact
	Type MatchType `json:"type,omitempty"`

	// Value to compare with; not used for Present.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Value *string `json:"value,omitempty"`
}

// Destination is where a request goes: a port of a Service (optionally one subset of its
// pods), or a MeshFunction.
// +kubebuilder:validation:XValidation:rule="has(self.service) != has(self.function)",message="a destination names exactly one of service or function"
// +kubebuilder:validation:XValidation:rule="!has(self.function) || (!has(self.subset) && !has(self.port))",message="a function destination takes no port or subset: the function's own port is used"
type Destination struct {
	// Service is the name of a Service.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Service string `json:"service,omitempty"`

	// Namespace of the Service or function; defaults to the route's namespace.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Namespace string `json:"namespace,omitempty"`

	// Port of the Service. Required when the Service has more than one port.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port,omitempty"`

	// Subset is the name of one of the route's subsets.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	Subset string `json:"subset,omitempty"`

	// Function is the name of a MeshFunction. Calls to a function scaled to zero are held by
	// the caller's sidecar until it is ready.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Function string `json:"function,omitempty"`
}

// RouteDestination is a destination with a weight.
type RouteDestination struct {
	Destination `json:",inline"`

	// Weight is this destination's share relative to the others' weights. 0 sends it nothing.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000000
	Weight int32 `json:"weight"`

	// Headers sets, adds or removes headers for requests sent to this destination only.
	// +optional
	Headers *HeaderOperations `json:"headers,omitempty"`
}

// HTTPRedirect answers with a redirect. Unset parts keep the request's value.
type HTTPRedirect struct {
	// Scheme of the new location.
	// +optional
	// +kubebuilder:validation:Enum=http;https
	Scheme string `json:"scheme,omitempty"`

	// Host (authority without port) of the new location.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="!self.contains(':')",message="ports are not part of a host: use the port field"
	Host string `json:"host,omitempty"`

	// Port of the new location.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port,omitempty"`

	// Path replaces the whole path.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:Pattern=`^/`
	Path string `json:"path,omitempty"`

	// StatusCode of the redirect.
	// +optional
	// +kubebuilder:default=301
	// +kubebuilder:validation:Enum=301;302;303;307;308
	StatusCode int32 `json:"statusCode,omitempty"`
}

// HTTPDirectResponse answers without forwarding.
type HTTPDirectResponse struct {
	// Status code of the answer.
	// +kubebuilder:validation:Minimum=200
	// +kubebuilder:validation:Maximum=599
	Status int32 `json:"status"`

	// Body of the answer.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	Body string `json:"body,omitempty"`
}

// HTTPRewrite changes the request before it is forwarded.
// +kubebuilder:validation:XValidation:rule="has(self.uriPrefix) || has(self.authority)",message="rewrite needs uriPrefix or authority"
type HTTPRewrite struct {
	// URIPrefix replaces the part of the path the rule matched, as Envoy's prefix_rewrite
	// does: the prefix of a Prefix match; the whole path of an Exact or RegularExpression
	// match (the query is kept in every case).
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:Pattern=`^/`
	URIPrefix *string `json:"uriPrefix,omitempty"`

	// Authority replaces the Host header.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Authority *string `json:"authority,omitempty"`
}

// RetryOn is one condition under which a request is retried (Envoy's names). The gRPC
// conditions (cancelled, deadline-exceeded, internal, resource-exhausted, unavailable)
// retry a gRPC call whose answer carries that grpc-status in its headers (a Trailers-Only
// response), as Envoy's x-envoy-retry-grpc-on does.
// +kubebuilder:validation:Enum="5xx";gateway-error;connect-failure;reset;retriable-4xx;refused-stream;retriable-status-codes;cancelled;deadline-exceeded;internal;resource-exhausted;unavailable
type RetryOn string

// HTTPRetry is a retry policy.
// +kubebuilder:validation:XValidation:rule="!has(self.retriableStatusCodes) || (has(self.retryOn) && 'retriable-status-codes' in self.retryOn)",message="retriableStatusCodes needs 'retriable-status-codes' in retryOn"
type HTTPRetry struct {
	// Attempts is how many times a request is retried after the first try, 0 to 10. 0
	// disables retries.
	// +optional
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=10
	Attempts int32 `json:"attempts"`

	// PerTryTimeout bounds each try, including the first. Must not exceed the rule timeout.
	// +optional
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self) <= duration('24h')",message="retries.perTryTimeout must be a duration from 0s to 24h, such as 30s or 1m30s"
	PerTryTimeout *Duration `json:"perTryTimeout,omitempty"`

	// RetryOn lists the conditions that cause a retry. Defaults to connect-failure,
	// refused-stream and gateway-error, like Istio.
	// +optional
	// +kubebuilder:validation:MaxItems=12
	// +listType=set
	RetryOn []RetryOn `json:"retryOn,omitempty"`

	// RetriableStatusCodes are extra HTTP status codes to retry on.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:Minimum=100
	// +kubebuilder:validation:items:Maximum=599
	// +listType=set
	RetriableStatusCodes []int32 `json:"retriableStatusCodes,omitempty"`

	// BaseInterval is the first back-off between tries (jittered, doubling, capped at ten
	// times this). Envoy's default is 25ms.
	// +optional
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self) <= duration('1h')",message="retries.baseInterval must be a duration from 0s to 1h, such as 30s or 1m30s"
	BaseInterval *Duration `json:"baseInterval,omitempty"`
}

// HTTPFault injects faults into a share of requests.
// +kubebuilder:validation:XValidation:rule="has(self.delay) || has(self.abort)",message="fault needs delay or abort"
type HTTPFault struct {
	// Delay holds a share of requests before forwarding.
	// +optional
	Delay *FaultDelay `json:"delay,omitempty"`

	// Abort answers a share of requests with an error status without forwarding.
	// +optional
	Abort *FaultAbort `json:"abort,omitempty"`
}

// FaultDelay delays requests.
type FaultDelay struct {
	// FixedDelay is how long each affected request waits.
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self) <= duration('1h')",message="fault.delay.fixedDelay must be a duration from 0s to 1h, such as 30s or 1m30s"
	FixedDelay Duration `json:"fixedDelay"`

	// Percentage of requests affected, 0–100 (decimals allowed).
	// +kubebuilder:default=100
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	Percentage float64 `json:"percentage,omitempty"`
}

// FaultAbort aborts requests.
type FaultAbort struct {
	// HTTPStatus returned to the caller.
	// +kubebuilder:validation:Minimum=200
	// +kubebuilder:validation:Maximum=599
	HTTPStatus int32 `json:"httpStatus"`

	// Percentage of requests affected, 0–100 (decimals allowed).
	// +kubebuilder:default=100
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	Percentage float64 `json:"percentage,omitempty"`
}

// HTTPMirror copies requests to another destination.
type HTTPMirror struct {
	Destination `json:",inline"`

	// Percentage of requests mirrored, 0–100 (decimals allowed).
	// +kubebuilder:default=100
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	Percentage float64 `json:"percentage,omitempty"`
}

// HeaderOperations changes request and response headers.
type HeaderOperations struct {
	// Request headers to change before forwarding.
	// +optional
	Request *HeaderOperation `json:"request,omitempty"`

	// Response headers to change before answering.
	// +optional
	Response *HeaderOperation `json:"response,omitempty"`
}

// HeaderOperation sets, adds and removes headers, in that order.
type HeaderOperation struct {
	// Set overwrites these headers. Pseudo-headers (starting with ":") and "host" cannot be
	// set; use rewrite.authority to change the host.
	// +optional
	// +kubebuilder:validation:MaxProperties=32
	// +kubebuilder:validation:XValidation:rule="self.all(h, !h.startsWith(':') && h.lowerAscii() != 'host')",message="headers starting with ':' and host cannot be set: Envoy refuses the route configuration; use rewrite.authority to change the host"
	Set map[string]string `json:"set,omitempty"`

	// Add appends these headers, keeping existing values. Pseudo-headers (starting with ":")
	// and "host" cannot be added.
	// +optional
	// +kubebuilder:validation:MaxProperties=32
	// +kubebuilder:validation:XValidation:rule="self.all(h, !h.startsWith(':') && h.lowerAscii() != 'host')",message="headers starting with ':' and host cannot be added: Envoy refuses the route configuration; use rewrite.authority to change the host"
	Add map[string]string `json:"add,omitempty"`

	// Remove deletes these headers. Pseudo-headers (":path", ":authority" and every other
	// name starting with ":") and "host" cannot be removed: Envoy refuses such a route
	// configuration, and all hosts share one.
	// +optional
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=256
	// +kubebuilder:validation:XValidation:rule="self.all(h, !h.startsWith(':') && h.lowerAscii() != 'host')",message="headers starting with ':' (such as :path, :authority, :method, :scheme, :status) and host cannot be removed: Envoy refuses the route configuration; leave them out of remove"
	// +listType=set
	Remove []string `json:"remove,omitempty"`
}

// Subset is a named group of pods, selected by labels.
type Subset struct {
	// Name referenced by destinations.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`

	// Labels a pod must all have to belong to the subset.
	// +kubebuilder:validation:MinProperties=1
	Labels map[string]string `json:"labels"`
}
