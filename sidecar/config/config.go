// Package config holds the sidecar's decoded, validated and immutable configuration.
//
// It takes raw Envoy v3 resources (listeners, route configurations, clusters, cluster load
// assignments) as the control plane sends them over xDS and produces one *Config the data
// plane reads without locks. Decoding is pure: no I/O, no clock. A field the sidecar does not
// implement and that would change behaviour is an error naming it, so the xDS client can NACK
// it instead of silently serving something different from what the control plane meant.
package config

import (
	"regexp"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/proto"
)

// Config is one complete, consistent view of everything the sidecar serves. It is never
// mutated after Build returns, so readers may share it across goroutines freely.
type Config struct {
	// Versions maps an xDS type URL to the version the resources came from.
	Versions map[string]string
	// HTTPListeners are the HTTP connection manager listeners (outbound and inbound).
	HTTPListeners []*HTTPListener
	// CaptureListeners are the listeners with original_dst (capture.go); their HTTP chains'
	// listeners are in HTTPListeners too (the explicit-proxy chain's bound at the capture
	// listener's address, the others unbound).
	CaptureListeners []*CaptureListener
	// RedisListeners are listeners for the redis proxy, handed over undecoded.
	RedisListeners []*RedisListener
	// Clusters by name, endpoints included.
	Clusters map[string]*Cluster
	// Raw holds every source resource by type URL and name, for /config_dump.
	Raw map[string]map[string]proto.Message
}

// RedisListener is a listener whose filter is envoy.filters.network.redis_proxy, with the
// clusters and endpoints it references, and the pool decoded for sidecar/redisproxy.
type RedisListener struct {
	// Decoded is the pool as the redis proxy serves it (set when the config is complete).
	Decoded RedisConfig
	// Err, when set, is why the pool cannot be served as these resources describe it, and
	// Decoded is empty. The xDS client then keeps the listener's last good version, as
	// Envoy keeps a listener whose update it rejected; a static config fails to load.
	Err       error
	Listener  *listenerv3.Listener
	Clusters  map[string]*clusterv3.Cluster
	Endpoints map[string]*endpointv3.ClusterLoadAssignment
}

// HTTPListener is a listener carrying an HTTP connection manager.
type HTTPListener struct {
	Name string
	// Address is host:port; empty for an unbound listener that serves the connections a
	// capture listener hands it (one HTTP chain's).
	Address    string
	StatPrefix string
	Routes     *RouteTable
	Limits     HTTPLimits
	// RoutesByPort, set on the explicit-proxy listener of a capture listener, holds every
	// per-port route table: a request picks the one named by its Host's port (80 when it
	// names none), and Fallback when there is none.
	RoutesByPort map[uint32]*RouteTable
	Fallback     *RouteTable
	// Authz, when set, is who may call through this listener (MeshPolicy, authz.go);
	// sidecar/authz decides. Nil: every request is allowed.
	Authz *Authz
}

// RouteTable is a decoded RouteConfiguration with the virtual-host lookup prepared.
type RouteTable struct {
	Name         string
	VirtualHosts []*VirtualHost
	exact        map[string]*VirtualHost
	suffix       []wildcard // "*.foo": longest suffix first
	prefix       []wildcard // "foo.*": longest prefix first
	star         *VirtualHost
}

type wildcard struct {
	s  string
	vh *VirtualHost
}

// VirtualHost is a set of domains and their ordered routes.
type VirtualHost struct {
	Name    string
	Domains []string
	Routes  []*Route
}

// ActionKind says what a matched route does.
type ActionKind int

// The route actions the contract uses.
const (
	ActionForward ActionKind = iota
	ActionRedirect
	ActionDirect
	// ActionPassthrough forwards the request unchanged to where the caller sent it: the
	// original destination of a captured connection, the Host of an explicit-proxy request
	// (a route to contract.PassthroughClusterName, Istio's allow_any).
	ActionPassthrough
	// ActionBlocked refuses the request because its destination is no Service of the mesh
	// (a route to contract.BlackHoleClusterName, REGISTRY_ONLY).
	ActionBlocked
)

// Route is one Envoy route: a match and what to do with matching requests.
type Route struct {
	Name  string
	Match Match
	Kind  ActionKind

	// Forward action.
	Clusters      []WeightedCluster
	TotalWeight   uint32
	Timeout       time.Duration // 0: none
	Retry         *RetryPolicy
	PrefixRewrite string
	HostRewrite   string
	Mirrors       []Mirror
	HashPolicies  []HashPolicy

	Redirect *Redirect
	Direct   *DirectResponse

	RequestHeadersToAdd     []HeaderOption
	RequestHeadersToRemove  []string
	ResponseHeadersToAdd    []HeaderOption
	ResponseHeadersToRemove []string

	Fault *Fault

	// LoopSafe is set when the HTTP event loop implements every feature this route uses
	// (loopsafe.go); a route without it is served on the goroutine path.
	LoopSafe bool
}

