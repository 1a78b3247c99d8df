package autoscale

import (
	"context"
	"runtime"
	"testing"
	"time"

	testingclock "k8s.io/utils/clock/testing"
)

type recorded struct {
	fn FunctionKey
	d  Decision
}

// startAutoscaler runs an Autoscaler on a fake clock and returns the channel
// its sink writes to. It waits until the tick loop has armed its ticker, so
// a later Step always fires it.
func startAutoscaler(t *testing.T) (*Autoscaler, *testingclock.FakeClock, chan recorded) {
	t.Helper()
	fc := testingclock.NewFakeClock(t0)
	ch := make(chan recorded, 100)
	a := NewAutoscaler(fc, ScaleSinkFunc(func(fn FunctionKey, d Decision) { ch <- recorded{fn, d} }))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = a.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	for !fc.HasWaiters() {
		runtime.Gosched()
	}
	return a, fc, ch
}

func zeroSpec() Spec {
	s := DefaultSpec()
	s.InitialScale = 0
	return s
}

func TestAutoscalerTickDecidesAllInKeyOrder(t *testing.T) {
	a, fc, ch := startAutoscaler(t)
	b := FunctionKey{"ns", "b"}
	x := FunctionKey{"ns", "a"}
	a.SetReady(b, 4) // before SetSpec: the decider starts in panic holding 4
	a.SetSpec(b, DefaultSpec())
	a.SetSpec(x, zeroSpec())
	if !a.Record(Stat{Function: x, Pod: "p", Concurrency: 140}) {
		t.Fatal("Record for a known function returned false")
	}
	if a.Record(Stat{Function: FunctionKey{"ns", "unknown"}}) {
		t.Error("Record for an unknown function returned true")
	}
	fc.Step(TickInterval)
	first, second := <-ch, <-ch
	if first.fn != x || second.fn != b {
		t.Fatalf("tick order = %v, %v; want ns/a then ns/b", first.fn, second.fn)
	}
	// ns/a: 140 concurrent at target 70 → 2 (2/1 ≥ 2, so a panic).
	if first.d.Desired != 2 {
		t.Errorf("ns/a desired = %d (%s), want 2", first.d.Desired, first.d.Reason)
	}
	if second.d.Desired != 4 || !second.d.Panic {
		t.Errorf("ns/b desired = %d panic %v, want 4 in panic", second.d.Desired, second.d.Panic)
	}
	a.Remove(x)
	fc.Step(TickInterval)
	if got := <-ch; got.fn != b {
		t.Errorf("after Remove the tick decided %v, want only ns/b", got.fn)
	}
	if len(ch) != 0 {
		t.Errorf("%d extra decisions after Remove", len(ch))
	}
}

func TestAutoscalerPokeDecidesAtOnceDeduplicated(t *testing.T) {
	a, fc, ch := startAutoscaler(t)
	fn := FunctionKey{"ns", "cold"}
	a.SetSpec(fn, zeroSpec())
	if a.Poke(FunctionKey{"ns", "unknown"}) {
		t.Error("Poke for an unknown function returned true")
	}
	for range 5 {
		if !a.Poke(fn) {
			t.Fatal("Poke returned false")
		}
	}
	// No clock step: the decision comes from the poke, not the tick.
	got := <-ch
	if got.fn != fn || got.d.Desired != 1 {
		t.Fatalf("immediate decision = %v %d (%s), want ns/cold 1", got.fn, got.d.Desired, got.d.Reason)
	}
	// The other four pokes queued nothing: the next decision is the tick's.
	fc.Step(TickInterval)
	<-ch
	if len(ch) != 0 {
		t.Fatalf("%d extra decisions: five pokes in one tick must give one immediate decision", len(ch))
	}
	// After the tick a new poke decides at once again.
	a.Poke(fn)
	if got := <-ch; got.d.Desired != 1 {
		t.Errorf("second immediate decision = %d, want 1", got.d.Desired)
	}
}

