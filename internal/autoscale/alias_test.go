package autoscale

import "testing"

// A function with revisions has a decider per revision and none of its own: its async
// backlog and pokes from older sidecars name the function and must wake the revision its
// latest traffic goes to, and the backlog must follow when that revision changes (the queue
// reports a count only when it changes, so a count left behind would pin the old revision).
func TestAliasSendsFunctionSignalsToItsRevision(t *testing.T) {
	a, fc, ch := startAutoscaler(t)
	fn := FunctionKey{"ns", "shop"}
	r1, r2 := FunctionKey{"ns", "shop-00001"}, FunctionKey{"ns", "shop-00002"}
	a.SetSpec(r1, zeroSpec())
	a.SetSpec(r2, zeroSpec())
	if a.SetPending(fn, 140) {
		t.Fatal("SetPending for a function without decider or alias reported true")
	}
	a.SetAlias(fn, r1)
	if !a.SetPending(fn, 140) { // 140 at target 70 → 2
		t.Fatal("SetPending through an alias reported false")
	}
	if got := <-ch; got.fn != r1 || got.d.Desired != 2 {
		t.Fatalf("decision %v %+v, want shop-00001 at 2", got.fn, got.d)
	}

	a.SetAlias(fn, r2)
	if got := <-ch; got.fn != r2 || got.d.Desired != 2 {
		t.Fatalf("after the alias moved: decision %v %+v, want shop-00002 at 2", got.fn, got.d)
	}
	a.mu.Lock()
	left := a.fns[r1].pending
	a.mu.Unlock()
	if left != 0 {
		t.Errorf("shop-00001 kept a backlog of %d after the alias moved, want 0", left)
	}

	if !a.Poke(fn) {
		t.Error("a poke naming the function was not taken by its revision")
	}
	a.SetAlias(fn, FunctionKey{})
	if a.Poke(fn) {
		t.Error("a poke after the alias was removed was taken")
	}
	fc.Step(TickInterval)
}