// Match is a route's request predicate; all parts must hold (AND).
type Match struct {
	PathKind      PathKind
	Path          string // exact path or prefix
	Regex         *regexp.Regexp
	CaseSensitive bool
	Headers       []HeaderMatch
	Query         []QueryMatch
}

// PathKind names how Match.Path is compared.
type PathKind int

// Path specifiers.
const (
	PathPrefix PathKind = iota
	PathExact
	PathRegex
)

// StringMatch is Envoy's StringMatcher.
type StringMatch struct {
	Kind       StringKind
	Value      string
	Regex      *regexp.Regexp
	IgnoreCase bool
}

// StringKind names a StringMatcher variant.
type StringKind int

// StringMatcher variants.
const (
	StringExact StringKind = iota
	StringPrefix
	StringSuffix
	StringContains
	StringRegex
)

// HeaderMatch is Envoy's HeaderMatcher restricted to the contract's fields.
type HeaderMatch struct {
	Name    string // canonical MIME form, or ":method" etc.
	Present bool   // present_match
	String  *StringMatch
	Invert  bool
}

// QueryMatch is Envoy's QueryParameterMatcher.
type QueryMatch struct {
	Name    string
	Present bool
	String  *StringMatch
}

// WeightedCluster is one destination of a route and its share.
type WeightedCluster struct {
	Name   string
	Weight uint32
	// Headers edited when this cluster is picked (a MeshRoute destination's own headers);
	// applied before the route's, as Envoy does.
	RequestHeadersToAdd     []HeaderOption
	RequestHeadersToRemove  []string
	ResponseHeadersToAdd    []HeaderOption
	ResponseHeadersToRemove []string
}

// RetryPolicy is Envoy's retry policy restricted to the contract's fields.
type RetryPolicy struct {
	On                 RetryOn
	NumRetries         int
	PerTryTimeout      time.Duration
	BaseInterval       time.Duration
	MaxInterval        time.Duration
	RetriableCodes     []int
	PreviousHosts      bool
	HostSelectAttempts int
}

// RetryOn is a bit set of Envoy retry conditions.
type RetryOn uint32

// Retry conditions, named as in Envoy's x-envoy-retry-on.
const (
	Retry5xx RetryOn = 1 << iota
	RetryGatewayError
	RetryConnectFailure
	RetryReset
	RetryRetriable4xx
	RetryRefusedStream
	RetryRetriableStatusCodes
)

// Mirror sends a copy of a fraction of requests to another cluster.
type Mirror struct {
	Cluster string
	// Per million: Envoy's FractionalPercent normalised so one comparison with a random
	// number in [0, 1e6) decides.
	PerMillion uint32
}

// HashPolicyKind names what a hash policy hashes.
type HashPolicyKind int

// Hash policy sources.
const (
	HashHeader HashPolicyKind = iota
	HashCookie
	HashQuery
	HashSourceIP
)

// HashPolicy feeds the ring hash load balancer.
type HashPolicy struct {
	Kind     HashPolicyKind
	Name     string
	Terminal bool
	// CookieTTL, for a cookie policy, makes the sidecar generate the cookie when a request
	// has none and set it on the response with this Max-Age, so the next requests stick
	// (Envoy's cookie ttl). CookiePath is the cookie's Path ("/" when empty).
	CookieTTL  time.Duration
	CookiePath string
}

// Redirect is a redirect action.
type Redirect struct {
	Scheme        string
	Host          string
	Port          uint32
	Path          string
	PrefixRewrite string
	Code          int
	StripQuery    bool
}

// DirectResponse answers without an upstream.
type DirectResponse struct {
	Status int
	Body   string
}

// HeaderAction is Envoy's HeaderValueOption.append_action.
type HeaderAction int

// Header append actions.
const (
	AppendOrAdd HeaderAction = iota
	AddIfAbsent
	OverwriteOrAdd
	OverwriteIfExists
)

// HeaderOption adds or sets one header.
type HeaderOption struct {
	Name   string
	Value  string
	Action HeaderAction
}

// Fault is the fault filter's per-route config.
type Fault struct {
	Delay           time.Duration
	DelayPerMillion uint32
	AbortStatus     int
	AbortPerMillion uint32
}
