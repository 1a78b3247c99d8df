package snapshot

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/weftmesh/weft/contract"
)

// The gateway (docs/gateway.md) is the sidecar binary run alone as Deployment weft-gateway
// in weft-system, for callers outside the mesh. Its view is chosen by the identity the
// control plane verified (ServiceAccount GatewayNamespace/GatewayServiceAccount), never by
// what its node metadata claims, and it receives:
//   - one HTTP listener on 0.0.0.0:GatewayPort (no capture listener, no inbound listener):
//     the sidecar serves it exactly as its outbound listener, so a call to a function at
//     zero is held, the autoscaler is poked and retries apply, and "Prefer: respond-async"
//     is published to the queue;
//   - one route configuration, GatewayRouteName: the virtual hosts of every MeshFunction and
//     MeshRoute host (their cluster-wide names, never the bare short names nor plain
//     Services), each route removing the mesh's internal headers a caller could forge, then
//     a catch-all that answers 404 with a body saying what the gateway serves;
//   - every shared cluster and endpoint (the routes reference them) and the queue's cluster
//     with its credential, so async calls work as from a meshed caller.
const (
	// GatewayNamespace and GatewayServiceAccount are the identity whose sidecar gets the
	// gateway view (config/gateway deploys it).
	GatewayNamespace      = "weft-system"
	GatewayServiceAccount = "weft-gateway"
	// GatewayListenerName is the gateway's HTTP listener and its stat prefix.
	GatewayListenerName = "weft-gateway"
	// GatewayRouteName is the route configuration the gateway's listener takes over RDS.
	GatewayRouteName = "weft-gateway"
	// GatewayPort is the port the listener binds in the gateway pod; the Service
	// weft-gateway maps GatewayServicePort to it.
	GatewayPort        = 8080
	GatewayServicePort = 80
	// NodeGateway is the node metadata key (a bool) the control plane writes for a verified
	// gateway, so the cache keys its stream by the gateway view (NodeMetadata, ViewFromNode).
	NodeGateway = "gateway"
	// gatewayRoutesKey caches the gateway's route configuration beside the namespaces'
	// (Result.routes); no namespace name holds a NUL.
	gatewayRoutesKey = "\x00gateway"
	// gatewayNotFoundRoute names the catch-all virtual host and route.
	gatewayNotFoundRoute = "weft-gateway-not-found"
)

// GatewayNotFoundBody is the body of the gateway's 404 for a host no MeshFunction or
// MeshRoute claims.
const GatewayNotFoundBody = "weft-gateway: no MeshFunction or MeshRoute serves this Host. " +
	"Call a function as <name>.<namespace> (or <name>.<namespace>.svc.cluster.local), or a host listed in a MeshFunction's or MeshRoute's spec.hosts; " +
	"plain Services without a MeshRoute are not exposed through the gateway.\n"

// gatewayStrippedHeaders are the request headers a sidecar sets for, or reads from, another
// sidecar or the queue. A caller outside the mesh has no business sending them: the gateway
// removes them from every request it forwards synchronously. X-Weft-Peer-Metadata labels the
// caller's workload in the callee's metrics; X-Weft-Start-Budget-Ms shortens how long the
// callee's sidecar waits for its app; the Weft-* names carry a queued call's request line
// and enqueue time (the publisher drops a caller's Weft-*/Nats-* headers from queued calls
// itself, sidecar/async). The rest are sidecars' response headers, removed so nothing
// downstream takes a request's copy for the mesh's. Envoy's request_headers_to_remove takes
// names, not prefixes, so the list names each one.
var gatewayStrippedHeaders = []string{
	"x-weft-peer-metadata",
	"x-weft-start-budget-ms",
	"x-weft-hold-timeout",
	"x-weft-cold-start",
	"x-weft-overloaded",
	"weft-method",
	"weft-uri",
	"weft-host",
	"weft-enqueued-at",
}

// GatewayView is the view of the gateway's sidecar. Its labels are dropped so every
// replica of the Deployment shares one snapshot.
func GatewayView() View { return View{Namespace: GatewayNamespace, Gateway: true} }

// objectVHost reports whether e is a MeshFunction's or MeshRoute's virtual host (named
// "<namespace>/<name>|<host>"), not a plain Service's default one ("<fqdn>:<port>").
func objectVHost(e *vhostEntry) bool { return strings.Contains(e.global.GetName(), "/") }

