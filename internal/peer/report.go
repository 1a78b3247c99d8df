package peer

import (
	"strings"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/snapshot"
	"github.com/weftmesh/weft/internal/xds"
)

// Snapshots is what a report reads of a replica's xDS cache. *xds.Cache implements it.
type Snapshots interface {
	Versions(v snapshot.View) map[string]string
	Result() *snapshot.Result
}

// ReportOf is a replica's report: its sidecars, each with the versions its view's current
// snapshot has here (Want), and the functions that snapshot still sends new requests to.
// The serving set is read before the versions, so a report never pairs a newer serving set
// with older versions.
func ReportOf(nodes []xds.NodeState, c Snapshots) Report {
	var r Report
	if res := c.Result(); res != nil {
		prefix := strings.TrimSuffix(contract.FunctionClusterName("", ""), "/")
		for _, cla := range res.Endpoints {
			rest, ok := strings.CutPrefix(cla.GetClusterName(), prefix)
			if !ok {
				continue
			}
			if ns, name, ok := strings.Cut(rest, "/"); ok && res.FunctionServing(ns, name) {
				r.Serving = append(r.Serving, rest)
			}
		}
	}
	views := map[string]map[string]string{}
	for _, n := range nodes {
		key := n.View.Key()
		want, ok := views[key]
		if !ok {
			want = c.Versions(n.View)
			views[key] = want
		}
		n.Want = want
		if n.Want == nil {
			n.Want = map[string]string{} // known to have nothing yet: never synced
		}
		r.Nodes = append(r.Nodes, n)
	}
	return r
}
