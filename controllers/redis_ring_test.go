package controllers

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
)

func pool(gen int64, hash meshv1alpha1.HashFunction, servers ...string) *meshv1alpha1.RedisProxy {
	rp := &meshv1alpha1.RedisProxy{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "cache", Generation: gen}}
	rp.Spec.Sharding.Hash = hash
	for _, s := range servers {
		rp.Spec.Servers = append(rp.Spec.Servers, meshv1alpha1.RedisServer{Name: s, Address: s + ":6379"})
	}
	return rp
}

// Issue 13: changing ring server names or the hash of a live pool re-homed every key without
// a word.
func TestRingWarning(t *testing.T) {
	r := &SnapshotReconciler{}
	steps := []struct {
		// input: the pool at a generation, and whether that generation is programmed with a
		// ready server
		rp   *meshv1alpha1.RedisProxy
		live bool
		// output
		warn     bool
		contains string
	}{
		{pool(1, "fnv1a_64", "a", "b"), true, false, ""},
		{pool(2, "murmur", "a", "b"), true, true, `hash "fnv1a_64" → "murmur"`},
		{pool(2, "murmur", "a", "b"), true, true, "Generation 2"}, // kept for the generation
		{pool(3, "murmur", "a", "b"), true, false, ""},            // a change that keeps the ring
		{pool(4, "murmur", "a", "c"), true, true, `servers "a(weight 1), b(weight 1)" → "a(weight 1), c(weight 1)"`},
	}
	for i, s := range steps {
		c := r.ringWarning(s.rp, s.live, s.live)
		if got := c.Status == metav1.ConditionTrue; got != s.warn {
			t.Fatalf("step %d: Warning = %+v, want True=%v", i, c, s.warn)
		}
		if s.warn && (c.Reason != meshv1alpha1.ReasonKeysRehomed || !strings.Contains(c.Message, s.contains)) {
			t.Fatalf("step %d: Warning = %+v, want KeysRehomed mentioning %q", i, c, s.contains)
		}
	}

	// A pool that never served has no keys to move.
	r = &SnapshotReconciler{}
	r.ringWarning(pool(1, "fnv1a_64", "a"), true, false)
	if c := r.ringWarning(pool(2, "murmur", "a"), true, false); c.Status != metav1.ConditionFalse {
		t.Errorf("pool without ready servers warned: %+v", c)
	}
}
