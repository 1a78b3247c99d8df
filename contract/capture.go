package contract

import (
	"strconv"
	"time"
)

// Transparent capture (issue 15). The outbound listener (OutboundPort) and the inbound one
// (InboundPort) carry Envoy's envoy.filters.listener.original_dst and pick a filter chain by
// the connection's original destination, as Istio's virtualOutbound and virtualInbound do:
// per HTTP port an HTTP connection manager whose RDS route configuration is named by the port
// (RouteConfigName), per TCP Service port a tcp_proxy to the Service's cluster, and a default
// chain to PassthroughClusterName (ALLOW_ANY) or BlackHoleClusterName (REGISTRY_ONLY).
const (
	// OriginalDstFilterName is the listener filter that restores the pre-REDIRECT destination
	// (SO_ORIGINAL_DST) as the connection's local address.
	OriginalDstFilterName = "envoy.filters.listener.original_dst"
	// HTTPInspectorFilterName sniffs the first bytes for an HTTP/1 request line or the h2
	// preface and sets application_protocols to "http/1.1" or "h2c".
	HTTPInspectorFilterName = "envoy.filters.listener.http_inspector"
	// TLSInspectorFilterName reads a TLS ClientHello's SNI and ALPN.
	TLSInspectorFilterName = "envoy.filters.listener.tls_inspector"
	// TCPProxyFilterName forwards the bytes of a connection to a cluster.
	TCPProxyFilterName = "envoy.filters.network.tcp_proxy"

	// PassthroughClusterName is the ORIGINAL_DST cluster: a connection or request goes to
	// where the app sent it (Istio's name).
	PassthroughClusterName = "PassthroughCluster"
	// BlackHoleClusterName is the STATIC cluster with no endpoints that REGISTRY_ONLY sends
	// unknown destinations to (Istio's name).
	BlackHoleClusterName = "BlackHoleCluster"
	// InboundPassthroughClusterName carries inbound connections to ports the sidecar has no
	// chain for to 127.0.0.1:<original port> (Istio's name).
	InboundPassthroughClusterName = "InboundPassthroughCluster"

	// ExplicitProxyMetadataKey marks, in a filter chain's metadata, the outbound chain that
	// serves connections that were not redirected (HTTP_PROXY callers): each request picks
	// the route configuration named by the port of its absolute-form URI or Host (80 when it
	// has none). Its HCM names RouteConfigName(DefaultHTTPPort), which a real Envoy uses for
	// every request. The payload is an empty struct.
	ExplicitProxyMetadataKey = "weft.dev/explicit-proxy"

	// AllowAnyRouteName and BlockAllRouteName are the catch-all virtual hosts (domain "*")
	// every per-port route configuration ends with: a route to PassthroughClusterName under
	// ALLOW_ANY, to BlackHoleClusterName under REGISTRY_ONLY (Istio's allow_any/block_all).
	AllowAnyRouteName = "allow_any"
	BlockAllRouteName = "block_all"
)

// OutboundTrafficPolicy is Istio's outboundTrafficPolicy.mode: what happens to a connection
// or request whose destination is no Service of the mesh.
type OutboundTrafficPolicy string

// The two modes; AllowAny is the default, as in Istio.
const (
	AllowAny     OutboundTrafficPolicy = "ALLOW_ANY"
	RegistryOnly OutboundTrafficPolicy = "REGISTRY_ONLY"
)

// DefaultHTTPPort is the port of a request whose Host names none.
const DefaultHTTPPort = 80

// TCPIdleTimeout is tcp_proxy's idle_timeout the control plane sets: Envoy's and Istio's
// default, 1 h without a byte in either direction.
const TCPIdleTimeout = time.Hour

// ProtocolSniffTimeout bounds how long the sidecar waits for a connection's first bytes
// when a port's protocol is not declared. Clients that speak first (HTTP, h2, TLS) send
// within a round trip of connecting, far below this; a server-first protocol (MySQL, SMTP)
// on an undeclared port waits this long once per connection and is then proxied as TCP,
// instead of hanging (Istio's default is no timeout, so such a port deadlocks; Linkerd
// waits 10 s). Declare such ports tcp (appProtocol or a "tcp-" name) to skip the wait.
const ProtocolSniffTimeout = 500 * time.Millisecond

// RouteConfigName is the RDS route configuration of one outbound port, named by the port as
// Istio names them ("9080").
func RouteConfigName(port uint32) string { return strconv.FormatUint(uint64(port), 10) }

// DefaultServiceClusterName is the cluster of a Service port with no MeshRoute:
// outbound|<port>||<svc>.<ns>.svc.cluster.local (Istio's name).
func DefaultServiceClusterName(port int32, svc, ns string) string {
	return "outbound|" + strconv.Itoa(int(port)) + "||" + svc + "." + ns + ".svc.cluster.local"
}

// Transparent traffic capture (docs/capture.md). The init container's netfilter rules
// (internal/capture, cmd/weft-init) and the sidecar must agree on these: the rules exempt the
// proxy's own traffic by its UID and GID (or it would be captured again, forever), redirect
// outbound TCP to OutboundPort on the loopback and inbound TCP to InboundPort, and let the
// sidecar's hop to the app through when it comes from InboundPassthroughSource. Istio uses the
// same numbers (istio-iptables constants.go).
const (
	// ProxyUID is the user the sidecar container runs as (securityContext.runAsUser).
	ProxyUID = 1337
	// ProxyGID is the group the sidecar container runs as (securityContext.runAsGroup).
	ProxyGID = 1337
	// InboundPassthroughSourceIPv4 is the source address a sidecar may bind when it forwards
	// captured inbound traffic to the app over the pod IP; the rules never capture loopback
	// traffic from it (Istio's 127.0.0.6).
	InboundPassthroughSourceIPv4 = "127.0.0.6"
	// InboundPassthroughSourceIPv6 is InboundPassthroughSourceIPv4 for IPv6 (Istio's ::6).
	InboundPassthroughSourceIPv6 = "::6"
)
