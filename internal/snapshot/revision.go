package snapshot

import (
	"fmt"
	"math"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/utils/ptr"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
)

// Revisions (a MeshFunction with spec.traffic). The MeshFunction controller resolves
// spec.traffic into status.traffic (every target names a revision) and lists the kept
// revisions in status.revisions; translation reads those, so a split names only revisions
// that exist. Each revision gets a cluster function|<ns>/<revision> whose endpoints are the
// function's endpoints whose pod carries meshv1alpha1.LabelRevision=<revision>, and whose
// weft.dev/function metadata names the revision: a caller's sidecar holds calls per
// revision and its demand wakes that revision. The function's own host routes to the
// revisions by status.traffic's percents (weighted_clusters); a tagged target's host
// <tag>-<function> routes to its revision only.

// servesRevisions reports whether fn's calls go to its revisions: it has spec.traffic and
// the controller has resolved it. Until then its calls go to the function's cluster, whose
// endpoints are every pod of the function.
func servesRevisions(fn *meshv1alpha1.MeshFunction) bool {
	return len(fn.Spec.Traffic) > 0 && len(fn.Status.Traffic) > 0
}

// revisionGoingToZero reports that the controller has announced zero for revision rs of fn.
func revisionGoingToZero(fn *meshv1alpha1.MeshFunction, rs *meshv1alpha1.RevisionStatus) bool {
	return fn.Status.ObservedGeneration > 0 && rs.DesiredReplicas == 0
}

// revisionCluster is one revision's cluster: the function's cluster with metadata naming
// the revision.
func revisionCluster(fn *meshv1alpha1.MeshFunction, rev string) *clusterv3.Cluster {
	c := functionCluster(fn)
	c.Name = contract.FunctionClusterName(fn.Namespace, rev)
	c.EdsClusterConfig.ServiceName = c.Name
	m := functionMeta(fn)
	m.Revision = rev
	c.Metadata = metadata(contract.FunctionMetadataKey, m.Encode())
	return c
}

// revisions adds fn's revision clusters to b and sets the function's routes to split
// between them.
func (t *translator) revisions(fn *meshv1alpha1.MeshFunction, b *built, f endpointFilter) {
	slices := t.ix.slices[nsName(fn.Namespace, fn.Name)]
	known := map[string]bool{}
	for _, rs := range fn.Status.Revisions {
		name := contract.FunctionClusterName(fn.Namespace, rs.Name)
		rf := f
		rf.subset = map[string]string{meshv1alpha1.LabelRevision: rs.Name}
		cla := t.ix.loadAssignment(name, slices, rf)
		// The controller announced zero for this revision: drain it first (hand-off).
		if revisionGoingToZero(fn, &rs) {
			drainAll(cla)
		}
		b.addCluster(revisionCluster(fn, rs.Name), cla)
		known[rs.Name] = true
	}
	for _, ts := range fn.Status.Traffic {
		if !known[ts.RevisionName] {
			// status.revisions and status.traffic are written together; a revision missing
			// here is a status written by hand. Its share answers 503 with why.
			name := contract.FunctionClusterName(fn.Namespace, ts.RevisionName)
			b.addCluster(unresolvedCluster(name, fmt.Sprintf("revision %s of MeshFunction %s/%s does not exist", ts.RevisionName, fn.Namespace, fn.Name)))
			known[ts.RevisionName] = true
		}
	}
	b.routes = []*routev3.Route{splitRoute(fn, trafficOf(fn))}
}

// tagHosts are the hosts of fn's tagged targets, each routing to its revision only.
func (t *translator) tagHosts(fn *meshv1alpha1.MeshFunction, b *built) []hostEntry {
	var hosts []hostEntry
	for _, ts := range fn.Status.Traffic {
		if ts.Tag == "" {
			continue
		}
		h := ts.Tag + "-" + fn.Name
		if t.nameTaken(b, fn.UID, h) {
			continue
		}
		cluster := contract.FunctionClusterName(fn.Namespace, ts.RevisionName)
		hosts = append(hosts, hostEntry{host: h, key: hostKey(h, fn.Namespace), ports: t.functionHostRoutes(h, fn.Namespace),
			routes: []*routev3.Route{functionRoute(fn, "tag-"+ts.Tag, cluster)}})
	}
	return hosts
}

