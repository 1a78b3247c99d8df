package contract

import (
	"fmt"
	"strconv"
)

// Listener, route and address names every sidecar relies on.
const (
	// OutboundListenerName is the listener the app's outgoing calls reach: HTTP_PROXY
	// callers, and connections iptables redirected (capture.go).
	OutboundListenerName = "outbound_http"
	// InboundListenerName is the HTTP listener in front of the local app.
	InboundListenerName = "inbound_http"
	// OutboundRouteName is the RDS RouteConfiguration of a single-chain outbound listener
	// (control planes before issue 15, and sidecar tests). The control plane now emits one
	// route configuration per port (RouteConfigName) behind a capture listener (capture.go).
	OutboundRouteName = "outbound_http"
	// InboundRouteName is the inline RouteConfiguration (and its one vhost) of the inbound
	// listener.
	InboundRouteName = "inbound"
	// OutboundAddress is where the outbound listener binds: the pod's loopback only.
	OutboundAddress = "127.0.0.1"
	// InboundAddress is where the inbound listener binds: every pod address.
	InboundAddress = "0.0.0.0"
)

// Ports. They are fixed so injected pods, function Services and sidecars agree without
// configuration; Istio uses the same numbers.
const (
	// AdminPort serves the sidecar's full admin API on 127.0.0.1.
	AdminPort = 15000
	// OutboundPort is the outbound HTTP listener's port.
	OutboundPort = 15001
	// InboundPort is the inbound HTTP listener's port; function Services and function
	// endpoints target it.
	InboundPort = 15006
	// MetricsPort serves the sidecar's read-only /stats and /ready on the pod address.
	MetricsPort = 15020
	// XDSPort is the manager's ADS port; the signal service shares it.
	XDSPort = 18000
)

// OutboundProxyURL is the HTTP_PROXY an injected app gets: the outbound listener,
// http://OutboundAddress:OutboundPort (a test checks the two agree).
const OutboundProxyURL = "http://127.0.0.1:15001"

// Envoy extension names the contract uses.
const (
	HCMFilterName = "envoy.filters.network.http_connection_manager"
	// ConnectionLimitFilterName caps a listener's downstream connections; it may come before
	// the HCM in an HTTP listener's filter chain.
	ConnectionLimitFilterName = "envoy.filters.network.connection_limit"
	RedisFilterName           = "envoy.filters.network.redis_proxy"
	FaultFilterName           = "envoy.filters.http.fault"
	RouterFilterName          = "envoy.filters.http.router"
	RedisHealthCheckerName    = "envoy.health_checkers.redis"
	PreviousHostsPredicate    = "envoy.retry_host_predicates.previous_hosts"
	// HTTPProtocolOptionsKey is the typed_extension_protocol_options key of a cluster's
	// HTTP options (idle timeout, max requests per connection).
	HTTPProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	// RedisProtocolOptionsKey is the typed_extension_protocol_options key of a redis pool's
	// upstream AUTH.
	RedisProtocolOptionsKey = RedisFilterName
)

// QueueClusterName is the STATIC cluster that tells every sidecar where the async queue
// (NATS) is; its metadata is QueueMeta.
const QueueClusterName = "weft-nats"

// ServiceClusterName is the cluster of one (route, destination, subset):
// outbound|<port>|<subset>|<svc>.<ns>.svc.cluster.local|<route ns>/<route name>. The route
// is part of the name so two routes never fight over one cluster's traffic policy.
func ServiceClusterName(port int32, subset, svc, svcNS, routeNS, routeName string) string {
	return fmt.Sprintf("outbound|%d|%s|%s.%s.svc.cluster.local|%s/%s", port, subset, svc, svcNS, routeNS, routeName)
}

// FunctionClusterName is the cluster of a MeshFunction's pods: function|<ns>/<name>.
func FunctionClusterName(ns, name string) string { return "function|" + ns + "/" + name }

// RedisName names both the listener and the pool cluster of a RedisProxy: redis|<ns>/<name>.
func RedisName(ns, name string) string { return "redis|" + ns + "/" + name }

// InboundClusterName is the STATIC cluster of the local app: inbound|<appPort>.
func InboundClusterName(appPort uint32) string {
	return "inbound|" + strconv.FormatUint(uint64(appPort), 10)
}

// Keys of node.metadata, the google.protobuf.Struct a sidecar sends in its ADS requests.
const (
	// NodeNamespace (string) is the pod's namespace.
	NodeNamespace = "namespace"
	// NodePod (string) is the pod name.
	NodePod = "pod"
	// NodeLabels (struct of string → string) are the pod labels.
	NodeLabels = "labels"
	// NodeFunction (string, optional) is <namespace>/<name> of the MeshFunction the pod
	// serves.
	NodeFunction = "function"
	// NodeAppPort (number, optional) is the local app port the inbound listener forwards to.
	NodeAppPort = "appPort"
	// NodeRedisProxy (string, optional) is <namespace>/<name> when the sidecar is that
	// RedisProxy's standalone proxy.
	NodeRedisProxy = "redisProxy"
	// NodeInboundCapture (bool, optional) is true when the pod's inbound ports are captured
	// but it has no app port (a pod that serves only TCP, such as redis:7 alone): its
	// inbound listener has only the TCP passthrough, which terminates mesh TLS and hands
	// the bytes to 127.0.0.1:<original port>. The sidecar sends it for
	// --inbound-capture (FlagInboundCapture); an authenticated stream's view reads that
	// flag from the verified pod instead.
	NodeInboundCapture = "inboundCapture"
)

// FlagInboundCapture is the sidecar's flag (--inbound-capture) the injector sets on a pod
// whose inbound is captured though it has no app port (NodeInboundCapture).
const FlagInboundCapture = "inbound-capture"
