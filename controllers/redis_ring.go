package controllers

import (
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
)

// ring is what decides which server a Redis key lives on: the servers' names and weights
// (ketama places a server's points by its name), the hash, the distribution and the hash tag.
// Changing any of them on a pool that serves moves keys to servers that do not hold them.
type ring struct {
	servers, hash, distribution, hashTag, serviceRef string
}

func ringOf(rp *meshv1alpha1.RedisProxy) ring {
	var names []string
	for _, s := range rp.Spec.Servers {
		w := s.Weight
		if w == 0 {
			w = 1
		}
		names = append(names, fmt.Sprintf("%s(weight %d)", s.Name, w))
	}
	slices.Sort(names)
	r := ring{servers: strings.Join(names, ", "), hash: string(rp.Spec.Sharding.Hash), distribution: string(rp.Spec.Sharding.Distribution),
		hashTag: rp.Spec.Sharding.HashTag}
	if rp.Spec.ServiceRef != nil {
		r.serviceRef = rp.Spec.ServiceRef.Name
	}
	return r
}

// diff names what changed from r to n, or "" when nothing did.
func (r ring) diff(n ring) string {
	var out []string
	for _, f := range []struct{ what, a, b string }{
		{"servers", r.servers, n.servers}, {"hash", r.hash, n.hash}, {"distribution", r.distribution, n.distribution},
		{"hashTag", r.hashTag, n.hashTag}, {"serviceRef", r.serviceRef, n.serviceRef},
	} {
		if f.a != f.b {
			out = append(out, fmt.Sprintf("%s %q → %q", f.what, f.a, f.b))
		}
	}
	return strings.Join(out, "; ")
}

// ringState is what the reconciler remembers of one pool: the ring it last programmed while
// the pool had a ready server, and the warning computed for the current generation (kept for
// the whole generation, so it does not vanish once the new ring is programmed).
type ringState struct {
	live    *ring
	warnGen int64
	warn    metav1.Condition
}

// ringWarning is the pool's Warning condition: KeysRehomed when generation gen changed the
// ring of a pool that was serving with the ring last programmed. programmed and ready say
// whether gen is now programmed on every sidecar with a ready server, so its ring becomes
// the one to compare the next generation with. The memory is the manager's: a change made
// while no manager runs (or right after one restarts) is not warned about.
func (r *SnapshotReconciler) ringWarning(rp *meshv1alpha1.RedisProxy, programmed, ready bool) metav1.Condition {
	if r.rings == nil {
		r.rings = map[string]*ringState{}
	}
	key := rp.Namespace + "/" + rp.Name
	st := r.rings[key]
	if st == nil {
		st = &ringState{}
		r.rings[key] = st
	}
	now := ringOf(rp)
	if st.warnGen != rp.Generation {
		st.warnGen = rp.Generation
		st.warn = metav1.Condition{Type: meshv1alpha1.ConditionWarning, Status: metav1.ConditionFalse,
			Reason: meshv1alpha1.ReasonNoWarnings, Message: "Nothing looks unintended."}
		if st.live != nil {
			if d := st.live.diff(now); d != "" {
				st.warn.Status, st.warn.Reason = metav1.ConditionTrue, meshv1alpha1.ReasonKeysRehomed
				st.warn.Message = fmt.Sprintf("Generation %d changed the ring of a pool that was serving (%s): most keys now map to "+
					"a server that does not hold them, so reads miss until they are written again. If that was not intended, "+
					"put the previous values back.", rp.Generation, d)
			}
		}
	}
	if programmed && ready {
		st.live = &now
	}
	return st.warn
}

// forgetRings drops the memory of pools that no longer exist.
func (r *SnapshotReconciler) forgetRings(exists map[string]bool) {
	for k := range r.rings {
		if !exists[k] {
			delete(r.rings, k)
		}
	}
}
