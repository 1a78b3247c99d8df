package snapshot

import (
	"crypto/sha256"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	corev1 "k8s.io/api/core/v1"

	"github.com/weftmesh/weft/contract"
)

// Every Service is in the mesh by default (issue 15): each port of each Service gets, with
// Istio's defaults, a virtual host in the route configuration named by the port (HTTP
// ports) or a tcp_proxy chain on the outbound listener matched on the ClusterIP and port
// (TCP ports); ports whose protocol is not declared get both, and the connection's first
// bytes decide. A MeshRoute or MeshFunction that claims the Service's host replaces its
// default virtual hosts.

// portCarriage is how a Service port is carried: HTTP, TCP, or sniffed (protocol.go says
// which HTTP version an HTTP port speaks upstream).
type portCarriage int

const (
	protoAuto portCarriage = iota // not declared: sniffed
	protoHTTP                     // HTTP/1.1, h2c, gRPC
	protoTCP                      // TCP, TLS and every other declared protocol
)

// httpProtocols and tcpProtocols are Istio's protocol names (appProtocol, or a port name
// "<proto>" or "<proto>-<suffix>"), lower-cased.
var (
	httpProtocols = map[string]bool{"http": true, "http2": true, "grpc": true, "grpc-web": true, "h2c": true, "kubernetes.io/h2c": true}
	tcpProtocols  = map[string]bool{"tcp": true, "tls": true, "https": true, "mongo": true, "mysql": true, "redis": true}
)

// protocolOf classifies a Service port by Istio's rules: appProtocol first, then the port
// name's prefix; anything else is sniffed.
func carriageOf(p corev1.ServicePort) portCarriage {
	classify := func(s string) (portCarriage, bool) {
		s = strings.ToLower(s)
		switch {
		case httpProtocols[s]:
			return protoHTTP, true
		case tcpProtocols[s]:
			return protoTCP, true
		}
		return protoAuto, false
	}
	if p.AppProtocol != nil {
		if pr, ok := classify(*p.AppProtocol); ok {
			return pr
		}
	}
	name, _, _ := strings.Cut(p.Name, "-")
	if pr, ok := classify(name); ok {
		return pr
	}
	return protoAuto
}

// serviceConnectTimeout is the connect timeout of a Service's default cluster: Istio's
// MeshConfig connectTimeout default (Envoy's own is 5 s).
const serviceConnectTimeout = 10 * time.Second

// defaultRetries is the retry policy of a default route: Istio's (retry.go), 2 retries on
// connect-failure, refused-stream, unavailable, cancelled and retriable-status-codes with
// no status code (503 left Istio's defaults in 2024), a different host each time.
var defaultRetries = func() *routev3.RetryPolicy {
	p := retryPolicy(implicitRetries, false)
	p.RetryOn = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
	p.RetriableStatusCodes = nil
	return p
}()

// tcpChain is one outbound tcp_proxy (or, for sniffed ports, tcp_proxy plus HTTP) chain.
type tcpChain struct {
	port     uint32
	prefixes []string // addresses, /32 or /128 each
	cluster  string
	sniff    bool // the port's protocol is not declared: HTTP goes to route config "<port>"
	name     string
}

// outboundPlan is what the outbound listener and the per-port route configurations are
// made of, besides the objects' virtual hosts.
type outboundPlan struct {
	httpPorts map[uint32]bool // ports declared HTTP on some Service: every connection is HTTP
	rcPorts   map[uint32]bool // ports that get a route configuration
	chains    []tcpChain
}

// serviceKey is the host key of a Service (hostKey of its short name in its namespace).
func serviceKey(svc *corev1.Service) string {
	return svc.Name + "." + svc.Namespace + ".svc.cluster.local"
}

// clusterIPs are the Service's virtual addresses; none for headless and ExternalName.
func clusterIPs(svc *corev1.Service) []string {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	var out []string
	for _, ip := range append([]string{svc.Spec.ClusterIP}, svc.Spec.ClusterIPs...) {
		if a, err := netip.ParseAddr(ip); err == nil {
			s := a.String()
			if len(out) == 0 || out[0] != s {
				out = append(out, s)
			}
		}
	}
	sort.Strings(out)
	return dedupStrings(out)
}

