package contract

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
