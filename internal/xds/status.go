package xds

import (
	"github.com/weftmesh/weft/internal/snapshot"
)

// SyncStatus is how the sidecars that receive one object took its current version.
type SyncStatus struct {
	// Subscribed sidecars receive the object.
	Subscribed int32
	// Synced have ACKed, for every type, the version of their view's current snapshot.
	Synced int32
	// Rejected NACKed a type at its current version.
	Rejected int32
	// LastRejection is "<node ID>: <error>" of one rejecting sidecar (the first by ID).
	LastRejection string
}

// VersionSource gives the versions of a view's current snapshot.
type VersionSource interface {
	Versions(v snapshot.View) map[string]string
}

type nodeSync struct {
	view      snapshot.View
	synced    bool
	rejection string // non-empty: rejected
}

// Sync computes, for every object of res, how many subscribed sidecars run its current
// version. A sidecar runs it once it has ACKed its view's current snapshot (which holds
// every object's current generation); it rejected it if it NACKed a type at that version.
// It is pure given its arguments.
func Sync(res *snapshot.Result, nodes []NodeState, vs VersionSource) map[snapshot.ObjectKey]SyncStatus {
	views := map[string]map[string]string{}
	per := make([]nodeSync, 0, len(nodes))
	for _, n := range nodes {
		key := n.View.Key()
		want, ok := views[key]
		if !ok {
			want = vs.Versions(n.View)
			views[key] = want
		}
		ns := nodeSync{view: n.View, synced: len(want) > 0}
		for t, v := range want {
			if r, ok := n.Rejected[t]; ok && r.Version == v {
				ns.rejection = n.ID + ": " + r.Error
				ns.synced = false
				break
			}
			if n.Acked[t] != v {
				ns.synced = false
			}
		}
		per = append(per, ns)
	}
	// Routes and functions go to every sidecar: count once.
	var all SyncStatus
	for _, ns := range per {
		all.add(ns)
	}
	out := make(map[snapshot.ObjectKey]SyncStatus, len(res.Status))
	for k := range res.Status {
		if k.Kind != snapshot.KindRedisProxy {
			out[k] = all
			continue
		}
		var s SyncStatus
		for _, ns := range per {
			if res.Includes(ns.view, k) {
				s.add(ns)
			}
		}
		out[k] = s
	}
	return out
}

func (s *SyncStatus) add(ns nodeSync) {
	s.Subscribed++
	switch {
	case ns.rejection != "":
		s.Rejected++
		if s.LastRejection == "" {
			s.LastRejection = ns.rejection
		}
	case ns.synced:
		s.Synced++
	}
}
