package autoscale

import (
	"testing"
	"time"
)

// timeline drives one Decider second by second on a fake time axis.
type timeline struct {
	t   *testing.T
	d   *Decider
	sec int
}

func newTimeline(t *testing.T, spec Spec, ready int) *timeline {
	return &timeline{t: t, d: NewDecider(spec, at(0), ready)}
}

// load advances through seconds sec+1..until, each with pods reporting
// concurrency c (and c requests) each.
func (tl *timeline) load(until, pods int, c float64) {
	for tl.sec < until {
		tl.sec++
		for p := range pods {
			tl.d.Record(at(tl.sec), Stat{Pod: string(rune('a' + p)), Concurrency: c, Requests: c})
		}
	}
}

func (tl *timeline) decide(ready int) Decision {
	return tl.d.Decide(at(tl.sec), ready)
}

func (tl *timeline) expect(ready int, want int32, wantPanic bool) Decision {
	tl.t.Helper()
	d := tl.decide(ready)
	if d.Desired != want || d.Panic != wantPanic {
		tl.t.Fatalf("t=%ds ready=%d: got desired %d panic %v (%s), want %d panic %v",
			tl.sec, ready, d.Desired, d.Panic, d.Reason, want, wantPanic)
	}
	return d
}

func TestSteadyLoadAtTarget(t *testing.T) {
	tl := newTimeline(t, DefaultSpec(), 1)
	// 3 pods at the 70 target: stable = panic = 210, ceil(210/70) = 3, and
	// 3/3 = 1 < 2 so no panic, on every tick for two minutes.
	for tl.sec < 120 {
		tl.load(tl.sec+2, 3, 70)
		tl.expect(3, 3, false)
	}
}

func TestBurstPanicHoldAndExit(t *testing.T) {
	tl := newTimeline(t, DefaultSpec(), 1)
	// 1 pod at 10 for a minute: ceil(10/70) = 1.
	tl.load(60, 1, 10)
	tl.expect(1, 1, false)

	// Burst of 350 for 6 s. Panic window 55..60→61..66 averages 350, so
	// dppc = ceil(350/70) = 5 and 5/1 ≥ 2: panic. Stable is
	// (54×10 + 6×350)/60 = 44 → 1, so desired = max(1, 5) = 5.
	tl.load(66, 1, 350)
	tl.expect(1, 5, true)

	// Load falls to 5 pods × 10 = 50. At t=100 dppc = ceil(50/70) = 1 and
	// 1/5 < 2, but the panic began at 66 and 66+60 > 100: still panicking.
	// Stable (41..100) = (20×10 + 6×350 + 34×50)/60 = 66.7 → 1, clamped to
	// floor(5/2) = 2, yet no scale-down in panic: desired stays 5.
	tl.load(100, 5, 10)
	d := tl.expect(5, 5, true)
	if d.StableValue < 66.6 || d.StableValue > 66.7 {
		t.Errorf("stable value = %v, want 66.67", d.StableValue)
	}

	// At exactly 66+60 = 126 panic still holds (the exit needs strictly later).
	tl.load(126, 5, 10)
	tl.expect(5, 5, true)
	// At 128 the stable window (69..128) is 50 → 1, clamped to floor(5/2) = 2:
	// out of panic, and at most halving.
	tl.load(128, 5, 10)
	tl.expect(5, 2, false)
}

func TestPanicRefreshedWhileOverThreshold(t *testing.T) {
	tl := newTimeline(t, DefaultSpec(), 1)
	tl.load(6, 1, 350) // panic at 6: 5/1 ≥ 2
	tl.expect(1, 5, true)
	// Still over the threshold at 50 (350×5 pods = 1750 → 25 wanted, 25/5 ≥ 2):
	// the panic clock restarts at 50 and the count only rises.
	tl.load(50, 5, 350)
	tl.expect(5, 25, true)
	// Idle from 51. At 108 (6+60 < 108 but 50+60 > 108) panic still holds.
	tl.load(108, 25, 0)
	tl.expect(25, 25, true)
	// At 112 (> 110) it ends; stable is 0 → floor(25/2) = 12.
	tl.load(112, 25, 0)
	tl.expect(25, 12, false)
}

func TestNewDeciderWithReadyPodsStartsInPanic(t *testing.T) {
	// No history after a restart: stable says floor(4/2) = 2, but the
	// decider starts in panic holding the 4 ready pods.
	tl := newTimeline(t, DefaultSpec(), 4)
	tl.expect(4, 4, true)
	// One pod ready at start: normal mode.
	tl1 := newTimeline(t, DefaultSpec(), 1)
	tl1.load(2, 1, 10)
	tl1.expect(1, 1, false)
}

