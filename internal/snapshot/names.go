package snapshot

import (
	"fmt"
	"strconv"
	"strings"
)

// Names and addresses fixed by docs/xds-contract.md.
const (
	OutboundListenerName = "outbound_http"
	InboundListenerName  = "inbound_http"
	OutboundRouteName    = "outbound_http"
	inboundRouteName     = "inbound"
	outboundAddress      = "127.0.0.1"
	outboundPort         = 15001
	inboundAddress       = "0.0.0.0"
	// InboundPort is the sidecar's inbound listener port; function Services target it.
	InboundPort = 15006

	hcmFilterName             = "envoy.filters.network.http_connection_manager"
	connectionLimitFilterName = "envoy.filters.network.connection_limit"
	redisFilterName           = "envoy.filters.network.redis_proxy"
	faultFilterName           = "envoy.filters.http.fault"
	routerFilterName          = "envoy.filters.http.router"
	redisHealthChecker        = "envoy.health_checkers.redis"
	previousHostsName         = "envoy.retry_host_predicates.previous_hosts"
	httpProtocolOptions       = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

	// Metadata keys (filter_metadata) the sidecar reads.
	FunctionMetadataKey   = "weft.dev/function"
	RedisMetadataKey      = "weft.dev/redis"
	UnresolvedMetadataKey = "weft.dev/unresolved"
	RouteMetadataKey      = "weft.dev/route"
)

// ServiceClusterName is the cluster of one (route, destination, subset):
// outbound|<port>|<subset>|<svc>.<ns>.svc.cluster.local|<route ns>/<route name>. The route
// is part of the name so two routes never fight over one cluster's traffic policy.
func ServiceClusterName(port int32, subset, svc, svcNS, routeNS, routeName string) string {
	return fmt.Sprintf("outbound|%d|%s|%s.%s.svc.cluster.local|%s/%s", port, subset, svc, svcNS, routeNS, routeName)
}

// FunctionClusterName is the cluster of a MeshFunction's pods.
func FunctionClusterName(ns, name string) string { return "function|" + ns + "/" + name }

// RedisName names both the listener and the pool cluster of a RedisProxy.
func RedisName(ns, name string) string { return "redis|" + ns + "/" + name }

// InboundClusterName is the STATIC cluster of the local app.
func InboundClusterName(appPort uint32) string {
	return "inbound|" + strconv.FormatUint(uint64(appPort), 10)
}

// hostDomains lists the names callers may use for host h of an object in namespace ns.
// A short name ("reviews") gets every Kubernetes DNS form; the bare short forms are
// returned separately because they resolve only for callers in the same namespace (the
// DNS search path), so they go only into that namespace's route configuration. Each form
// also appears with ":<port>" for every port given.
func hostDomains(h, ns string, ports []int32) (global, local []string) {
	withPorts := func(names ...string) []string {
		var out []string
		for _, n := range names {
			out = append(out, n)
			for _, p := range ports {
				out = append(out, n+":"+strconv.Itoa(int(p)))
			}
		}
		return out
	}
	if strings.Contains(h, ".") {
		return withPorts(h), nil
	}
	return withPorts(h+"."+ns, h+"."+ns+".svc", h+"."+ns+".svc.cluster.local"), withPorts(h)
}

// hostKey is the name two objects' hosts collide on: short names are qualified by their
// namespace, so "reviews" in default and "reviews.default.svc" claim the same host.
func hostKey(h, ns string) string {
	switch {
	case strings.HasPrefix(h, "*."):
		return h
	case !strings.Contains(h, "."):
		return h + "." + ns + ".svc.cluster.local"
	case strings.HasSuffix(h, ".svc.cluster.local"):
		return h
	case strings.HasSuffix(h, ".svc"):
		return h + ".cluster.local"
	case strings.Count(h, ".") == 1:
		return h + ".svc.cluster.local"
	}
	return h
}
