package xds

import (
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"k8s.io/apimachinery/pkg/types"
)

// Drained reports whether every connected sidecar has ACKed the endpoints of a snapshot in
// which function fn has no endpoint taking new requests, so its last pod can go without a
// caller still sending to it (positive hand-off, architecture decision 6). It satisfies the
// MeshFunction controller's Handoff interface. With no snapshot yet it answers false.
func (s *Server) Drained(fn types.NamespacedName) bool {
	res := s.cache.Result()
	if res == nil || res.FunctionServing(fn.Namespace, fn.Name) {
		return false
	}
	for _, n := range s.tracker.Nodes() {
		want := s.cache.Versions(n.View)[resourcev3.EndpointType]
		if want != "" && n.Acked[resourcev3.EndpointType] != want {
			return false
		}
	}
	return true
}