func TestScaleDownAtMostHalvesPerTick(t *testing.T) {
	tl := newTimeline(t, DefaultSpec(), 1)
	// 10 pods × 70 = 700 → 10 (10/10 = 1, no panic).
	tl.load(60, 10, 70)
	tl.expect(10, 10, false)
	// A minute of zeros: stable 0, yet each tick keeps floor(ready/2).
	tl.load(120, 10, 0)
	tl.expect(10, 5, false)
	tl.expect(5, 2, false)
	tl.expect(2, 1, false)
	// floor(1/2) = 0, but only 60 s idle of the 90 needed: hold the last pod.
	d := tl.expect(1, 1, false)
	if d.WantsZero {
		t.Errorf("WantsZero during grace")
	}
}

func TestMaxScaleUpRate(t *testing.T) {
	spec := DefaultSpec()
	spec.MaxScaleUpRate = 1.1
	tl := newTimeline(t, spec, 1)
	// 2000 concurrent wants ceil(2000/70) = 29, but 2 ready pods may grow to
	// at most ceil(1.1 × 2) = 3 this tick (the ceil guarantees +1).
	tl.load(6, 2, 1000)
	tl.expect(2, 3, true)
	tl.expect(3, 4, true) // ceil(3.3) = 4
	spec.MaxScaleUpRate = 2
	tl.d.SetSpec(spec)
	tl.expect(4, 8, true) // ceil(2 × 4) = 8
}

func TestScaleDownDelayHoldsTheMax(t *testing.T) {
	spec := DefaultSpec()
	spec.ScaleDownDelay = 20 * time.Second
	delayed := newTimeline(t, spec, 1)
	raw := newTimeline(t, DefaultSpec(), 1)
	// Same input to both deciders: 10 pods × 70 for a minute, then zero load.
	type tick struct {
		sec int
		raw int32
	}
	var history []tick
	for sec := 2; sec <= 120; sec += 2 {
		c := 70.0
		if sec > 60 {
			c = 0
		}
		delayed.load(sec, 10, c)
		raw.load(sec, 10, c)
		r := raw.decide(10).Desired
		history = append(history, tick{sec, r})
		got := delayed.decide(10).Desired
		// The delayed count is the max of raw counts chosen in (sec-20, sec].
		var want int32
		for _, h := range history {
			if h.sec > sec-20 {
				want = max(want, h.raw)
			}
		}
		if got != want {
			t.Fatalf("t=%d: delayed desired %d, want %d (max over the last 20 s of %v)", sec, got, want, history)
		}
	}
	// Worked point: at t=90 the stable average is (30×700)/60 = 350 → 5 raw,
	// but at t=72 raw was ceil(48×700/60/70) = 8, and 72 > 90-20, so 8 holds.
	for _, h := range history {
		if h.sec == 72 && h.raw != 8 {
			t.Errorf("raw desired at 72 = %d, want 8", h.raw)
		}
	}
}

func TestScaleToZeroAfterStableWindowAndGrace(t *testing.T) {
	tl := newTimeline(t, DefaultSpec(), 1)
	// Busy until second 10, then the pod keeps reporting zeros. The window
	// holds second 10 until t=69, so ceil(>0/70) = 1 until then; from 70 the
	// average is exactly 0, and grace runs until 10 + 60 + 30 = 100.
	tl.load(10, 1, 1)
	firstZero := -1
	for tl.sec < 130 {
		tl.load(tl.sec+2, 1, 0)
		d := tl.decide(1)
		if d.WantsZero != (d.Desired == 0) {
			t.Fatalf("t=%d: WantsZero %v with desired %d", tl.sec, d.WantsZero, d.Desired)
		}
		if d.Desired == 0 && firstZero < 0 {
			firstZero = tl.sec
		}
		if tl.sec == 70 && d.StableValue != 0 {
			t.Errorf("t=70: stable %v, want exactly 0", d.StableValue)
		}
	}
	if firstZero != 100 {
		t.Errorf("first zero at t=%d, want 100 (last busy 10 + window 60 + grace 30)", firstZero)
	}
}