func dedupStrings(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

func hostPrefix(ip string) string {
	if strings.Contains(ip, ":") {
		return ip + "/128"
	}
	return ip + "/32"
}

// defaultServices adds the default virtual hosts, chains, clusters and endpoints of every
// Service whose host no object claimed. Headless Services route to where the caller's DNS
// lookup sent it (the passthrough cluster, as Istio does for headless Services: the caller
// picked the pod); ExternalName Services get name-only HTTP virtual hosts to the
// passthrough cluster (so REGISTRY_ONLY lets them through) and no TCP chain (no address to
// match).
func (t *translator) defaultServices(in *Input, claimed map[string]bool, plan *outboundPlan, res *Result,
	domains map[string]bool, clusters map[string]*clusterv3.Cluster, clas map[string]*endpointv3.ClusterLoadAssignment) {
	svcs := make([]*corev1.Service, 0, len(in.Services))
	for i := range in.Services {
		svcs = append(svcs, &in.Services[i])
	}
	sort.Slice(svcs, func(i, j int) bool {
		return nsName(svcs[i].Namespace, svcs[i].Name) < nsName(svcs[j].Namespace, svcs[j].Name)
	})
	for _, svc := range svcs {
		ips := clusterIPs(svc)
		external := svc.Spec.Type == corev1.ServiceTypeExternalName
		headless := !external && svc.Spec.ClusterIP == corev1.ClusterIPNone
		fqdn := serviceKey(svc)
		for _, sp := range svc.Spec.Ports {
			if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
				continue // UDP and SCTP are not captured
			}
			port := uint32(sp.Port)
			pr := carriageOf(sp)
			cluster := contract.DefaultServiceClusterName(sp.Port, svc.Name, svc.Namespace)
			if headless || external {
				cluster = contract.PassthroughClusterName
			} else {
				c := withMeshTLSMatches(edsCluster(cluster)) // cluster.go
				c.ConnectTimeout = durationpb.New(serviceConnectTimeout)
				unlimitedRetries(c)
				if pr != protoTCP {
					c = withPortProtocol(c, sp) // HTTP/2 upstream for grpc/http2 ports
				}
				clusters[cluster] = c
				clas[cluster] = t.ix.loadAssignment(cluster, t.ix.slices[nsName(svc.Namespace, svc.Name)], serviceFilter(sp))
			}
			if pr != protoTCP {
				plan.rcPorts[port] = true
			}
			if pr == protoHTTP {
				plan.httpPorts[port] = true
			}
			if pr != protoTCP && !claimed[fqdn] {
				g, l := hostDomains(svc.Name, svc.Namespace, []int32{sp.Port})
				for _, ip := range ips {
					g = append(g, ip, ip+":"+strconv.Itoa(int(sp.Port)))
				}
				rc := contract.RouteConfigName(port)
				name := fqdn + ":" + strconv.Itoa(int(sp.Port))
				route := &routev3.Route{
					Name:  "default",
					Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
					Action: &routev3.Route_Route{Route: &routev3.RouteAction{
						ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
						Timeout:          timeoutOf(0),
						RetryPolicy:      defaultRetries,
					}},
				}
				if cluster == contract.PassthroughClusterName {
					route.GetRoute().RetryPolicy = nil
				}
				routes := []*routev3.Route{route}
				res.addVHost(svc.Namespace, rc, name, g, l, routes, defaultRouteHash(route), domains)
			}
			if pr == protoHTTP || external {
				continue
			}
			ch := tcpChain{port: port, cluster: cluster, sniff: pr == protoAuto,
				name: svc.Namespace + "/" + svc.Name + ":" + strconv.Itoa(int(sp.Port))}
			addrs := ips
			if headless {
				addrs = t.endpointAddrs(svc)
			}
			for _, a := range addrs {
				ch.prefixes = append(ch.prefixes, hostPrefix(a))
			}
			if len(ch.prefixes) > 0 {
				plan.chains = append(plan.chains, ch)
			}
		}
	}
}

// endpointAddrs are the addresses of a headless Service's endpoints: a connection to one
// is matched to the Service's chain and passed through to it.
func (t *translator) endpointAddrs(svc *corev1.Service) []string {
	var out []string
	for _, es := range t.ix.slices[nsName(svc.Namespace, svc.Name)] {
		for _, e := range es.Endpoints {
			for _, a := range e.Addresses {
				if ip, err := netip.ParseAddr(a); err == nil {
					out = append(out, ip.String())
				}
			}
		}
	}
	sort.Strings(out)
	return dedupStrings(out)
}

