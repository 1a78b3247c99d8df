package snapshot

import (
	"fmt"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
)

// built is one object's contribution to the outbound routes, before host conflicts are
// settled: its hosts, the Envoy routes every one of its virtual hosts carries, and the
// clusters and endpoints those routes need.
type built struct {
	key      ObjectKey
	created  metav1.Time
	hosts    []hostEntry
	routes   []*routev3.Route
	clusters []*clusterv3.Cluster
	clas     []*endpointv3.ClusterLoadAssignment
	p        *problems
	// routesHash is the content hash of routes, computed once when a host is accepted.
	routesHash *[32]byte
}

type hostEntry struct {
	host  string
	key   string
	ports []hostPort
	// routes, when set, are this host's own instead of the object's (a revision's tag).
	routes []*routev3.Route
}

func (b *built) addCluster(c *clusterv3.Cluster, cla *endpointv3.ClusterLoadAssignment) {
	for _, have := range b.clusters {
		if have.Name == c.Name {
			return
		}
	}
	b.clusters = append(b.clusters, c)
	b.clas = append(b.clas, cla)
}

// resolved is a destination turned into a cluster name, or the reason it could not be.
type resolved struct {
	cluster string
	port    int32
	reason  string
	// notPermitted: the destination is in another namespace that grants nothing.
	notPermitted bool
}

// destination resolves a Service (port, subset) or MeshFunction destination of mr and adds
// the cluster it needs to b.
func (t *translator) destination(mr *meshv1alpha1.MeshRoute, d meshv1alpha1.Destination, b *built) resolved {
	ns := d.Namespace
	if ns == "" {
		ns = mr.Namespace
	}
	if ns != mr.Namespace {
		kind, group, target := KindService, CoreGroup, d.Service
		if d.Function != "" {
			kind, group, target = KindMeshFunction, WeftGroup, d.Function
		}
		if !t.ix.permitted(KindMeshRoute, mr.Namespace, group, kind, ns, target) {
			return resolved{cluster: "unpermitted|" + ns + "/" + target, notPermitted: true,
				reason: fmt.Sprintf("%s %s/%s is in another namespace, and no ReferenceGrant there allows MeshRoutes from %s to use it; %s",
					kind, ns, target, mr.Namespace, grantHint(KindMeshRoute, mr.Namespace, group, kind, ns, target))}
		}
	}
	if d.Function != "" {
		name := contract.FunctionClusterName(ns, d.Function)
		if _, ok := t.ix.functions[nsName(ns, d.Function)]; !ok {
			return resolved{cluster: name, reason: fmt.Sprintf("MeshFunction %s/%s not found; create it or fix the destination", ns, d.Function)}
		}
		return resolved{cluster: name}
	}
	svc, ok := t.ix.services[nsName(ns, d.Service)]
	if !ok {
		return resolved{cluster: contract.ServiceClusterName(d.Port, d.Subset, d.Service, ns, mr.Namespace, mr.Name),
			reason: fmt.Sprintf("Service %s/%s not found; create it or fix the destination", ns, d.Service)}
	}
	sp, why := servicePort(svc, d.Port)
	if why != "" {
		return resolved{cluster: contract.ServiceClusterName(d.Port, d.Subset, d.Service, ns, mr.Namespace, mr.Name),
			reason: fmt.Sprintf("Service %s/%s %s", ns, d.Service, why)}
	}
	name := contract.ServiceClusterName(sp.Port, d.Subset, d.Service, ns, mr.Namespace, mr.Name)
	f := serviceFilter(sp)
	if d.Subset != "" {
		var found *meshv1alpha1.Subset
		for i := range mr.Spec.Subsets {
			if mr.Spec.Subsets[i].Name == d.Subset {
				found = &mr.Spec.Subsets[i]
			}
		}
		if found == nil {
			return resolved{cluster: name, port: sp.Port,
				reason: fmt.Sprintf("subset %q is not defined in spec.subsets; add it or fix the destination", d.Subset)}
		}
		f.subset = found.Labels
	}
	b.addCluster(withPortProtocol(serviceCluster(name, mr.Spec.TrafficPolicy), sp), t.ix.loadAssignment(name, t.ix.slices[nsName(ns, d.Service)], f))
	return resolved{cluster: name, port: sp.Port}
}