// trafficOf is fn's split: status.traffic's percents summed per revision, in the order
// revisions first appear, revisions at 0 % left out (a tag still reaches them). Callers'
// routes use it, and the function's own cluster carries it (FunctionMeta.Traffic) for its
// pods, which dispatch queued calls by it.
func trafficOf(fn *meshv1alpha1.MeshFunction) []contract.RevisionTraffic {
	var out []contract.RevisionTraffic
	at := map[string]int{}
	for _, ts := range fn.Status.Traffic {
		pct := ptr.Deref(ts.Percent, 0)
		if pct <= 0 || pct > 100 {
			continue
		}
		if i, ok := at[ts.RevisionName]; ok {
			out[i].Percent += int32(pct)
			continue
		}
		at[ts.RevisionName] = len(out)
		out = append(out, contract.RevisionTraffic{Revision: ts.RevisionName, Percent: int32(pct)})
	}
	return out
}

// splitFunctions spreads each weighted cluster of a MeshRoute rule that is a function
// serving revisions over its revisions' clusters by the function's split, so a route's
// destination `function: <name>` follows the split as the function's own host does, and
// each revision is held for and woken on its own. A destination of weight w gives revision
// r of percent p the weight w×p, every other destination keeps its share as w×(sum of
// percents, 100); then all weights are divided by their greatest common divisor (a lone
// function destination at 90/10 reads 9 and 1). A destination's header edits travel with
// each of its revisions' shares.
func (t *translator) splitFunctions(cws []*routev3.WeightedCluster_ClusterWeight) []*routev3.WeightedCluster_ClusterWeight {
	splits := make([][]contract.RevisionTraffic, len(cws))
	found := false
	for i, cw := range cws {
		key, ok := strings.CutPrefix(cw.GetName(), functionClusterPrefix)
		if !ok {
			continue
		}
		if fn, ok := t.ix.functions[key]; ok && servesRevisions(fn) {
			if tr := trafficOf(fn); contract.TrafficTotal(tr) > 0 {
				splits[i], found = tr, true
			}
		}
	}
	if !found {
		return cws
	}
	var out []*routev3.WeightedCluster_ClusterWeight
	for i, cw := range cws {
		w := uint64(cw.GetWeight().GetValue())
		if splits[i] == nil {
			c := proto.Clone(cw).(*routev3.WeightedCluster_ClusterWeight)
			c.Weight = wrapperspb.UInt32(uint32(w * 100))
			out = append(out, c)
			continue
		}
		ns, _, _ := strings.Cut(strings.TrimPrefix(cw.GetName(), functionClusterPrefix), "/")
		total := uint64(contract.TrafficTotal(splits[i]))
		for _, r := range splits[i] {
			c := proto.Clone(cw).(*routev3.WeightedCluster_ClusterWeight)
			c.Name = contract.FunctionClusterName(ns, r.Revision)
			// Percents add up to 100 (CEL); scaled to 100 anyway so a split written by hand
			// keeps the destination's share.
			c.Weight = wrapperspb.UInt32(uint32(w * uint64(r.Percent) * 100 / total))
			out = append(out, c)
		}
	}
	g, sum := uint32(0), uint64(0)
	for _, c := range out {
		g = gcd(g, c.GetWeight().GetValue())
		sum += uint64(c.GetWeight().GetValue())
	}
	// Envoy wants the weights' sum to fit 32 bits; only weights near the API's maximum
	// (1,000,000) on many destinations come close, and they are scaled down to fit.
	div := max(uint64(g), (sum+math.MaxUint32-1)/math.MaxUint32)
	if div > 1 {
		for _, c := range out {
			c.Weight = wrapperspb.UInt32(uint32(max(uint64(c.GetWeight().GetValue())/div, 1)))
		}
	}
	return out
}

// functionClusterPrefix starts every function's and revision's cluster name.
var functionClusterPrefix = strings.TrimSuffix(contract.FunctionClusterName("", ""), "/")

func gcd(a, b uint32) uint32 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// splitRoute sends the function's calls to one revision's cluster, or splits them between
// several by percent; revisions at 0 % are left out (a tag still reaches them).
func splitRoute(fn *meshv1alpha1.MeshFunction, split []contract.RevisionTraffic) *routev3.Route {
	var wc []*routev3.WeightedCluster_ClusterWeight
	for _, r := range split {
		wc = append(wc, &routev3.WeightedCluster_ClusterWeight{
			Name: contract.FunctionClusterName(fn.Namespace, r.Revision), Weight: wrapperspb.UInt32(uint32(r.Percent))})
	}
	switch len(wc) {
	case 0: // only a status written by hand: CEL makes spec.traffic's percents add up to 100
		return functionRoute(fn, "default", contract.FunctionClusterName(fn.Namespace, fn.Name))
	case 1:
		return functionRoute(fn, "default", wc[0].Name)
	}
	r := functionRoute(fn, "default", "")
	r.GetRoute().ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{Clusters: wc}}
	return r
}