// addVHost adds a virtual host to route configuration rc, with the domains no earlier
// virtual host of rc took (a domain in two virtual hosts would make the configuration
// invalid); local are the bare short names only namespace ns's sidecars see. A bare name
// is taken per namespace: Services "api" in two namespaces each keep "api" for their own
// namespace's callers (it used to go to the first one only, so the other namespace's
// callers fell through to passthrough). A global domain and a bare name never share a
// domain, since some sidecar would see both.
func (r *Result) addVHost(ns, rc, name string, global, local []string, routes []*routev3.Route, sum [32]byte, taken map[string]bool) {
	var gd []string
	for _, d := range global {
		if !taken[rc+"\x00local\x00"+d] {
			gd = append(gd, d)
		}
	}
	g := &routev3.VirtualHost{Name: name, Domains: freshIn(rc, gd, taken), Routes: routes}
	if len(g.Domains) == 0 {
		return
	}
	e := vhostEntry{ns: ns, rc: rc, global: g, gHash: vhostHash(g, sum)}
	var ld []string
	for _, d := range local {
		if !taken[rc+"\x00"+d] {
			ld = append(ld, d)
			taken[rc+"\x00local\x00"+d] = true
		}
	}
	if l := freshIn(rc+"\x00ns\x00"+ns, ld, taken); len(l) > 0 {
		lv := &routev3.VirtualHost{Name: name, Domains: append(append([]string(nil), g.Domains...), l...), Routes: routes}
		e.local, e.lHash = lv, vhostHash(lv, sum)
	}
	r.vhosts = append(r.vhosts, e)
}

// freshIn is fresh for the domains of one route configuration.
func freshIn(rc string, ds []string, taken map[string]bool) []string {
	var out []string
	for _, d := range ds {
		k := rc + "\x00" + d
		if !taken[k] {
			taken[k] = true
			out = append(out, d)
		}
	}
	return out
}

// hostPort is one route configuration a host's virtual host goes into, with its domains.
type hostPort struct {
	rc            string
	global, local []string
}

// serviceOfHost is the Service host h (of an object in namespace ns) names, if any.
func (t *translator) serviceOfHost(h, ns string) *corev1.Service {
	hns, name, inCluster, all := hostOwner(hostKey(h, ns))
	if !inCluster || all || name == "*" {
		return nil
	}
	return t.ix.services[nsName(hns, name)]
}

// hostRoutes lists the route configurations and domains of host h of an object in ns: for
// a Service's host, one per port of the Service that is not declared TCP, with the
// ClusterIP forms too (a caller by address must meet the same routes); otherwise route
// configuration "80" and those of the object's destination ports (destPorts), where
// callers reached such a host as "<host>:<port>" before route configurations were split
// by port.
func (t *translator) hostRoutes(h, ns string, destPorts []int32) []hostPort {
	var out []hostPort
	if svc := t.serviceOfHost(h, ns); svc != nil {
		ips := clusterIPs(svc)
		ports := append([]corev1.ServicePort(nil), svc.Spec.Ports...)
		sort.Slice(ports, func(i, j int) bool { return ports[i].Port < ports[j].Port })
		for _, sp := range ports {
			if (sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP) || carriageOf(sp) == protoTCP {
				continue
			}
			g, l := hostDomains(h, ns, []int32{sp.Port})
			for _, ip := range ips {
				g = append(g, ip, ip+":"+strconv.Itoa(int(sp.Port)))
			}
			out = append(out, hostPort{rc: contract.RouteConfigName(uint32(sp.Port)), global: g, local: l})
		}
	}
	if len(out) > 0 {
		return out
	}
	ports := map[int32]bool{contract.DefaultHTTPPort: true}
	for _, p := range destPorts {
		ports[p] = true
	}
	sorted := make([]int32, 0, len(ports))
	for p := range ports {
		sorted = append(sorted, p)
	}
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	for _, p := range sorted {
		g, l := hostDomains(h, ns, []int32{p})
		out = append(out, hostPort{rc: contract.RouteConfigName(uint32(p)), global: g, local: l})
	}
	return out
}

// defaultRouteHashes are the content hashes of the default route with no cluster, with and
// without retries: a default route differs from them only by its cluster, so its hash is
// one of these and the cluster name, exactly, without marshalling 10,000 routes.
var defaultRouteHashes = func() (h [2][32]byte) {
	for i, rp := range []*routev3.RetryPolicy{defaultRetries, nil} {
		h[i] = hashOf(&routev3.Route{Name: "default",
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{Timeout: timeoutOf(0), RetryPolicy: rp}}})
	}
	return h
}()

func defaultRouteHash(r *routev3.Route) [32]byte {
	i := 0
	if r.GetRoute().GetRetryPolicy() == nil {
		i = 1
	}
	h := sha256.New()
	h.Write(defaultRouteHashes[i][:])
	h.Write([]byte(r.GetRoute().GetCluster()))
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}