// meshRoute translates one MeshRoute: one Envoy route per match, in rule order.
func (t *translator) meshRoute(mr *meshv1alpha1.MeshRoute) *built {
	key := ObjectKey{KindMeshRoute, mr.Namespace, mr.Name}
	b := &built{key: key, created: mr.CreationTimestamp, p: &problems{}}
	// Fields stored before the CRD could refuse them (issue 13) decode as unreadable instead
	// of failing every list; such a route claims no host until fixed.
	if bad := mr.UnreadableFields(); len(bad) > 0 {
		for _, f := range bad {
			b.p.invalidf("%s; the route is left out until you fix it", f)
		}
		return b
	}
	if bad := headerProblems(mr); len(bad) > 0 {
		for _, f := range bad {
			b.p.invalidf("%s; every sidecar would refuse it, so the route is left out until you fix it", f)
		}
		return b
	}
	var ch *meshv1alpha1.ConsistentHash
	if tp := mr.Spec.TrafficPolicy; tp != nil && tp.LoadBalancer != nil {
		ch = tp.LoadBalancer.ConsistentHash
	}
	flagFunctionPolicy(mr, b)
	destPorts := map[int32]bool{}
	owner := metadata(contract.RouteMetadataKey, contract.RouteMeta{Owner: key.String()}.Encode())
rules:
	for i := range mr.Spec.HTTP {
		rule := &mr.Spec.HTTP[i]
		base, ok := t.ruleAction(mr, rule, i, ch, b, destPorts)
		if !ok {
			continue
		}
		base.Metadata = owner
		matches := rule.Match
		if len(matches) == 0 {
			matches = []meshv1alpha1.HTTPMatch{{}}
		}
		for j := range matches {
			m, err := routeMatch(&matches[j])
			if err != nil {
				b.p.invalidf("rule %s match %d: %v; the match is left out until you fix it", ruleName(rule, i), j, err)
				continue
			}
			r := &routev3.Route{
				Name:                    fmt.Sprintf("%s/%s/%s/%d", mr.Namespace, mr.Name, ruleName(rule, i), j),
				Match:                   m,
				Action:                  base.Action,
				Metadata:                base.Metadata,
				RequestHeadersToAdd:     base.RequestHeadersToAdd,
				RequestHeadersToRemove:  base.RequestHeadersToRemove,
				ResponseHeadersToAdd:    base.ResponseHeadersToAdd,
				ResponseHeadersToRemove: base.ResponseHeadersToRemove,
				TypedPerFilterConfig:    base.TypedPerFilterConfig,
			}
			if err := r.Validate(); err != nil {
				b.p.invalidf("rule %s match %d: %v; the match is left out until you fix it", ruleName(rule, i), j, err)
				continue
			}
			b.routes = append(b.routes, r)
			if isCatchAll(m) {
				// Later rules could never match: leave them out, and warn, since the
				// author most likely meant the catch-all to come last.
				var dead []string
				if j+1 < len(matches) {
					dead = append(dead, fmt.Sprintf("matches %d-%d of rule %s", j+1, len(matches)-1, ruleName(rule, i)))
				}
				for k := i + 1; k < len(mr.Spec.HTTP); k++ {
					dead = append(dead, "rule "+ruleName(&mr.Spec.HTTP[k], k))
				}
				if len(dead) > 0 {
					b.p.shadowedf("rule %s match %d matches every request, so %s can never match and are left out; move the catch-all rule last",
						ruleName(rule, i), j, strings.Join(dead, ", "))
				}
				break rules
			}
		}
	}
	dest := make([]int32, 0, len(destPorts))
	for p := range destPorts {
		dest = append(dest, p)
	}
	for _, h := range mr.Spec.Hosts {
		b.hosts = append(b.hosts, hostEntry{host: h, key: hostKey(h, mr.Namespace), ports: t.hostRoutes(h, mr.Namespace, dest)})
	}
	return b
}

