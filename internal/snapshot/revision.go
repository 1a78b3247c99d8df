package snapshot

import (
	"fmt"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
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

// revisions adds fn's revision clusters to b, sets the function's routes to split between
// them, and returns the hosts of its tagged targets, each routing to its revision only.
func (t *translator) revisions(fn *meshv1alpha1.MeshFunction, b *built, f endpointFilter) []hostEntry {
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
	weights := map[string]uint32{}
	var order []string
	for _, ts := range fn.Status.Traffic {
		if !known[ts.RevisionName] {
			// status.revisions and status.traffic are written together; a revision missing
			// here is a status written by hand. Its share answers 503 with why.
			name := contract.FunctionClusterName(fn.Namespace, ts.RevisionName)
			b.addCluster(unresolvedCluster(name, fmt.Sprintf("revision %s of MeshFunction %s/%s does not exist", ts.RevisionName, fn.Namespace, fn.Name)))
			known[ts.RevisionName] = true
		}
		if _, seen := weights[ts.RevisionName]; !seen {
			order = append(order, ts.RevisionName)
		}
		weights[ts.RevisionName] += uint32(ptr.Deref(ts.Percent, 0))
	}
	b.routes = []*routev3.Route{splitRoute(fn, order, weights)}

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

// splitRoute sends the function's calls to one revision's cluster, or splits them between
// several by percent; revisions at 0 % are left out (a tag still reaches them).
func splitRoute(fn *meshv1alpha1.MeshFunction, order []string, weights map[string]uint32) *routev3.Route {
	var wc []*routev3.WeightedCluster_ClusterWeight
	for _, rev := range order {
		if weights[rev] > 0 {
			wc = append(wc, &routev3.WeightedCluster_ClusterWeight{
				Name: contract.FunctionClusterName(fn.Namespace, rev), Weight: wrapperspb.UInt32(weights[rev])})
		}
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
