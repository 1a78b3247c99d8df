package xds

import (
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

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
	view   snapshot.View
	synced bool
	// rejections are "<node ID>: <error>" by the type NACKed at its current version.
	rejections map[string]string
}

// redisTypes are the types a RedisProxy pool's resources travel in (listener, cluster,
// endpoints, password secrets): a sidecar's NACK of its route configurations says nothing
// about its pools.
var redisTypes = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.SecretType}

// policyTypes: a MeshPolicy travels in the inbound listeners of the views it selects.
var policyTypes = []string{resourcev3.ListenerType}

// typesOf are the types an object's resources travel in. Routes and functions reach every
// type (the outbound listener's chains, routes, clusters and endpoints).
func typesOf(k snapshot.ObjectKey) []string {
	if k.Kind == snapshot.KindRedisProxy {
		return redisTypes
	}
	if k.Kind == snapshot.KindMeshPolicy {
		return policyTypes
	}
	return Types
}

// Sync computes, for every object of res, how many subscribed sidecars run its current
// version. A sidecar runs it once it has ACKed its view's current snapshot (which holds
// every object's current generation); it rejected it if it NACKed a type at that version.
// It is pure given its arguments.
func Sync(res *snapshot.Result, nodes []NodeState, vs VersionSource) map[snapshot.ObjectKey]SyncStatus {
	views := map[string]map[string]string{}
	per := make([]nodeSync, 0, len(nodes))
	for _, n := range nodes {
		want := n.Want
		if want == nil {
			key := n.View.Key()
			var ok bool
			if want, ok = views[key]; !ok {
				want = vs.Versions(n.View)
				views[key] = want
			}
		}
		ns := nodeSync{view: n.View, synced: len(want) > 0}
		for t, v := range want {
			if r, ok := n.Rejected[t]; ok && r.Version == v {
				if ns.rejections == nil {
					ns.rejections = map[string]string{}
				}
				ns.rejections[t] = n.ID + ": " + r.Error
				ns.synced = false
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
		all.add(ns, Types)
	}
	out := make(map[snapshot.ObjectKey]SyncStatus, len(res.Status))
	for k := range res.Status {
		if k.Kind != snapshot.KindRedisProxy && k.Kind != snapshot.KindMeshPolicy {
			out[k] = all
			continue
		}
		var s SyncStatus
		for _, ns := range per {
			if res.Includes(ns.view, k) {
				s.add(ns, typesOf(k))
			}
		}
		out[k] = s
	}
	return out
}

// add counts one sidecar that receives an object whose resources travel in types: it
// rejected the object only if it NACKed one of those types (in Types order, so the
// message shown does not depend on map order).
func (s *SyncStatus) add(ns nodeSync, types []string) {
	s.Subscribed++
	rejection := ""
	for _, t := range types {
		if r, ok := ns.rejections[t]; ok {
			rejection = r
			break
		}
	}
	switch {
	case rejection != "":
		s.Rejected++
		if s.LastRejection == "" {
			s.LastRejection = rejection
		}
	case ns.synced:
		s.Synced++
	}
}