// ruleAction builds the action part of a rule's routes (shared by its matches). ok is
// false when the rule cannot be emitted at all.
func (t *translator) ruleAction(mr *meshv1alpha1.MeshRoute, rule *meshv1alpha1.HTTPRule, idx int, ch *meshv1alpha1.ConsistentHash,
	b *built, destPorts map[int32]bool) (*routev3.Route, bool) {
	r := &routev3.Route{}
	var hostRewrite string
	if h := rule.Headers; h != nil {
		r.RequestHeadersToAdd, r.RequestHeadersToRemove, hostRewrite = headerOps(h.Request)
		r.ResponseHeadersToAdd, r.ResponseHeadersToRemove, _ = headerOps(h.Response)
	}
	if f := faultConfig(rule.Fault); f != nil {
		r.TypedPerFilterConfig = map[string]*anypb.Any{contract.FaultFilterName: f}
	}
	switch {
	case rule.Redirect != nil:
		r.Action = &routev3.Route_Redirect{Redirect: redirectAction(rule.Redirect)}
		return r, true
	case rule.DirectResponse != nil:
		r.Action = directResponse(uint32(rule.DirectResponse.Status), rule.DirectResponse.Body)
		return r, true
	case len(rule.Route) == 0:
		b.p.invalidf("rule %s has no route, redirect or directResponse", ruleName(rule, idx))
		return nil, false
	}
	d := t.ruleDestinations(mr, rule, b, destPorts)
	if len(d.clusters) == 0 {
		b.p.invalidf("rule %s: every destination has weight 0", ruleName(rule, idx))
		return nil, false
	}
	if len(d.reasons) == len(d.clusters) {
		// Nothing resolves: answer 503 saying what is missing instead of a dead cluster.
		r.Action = directResponse(503, fmt.Sprintf("weft: %s %s/%s: %s\n", KindMeshRoute, mr.Namespace, mr.Name, strings.Join(d.reasons, "; ")))
		r.TypedPerFilterConfig = nil
		return r, true
	}
	for _, u := range d.unresolved {
		// A weighted share that cannot be resolved answers 503 with the reason.
		b.addCluster(unresolvedCluster(u.cluster, fmt.Sprintf("%s %s/%s: %s", KindMeshRoute, mr.Namespace, mr.Name, u.reason)))
	}
	ra := &routev3.RouteAction{Timeout: ruleTimeout(rule, d.fnTimeout), HashPolicy: hashPolicy(ch)}
	setClusters(r, ra, d.clusters)
	retries := rule.Retries
	if retries == nil && rule.Fault == nil {
		// Istio's mesh default: a rule without retries still retries twice on failures
		// where the request never reached the app (or got 503), unless it injects faults.
		retries = implicitRetries
	}
	ra.RetryPolicy = retryPolicy(retries, ch != nil)
	if rw := rule.Rewrite; rw != nil {
		if rw.URIPrefix != nil {
			ra.PrefixRewrite = *rw.URIPrefix
		}
		if rw.Authority != nil {
			hostRewrite = *rw.Authority
		}
	}
	if hostRewrite != "" {
		ra.HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: hostRewrite}
	}
	ra.RequestMirrorPolicies = t.mirrorPolicies(mr, rule.Mirror, b)
	r.Action = &routev3.Route_Route{Route: ra}
	return r, true
}

// ruleDests is what a rule's weighted destinations translate to.
type ruleDests struct {
	// clusters are the destinations of weight above zero, in the rule's order.
	clusters []*routev3.WeightedCluster_ClusterWeight
	// reasons say why each unresolved destination is; unresolved are those destinations.
	reasons    []string
	unresolved []resolved
	// fnTimeout is the longest timeout of the rule's function destinations.
	fnTimeout time.Duration
}