func TestAutoscalerPendingWakesFromZero(t *testing.T) {
	a, _, ch := startAutoscaler(t)
	fn := FunctionKey{"ns", "async"}
	a.SetSpec(fn, zeroSpec())
	a.SetPending(fn, 140) // 140 at target 70 → 2
	got := <-ch
	if got.d.Desired != 2 {
		t.Fatalf("decision on new pending work = %d (%s), want 2", got.d.Desired, got.d.Reason)
	}
}

// A burst reported in two pokes (the first held request at once, then all 200):
// the second decides again at once, so the pods for the whole burst are asked
// for without waiting for the tick. Repeating a count decides nothing new.
func TestAutoscalerHeldGrowthDecidesAgainAtOnce(t *testing.T) {
	a, fc, ch := startAutoscaler(t)
	fn := FunctionKey{"ns", "burst"}
	a.SetSpec(fn, burstSpec())
	if !a.Held(fn, "caller-a", 1) {
		t.Fatal("Held for a known function returned false")
	}
	if got := <-ch; got.d.Desired != 1 || got.d.Held != 1 {
		t.Fatalf("first decision = %d held %d (%s), want 1 held 1", got.d.Desired, got.d.Held, got.d.Reason)
	}
	a.Held(fn, "caller-a", 200)
	if got := <-ch; got.d.Desired != 20 || got.d.Held != 200 {
		t.Fatalf("decision on the grown count = %d held %d (%s), want 20 held 200", got.d.Desired, got.d.Held, got.d.Reason)
	}
	a.Held(fn, "caller-a", 200) // a refresh with the same count
	a.Held(fn, "caller-a", 150) // shrinking
	fc.Step(TickInterval)
	if got := <-ch; got.d.Held != 150 {
		t.Errorf("tick decision held %d, want 150", got.d.Held)
	}
	if len(ch) != 0 {
		t.Fatalf("%d extra decisions: an unchanged or lower count must not decide at once", len(ch))
	}
}

// A caller raising its count by one per poke gets at most MaxImmediateDecisions
// decisions between two ticks.
func TestAutoscalerImmediateDecisionsBounded(t *testing.T) {
	a, fc, ch := startAutoscaler(t)
	fn := FunctionKey{"ns", "burst"}
	a.SetSpec(fn, burstSpec())
	decided := 0
	for n := 1; n <= 50; n++ {
		a.Held(fn, "hostile", n)
		// Wait for the decision it may have queued, so each poke sees the last one.
		select {
		case <-ch:
			decided++
		case <-time.After(20 * time.Millisecond):
		}
	}
	for len(ch) > 0 {
		<-ch
		decided++
	}
	if decided > MaxImmediateDecisions {
		t.Errorf("%d immediate decisions between two ticks, want at most %d", decided, MaxImmediateDecisions)
	}
	if decided < 2 {
		t.Errorf("%d immediate decisions, want growth to decide again", decided)
	}
	// The tick re-arms them.
	fc.Step(TickInterval)
	if got := <-ch; got.d.Held != 50 {
		t.Errorf("tick decision held %d, want 50", got.d.Held)
	}
	a.Held(fn, "hostile", 60)
	if got := <-ch; got.d.Held != 60 {
		t.Errorf("decision after the tick held %d, want 60", got.d.Held)
	}
}

// A count for a function the autoscaler does not know is refused and not kept:
// when the function appears later it starts with nothing held.
func TestAutoscalerHeldForUnknownFunctionNotStored(t *testing.T) {
	a, fc, ch := startAutoscaler(t)
	fn := FunctionKey{"ns", "later"}
	if a.Held(fn, "caller-a", 500) {
		t.Fatal("Held for an unknown function returned true")
	}
	a.SetReady(fn, 0) // a ready count alone creates no decider either
	if a.Held(fn, "caller-a", 500) {
		t.Fatal("Held for a function without a spec returned true")
	}
	a.SetSpec(fn, burstSpec())
	fc.Step(TickInterval)
	if got := <-ch; got.d.Held != 0 || got.d.Desired != 0 {
		t.Errorf("first decision for the new function: held %d desired %d, want 0 0", got.d.Held, got.d.Desired)
	}
}