// gatewayRouteConfig builds the gateway's route configuration from the settled virtual
// hosts of MeshFunctions and MeshRoutes, by their cluster-wide names only (no bare short
// names, no ClusterIPs): route configuration "80" first (functions live there), then the
// other ports' in name order; a domain an earlier virtual host took is left out, so a
// MeshRoute spanning ports is served by its first port's routes. Every portless domain is
// also served with ":80", the gateway Service's port, which some clients send.
func (r *Result) gatewayRouteConfig() versioned[[]types.Resource] {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rc, ok := r.routes[gatewayRoutesKey]; ok {
		return rc
	}
	first := strconv.Itoa(GatewayServicePort)
	var order []*vhostEntry
	for pass := 0; pass < 2; pass++ {
		for i := range r.vhosts {
			e := &r.vhosts[i]
			if objectVHost(e) && (e.rc == first) == (pass == 0) {
				order = append(order, e)
			}
		}
	}
	rc := &routev3.RouteConfiguration{Name: GatewayRouteName}
	taken := map[string]bool{}
	port := ":" + first
	for _, e := range order {
		var domains []string
		add := func(d string) {
			if !taken[d] {
				taken[d] = true
				domains = append(domains, d)
			}
		}
		for _, d := range e.global.GetDomains() {
			if !ipDomain(d) {
				add(d)
			}
		}
		for _, d := range e.global.GetDomains() {
			if !strings.Contains(d, ":") && !ipDomain(d) {
				add(d + port)
			}
		}
		if len(domains) == 0 {
			continue
		}
		routes := make([]*routev3.Route, len(e.global.GetRoutes()))
		for i, rt := range e.global.GetRoutes() {
			c := proto.Clone(rt).(*routev3.Route)
			c.RequestHeadersToRemove = appendMissing(c.RequestHeadersToRemove, gatewayStrippedHeaders)
			routes[i] = c
		}
		rc.VirtualHosts = append(rc.VirtualHosts, &routev3.VirtualHost{Name: e.global.GetName(), Domains: domains, Routes: routes})
	}
	rc.VirtualHosts = append(rc.VirtualHosts, &routev3.VirtualHost{Name: gatewayNotFoundRoute, Domains: []string{"*"},
		Routes: []*routev3.Route{{
			Name:   gatewayNotFoundRoute,
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: directResponse(404, GatewayNotFoundBody),
		}}})
	out := versioned[[]types.Resource]{[]types.Resource{rc}, version(hashOf(rc))}
	r.routes[gatewayRoutesKey] = out
	return out
}

// ipDomain reports whether d is a ClusterIP form ("10.96.0.20" or "10.96.0.20:80"): a
// caller of the gateway names the host it wants, never a Service address inside the
// cluster, so those forms are left out.
func ipDomain(d string) bool {
	if h, _, err := net.SplitHostPort(d); err == nil {
		d = h
	}
	_, err := netip.ParseAddr(strings.Trim(d, "[]"))
	return err == nil
}

// appendMissing appends to list the names of add it does not hold yet (case-insensitively).
func appendMissing(list, add []string) []string {
	for _, a := range add {
		found := false
		for _, l := range list {
			if strings.EqualFold(l, a) {
				found = true
				break
			}
		}
		if !found {
			list = append(list, a)
		}
	}
	return list
}

// gatewayListener is the gateway's HTTP listener: the outbound listener's filters (fault,
// router; RDS over ADS) and the limits every HTTP listener has (hcmListener).
func gatewayListener() proto.Message {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: GatewayListenerName,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource: adsSource(), RouteConfigName: GatewayRouteName}},
		HttpFilters: []*hcmv3.HttpFilter{
			httpFilter(contract.FaultFilterName, &faultv3.HTTPFault{}),
			httpFilter(contract.RouterFilterName, &routerv3.Router{}),
		},
	}
	return hcmListener(GatewayListenerName, "0.0.0.0", GatewayPort, corev3.TrafficDirection_OUTBOUND, hcm)
}

// gatewaySnapshot assembles the gateway view's snapshot (see the comment at the top).
func (r *Result) gatewaySnapshot(v View) (*cachev3.Snapshot, error) {
	sh := r.hashes()
	clusters := append([]types.Resource(nil), asResources(r.Clusters)...)
	var extraC, extraS []proto.Message
	if r.needsQueue(v) {
		c, s := r.queueCluster(v)
		extraC = append(extraC, c)
		if s != nil {
			extraS = append(extraS, s)
		}
	}
	l := gatewayListener()
	for _, m := range append(append([]proto.Message{l}, extraC...), extraS...) {
		if err := m.(interface{ Validate() error }).Validate(); err != nil {
			return nil, fmt.Errorf("gateway view: %w", err)
		}
	}
	for _, m := range extraC {
		clusters = append(clusters, m)
	}
	rc := r.gatewayRouteConfig()
	snap := &cachev3.Snapshot{}
	set := func(t string, ver string, items []types.Resource) {
		snap.Resources[cachev3.GetResponseType(t)] = cachev3.NewResources(ver, items)
	}
	set(resourcev3.ClusterType, version(sh.clusters, hashAll(extraC)), clusters)
	// The gateway gets no redis pools: its endpoints are the group every such view shares,
	// which the EDS fast path (eds.go) updates in place.
	snap.Resources[cachev3.GetResponseType(resourcev3.EndpointType)] = r.sharedEndpoints()
	set(resourcev3.ListenerType, version(hashOf(l)), []types.Resource{l})
	set(resourcev3.RouteType, rc.ver, rc.v)
	set(resourcev3.SecretType, version(hashAll(extraS)), asResources(extraS))
	if err := snap.Consistent(); err != nil {
		return nil, fmt.Errorf("gateway view: snapshot is not consistent: %w", err)
	}
	return snap, nil
}