func TestLongInFlightRequestIsNotIdle(t *testing.T) {
	tl := newTimeline(t, DefaultSpec(), 1)
	// A 5-minute request: the sidecar reports no completed work, only one
	// request in flight at the end of each second. Never idle.
	for tl.sec < 300 {
		tl.sec++
		tl.d.Record(at(tl.sec), Stat{Pod: "a", InFlight: 1})
		if tl.sec%2 == 0 {
			if d := tl.decide(1); d.Desired != 1 || d.WantsZero {
				t.Fatalf("t=%d: desired %d wantsZero %v while a request runs", tl.sec, d.Desired, d.WantsZero)
			}
		}
	}
	// It completed during second 300; zero comes 90 s later, at 390.
	tl.load(388, 1, 0)
	tl.expect(1, 1, false)
	tl.load(390, 1, 0)
	tl.expect(1, 0, false)
}

func TestPokeFromZero(t *testing.T) {
	for _, tc := range []struct {
		activation int32
		want       int32
	}{{0, 1}, {1, 1}, {3, 3}} {
		spec := DefaultSpec()
		spec.InitialScale = 0
		spec.ActivationScale = tc.activation
		tl := newTimeline(t, spec, 0)
		tl.sec = 500
		tl.expect(0, 0, false)
		// A held request: ceil(1/70) = 1, raised to the activation scale.
		tl.d.Poke(at(500))
		tl.expect(0, tc.want, false)
	}
}

func TestPendingMessagesAreDemand(t *testing.T) {
	spec := DefaultSpec()
	spec.InitialScale = 0
	tl := newTimeline(t, spec, 0)
	tl.sec = 100
	tl.expect(0, 0, false)
	// 700 pending messages at target 70 → 10 pods; 10/1 ≥ 2 is a panic.
	tl.d.SetPending(at(100), 700)
	tl.expect(0, 10, true)
	// No new call for 20 s: the count still fills every second.
	tl.sec = 120
	if d := tl.decide(10); d.StableValue != 700 {
		t.Errorf("stable value 20 s after SetPending = %v, want 700", d.StableValue)
	}
	// Drained at 120: zero 90 s later (window 60 + grace 30).
	tl.d.SetPending(at(120), 0)
	tl.sec = 208
	tl.d.panicTime = time.Time{} // isolate the zero rule from the panic hold
	if d := tl.decide(1); d.Desired != 1 {
		t.Errorf("t=208: desired %d, want 1 (grace)", d.Desired)
	}
	tl.sec = 210
	if d := tl.decide(1); d.Desired != 0 || !d.WantsZero {
		t.Errorf("t=210: desired %d wantsZero %v, want 0 true", d.Desired, d.WantsZero)
	}
}

func TestBounds(t *testing.T) {
	t.Run("min scale keeps pods when idle", func(t *testing.T) {
		spec := DefaultSpec()
		spec.MinScale = 2
		tl := newTimeline(t, spec, 1)
		tl.sec = 1000
		tl.expect(2, 2, false)
	})
	t.Run("max scale caps a burst", func(t *testing.T) {
		spec := DefaultSpec()
		spec.MaxScale = 3
		tl := newTimeline(t, spec, 1)
		tl.load(6, 1, 700) // wants 10
		tl.expect(1, 3, true)
	})
	t.Run("initial scale until reached once", func(t *testing.T) {
		spec := DefaultSpec()
		spec.InitialScale = 3
		tl := newTimeline(t, spec, 0)
		tl.expect(0, 3, false)
		tl.sec = 2
		tl.expect(1, 3, false) // not reached yet
		tl.sec = 4
		// Reached: now the load decides. No data → floor(3/2) = 1.
		tl.expect(3, 1, false)
	})
	t.Run("initial scale zero starts at zero", func(t *testing.T) {
		spec := DefaultSpec()
		spec.InitialScale = 0
		tl := newTimeline(t, spec, 0)
		d := tl.expect(0, 0, false)
		if !d.WantsZero {
			t.Errorf("WantsZero = false at zero")
		}
	})
}

func TestRPSMetric(t *testing.T) {
	spec := DefaultSpec()
	spec.Metric = MetricRPS
	tl := newTimeline(t, spec, 1)
	// 2 pods × 140 rps = 280 at target 140 → 2. Their concurrency (1000 each)
	// would mean 29 pods on the concurrency metric; it is ignored.
	for tl.sec < 60 {
		tl.sec++
		for _, p := range []string{"a", "b"} {
			tl.d.Record(at(tl.sec), Stat{Pod: p, Concurrency: 1000, Requests: 140})
		}
	}
	tl.expect(2, 2, false)
}
