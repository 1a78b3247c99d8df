package autoscale

import (
	"context"
	"runtime"
	"testing"

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