// ruleDestinations resolves the rule's destinations of weight above zero, recording a
// problem for each that does not resolve and the port of each that does in destPorts.
func (t *translator) ruleDestinations(mr *meshv1alpha1.MeshRoute, rule *meshv1alpha1.HTTPRule, b *built, destPorts map[int32]bool) ruleDests {
	var out ruleDests
	for _, d := range rule.Route {
		if d.Weight <= 0 {
			continue
		}
		if d.Destination.Function != "" {
			ns := d.Destination.Namespace
			if ns == "" {
				ns = mr.Namespace
			}
			if fn, ok := t.ix.functions[nsName(ns, d.Destination.Function)]; ok {
				out.fnTimeout = max(out.fnTimeout, functionTimeout(fn))
			}
		}
		res := t.destination(mr, d.Destination, b)
		if res.notPermitted {
			b.p.refNotPermitted("%s", res.reason)
			out.reasons = append(out.reasons, res.reason)
			out.unresolved = append(out.unresolved, res)
		} else if res.reason != "" {
			b.p.missingf("%s", res.reason)
			out.reasons = append(out.reasons, res.reason)
			out.unresolved = append(out.unresolved, res)
		} else if res.port != 0 {
			destPorts[res.port] = true
		}
		cw := &routev3.WeightedCluster_ClusterWeight{Name: res.cluster, Weight: wrapperspb.UInt32(uint32(d.Weight))}
		if d.Headers != nil {
			// Carried on the weighted cluster, so they apply only when this destination is
			// picked; a single destination becomes a plain cluster route below and the
			// edits move to the route.
			cw.RequestHeadersToAdd, cw.RequestHeadersToRemove, _ = headerOps(d.Headers.Request)
			cw.ResponseHeadersToAdd, cw.ResponseHeadersToRemove, _ = headerOps(d.Headers.Response)
		}
		out.clusters = append(out.clusters, cw)
	}
	out.clusters = t.splitFunctions(out.clusters) // revision.go
	return out
}

// ruleTimeout is the route timeout: the rule's, else the longest of its function
// destinations', else none.
func ruleTimeout(rule *meshv1alpha1.HTTPRule, fnTimeout time.Duration) *durationpb.Duration {
	switch {
	case rule.Timeout != nil:
		return timeoutOf(rule.Timeout.Duration)
	case fnTimeout > 0:
		// A call to a function is bounded by the function's timeout (300 s by default,
		// Knative's revision timeout) through a MeshRoute as through its own name, so the
		// caller's sidecar never waits on it forever (issue 12 item 7).
		return timeoutOf(fnTimeout)
	}
	return timeoutOf(0)
}

// setClusters points ra at the rule's clusters: a plain cluster for one destination,
// whose header edits move onto r, else weighted clusters.
func setClusters(r *routev3.Route, ra *routev3.RouteAction, clusters []*routev3.WeightedCluster_ClusterWeight) {
	if len(clusters) != 1 {
		ra.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{Clusters: clusters}}
		return
	}
	only := clusters[0]
	ra.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: only.Name}
	// The destination's edits come before the rule's, as on a weighted cluster.
	r.RequestHeadersToAdd = append(only.RequestHeadersToAdd, r.RequestHeadersToAdd...)
	r.RequestHeadersToRemove = append(only.RequestHeadersToRemove, r.RequestHeadersToRemove...)
	r.ResponseHeadersToAdd = append(only.ResponseHeadersToAdd, r.ResponseHeadersToAdd...)
	r.ResponseHeadersToRemove = append(only.ResponseHeadersToRemove, r.ResponseHeadersToRemove...)
}

// mirrorPolicies is the rule's mirror, nil when it has none or its destination does not
// resolve (a problem is recorded).
func (t *translator) mirrorPolicies(mr *meshv1alpha1.MeshRoute, m *meshv1alpha1.HTTPMirror, b *built) []*routev3.RouteAction_RequestMirrorPolicy {
	if m == nil || m.Percentage <= 0 {
		return nil
	}
	res := t.destination(mr, m.Destination, b)
	if res.notPermitted {
		b.p.refNotPermitted("mirror: %s", res.reason)
		return nil
	}
	if res.reason != "" {
		b.p.missingf("mirror: %s", res.reason)
		return nil
	}
	return []*routev3.RouteAction_RequestMirrorPolicy{{
		Cluster:         res.cluster,
		RuntimeFraction: &corev3.RuntimeFractionalPercent{DefaultValue: perMillion(m.Percentage)},
	}}
}

func directResponse(status uint32, body string) *routev3.Route_DirectResponse {
	a := &routev3.DirectResponseAction{Status: status}
	if body != "" {
		a.Body = inlineString(body)
	}
	return &routev3.Route_DirectResponse{DirectResponse: a}
}
