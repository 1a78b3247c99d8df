package autoscale

import (
	"fmt"
	"math"
	"testing"
	"time"
)

// burstSpec is a function that starts at zero with containerConcurrency 10 and a
// utilization of 100 %, so its target is 10 in-flight requests per pod.
func burstSpec() Spec {
	s := DefaultSpec()
	s.InitialScale = 0
	s.ContainerConcurrency = 10
	s.TargetUtilization = 1
	return s
}

func TestHeldBurstAsksForAllPodsInOneDecision(t *testing.T) {
	for _, tc := range []struct {
		name        string
		utilization float64
		maxScale    int32
		want        int32
	}{
		// 200 held at target 10 × 1.0 = 10: ceil(200/10) = 20.
		{"target 10", 1, 0, 20},
		// Knative's default utilization: target 10 × 0.7 = 7, ceil(200/7) = 29.
		{"default utilization", 0.7, 0, 29},
		// max scale bounds the same burst.
		{"max scale 5", 1, 5, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := burstSpec()
			spec.TargetUtilization = tc.utilization
			spec.MaxScale = tc.maxScale
			tl := newTimeline(t, spec, 0)
			tl.sec = 100
			tl.expect(0, 0, false)
			tl.d.SetHeld(at(100), "caller-a", 200)
			// 20/1 ready ≥ 2: a panic, which keeps the pods until the burst is in the
			// stable average.
			d := tl.expect(0, tc.want, true)
			if want := min(200, d.Held); d.Held != want || d.PanicValue != float64(d.Held) {
				t.Errorf("held %d panic value %v, want both %d", d.Held, d.PanicValue, want)
			}
		})
	}
}

// A plain poke (a sidecar that sends no count) still counts as one request: 1 pod.
func TestPokeWithoutCountIsOneRequest(t *testing.T) {
	tl := newTimeline(t, burstSpec(), 0)
	tl.sec = 100
	tl.d.Poke(at(100))
	if d := tl.expect(0, 1, false); d.Held != 0 {
		t.Errorf("held = %d after a plain poke, want 0", d.Held)
	}
}

func TestHeldCountsSumAcrossCallersAndReplacePerCaller(t *testing.T) {
	tl := newTimeline(t, burstSpec(), 0)
	tl.sec = 100
	tl.d.SetHeld(at(100), "caller-a", 120)
	tl.d.SetHeld(at(100), "caller-b", 80)
	if d := tl.expect(0, 20, true); d.Held != 200 {
		t.Fatalf("held = %d, want 120 + 80 = 200", d.Held)
	}
	// caller-a's new count replaces its old one; it does not add to it.
	tl.sec = 101
	tl.d.SetHeld(at(101), "caller-a", 50)
	if got := tl.d.Held(); got != 130 {
		t.Errorf("held after caller-a refreshes with 50 = %d, want 50 + 80 = 130", got)
	}
	// 0 withdraws caller-b's count at once.
	tl.d.SetHeld(at(101), "caller-b", 0)
	if got := tl.d.Held(); got != 50 {
		t.Errorf("held after caller-b withdraws = %d, want 50", got)
	}
	// The window keeps the highest level each second saw: 200 in seconds 100 and 101
	// (the old sum stood until the changes in 101), then 50 from 102 on.
	tl.sec = 102
	if d := tl.decide(20); d.StableValue != (200+200+50)/3.0 {
		t.Errorf("stable value = %v, want (200 + 200 + 50) / 3 = 150", d.StableValue)
	}
}

func TestHeldCountExpiresWithoutRefresh(t *testing.T) {
	spec := burstSpec()
	spec.StableWindow = 6 * time.Second
	tl := newTimeline(t, spec, 0)
	tl.sec = 100
	tl.d.SetHeld(at(100), "gone", 100)
	tl.d.SetHeld(at(100), "alive", 10)
	// alive refreshes every second, gone never again.
	for tl.sec < 105 {
		tl.sec++
		tl.d.SetHeld(at(tl.sec), "alive", 10)
		d := tl.decide(0)
		want := 110
		if tl.sec >= 100+int(HeldTTL/time.Second) {
			want = 10
		}
		if d.Held != want {
			t.Fatalf("t=%d: held %d, want %d (gone expires %s after its last poke)", tl.sec, d.Held, want, HeldTTL)
		}
	}
	// gone's 100 stood in seconds 100..103 (its expiry second) and not after: over the
	// 6 s window 100..105 that is (4 × 110 + 2 × 10) / 6.
	if d := tl.decide(0); math.Abs(d.StableValue-(4*110+2*10)/6.0) > 1e-9 {
		t.Errorf("stable value = %v, want %v", d.StableValue, (4*110+2*10)/6.0)
	}
	if _, ok := tl.d.held.callers["gone"]; ok {
		t.Errorf("the expired count is still stored")
	}
}

// Forged counts: a negative count holds nothing, an absurd one is clamped to
// MaxHeldPerCaller, and the sum never asks for more than max scale.
func TestHeldCountsClamped(t *testing.T) {
	t.Run("negative", func(t *testing.T) {
		tl := newTimeline(t, burstSpec(), 0)
		tl.sec = 100
		tl.d.SetHeld(at(100), "a", 30)
		tl.d.SetHeld(at(100), "a", -1000)
		if got := tl.d.Held(); got != 0 {
			t.Fatalf("held after a negative count = %d, want 0", got)
		}
		if len(tl.d.held.callers) != 0 {
			t.Errorf("a negative count left an entry")
		}
	})
	t.Run("absurd with max scale", func(t *testing.T) {
		spec := burstSpec()
		spec.MaxScale = 30
		tl := newTimeline(t, spec, 0)
		tl.sec = 100
		tl.d.SetHeld(at(100), "a", math.MaxInt)
		d := tl.decide(0)
		// Clamped to max 30 × target 10 = 300, so 30 pods.
		if d.Held != 300 || d.Desired != 30 || d.PanicValue != 300 {
			t.Errorf("held %d desired %d panic value %v, want 300, 30, 300", d.Held, d.Desired, d.PanicValue)
		}
	})
	t.Run("absurd without max scale", func(t *testing.T) {
		tl := newTimeline(t, burstSpec(), 0)
		tl.sec = 100
		tl.d.SetHeld(at(100), "a", math.MaxInt)
		d := tl.decide(0)
		// One caller: MaxHeldPerCaller = 10000 at target 10 → 1000 pods, which is also
		// the max scale-up rate's bound from zero (ceil(1000 × 1)).
		if d.Held != MaxHeldPerCaller || d.Desired != 1000 {
			t.Errorf("held %d desired %d, want %d and 1000", d.Held, d.Desired, MaxHeldPerCaller)
		}
	})
	t.Run("many forged callers", func(t *testing.T) {
		spec := burstSpec()
		spec.MaxScaleUpRate = 10
		tl := newTimeline(t, spec, 0)
		tl.sec = 100
		for i := range MaxHeldCallers {
			if !tl.d.SetHeld(at(100), fmt.Sprint("forged-", i), MaxHeldPerCaller) {
				t.Fatalf("caller %d refused below the bound", i)
			}
		}
		// One more caller is not stored; its poke still counts as a plain poke.
		if tl.d.SetHeld(at(100), "one-more", 5) {
			t.Errorf("caller %d stored, want refused", MaxHeldCallers+1)
		}
		if len(tl.d.held.callers) != MaxHeldCallers {
			t.Errorf("%d callers stored, want %d", len(tl.d.held.callers), MaxHeldCallers)
		}
		// The max scale-up rate bounds the decision: ceil(10 × 1 ready) = 10.
		if d := tl.decide(0); d.Desired != 10 {
			t.Errorf("desired = %d, want 10 (max scale-up rate 10 from zero)", d.Desired)
		}
		// A known caller can still update its count when the map is full.
		if !tl.d.SetHeld(at(100), "forged-0", 1) {
			t.Errorf("a stored caller could not update its count")
		}
	})
}

// Held requests keep the function busy, so it does not go to zero while callers
// hold; once they withdraw, the usual stable window and grace count from then.
func TestHeldKeepsFunctionBusy(t *testing.T) {
	spec := burstSpec()
	spec.StableWindow = 6 * time.Second
	spec.ScaleToZeroGrace = 2 * time.Second
	tl := newTimeline(t, spec, 0)
	tl.sec = 100
	for ; tl.sec <= 130; tl.sec++ {
		tl.d.SetHeld(at(tl.sec), "a", 5)
	}
	tl.sec = 130
	if d := tl.decide(1); d.Desired != 1 {
		t.Fatalf("desired while held = %d, want 1", d.Desired)
	}
	tl.d.SetHeld(at(130), "a", 0)
	tl.sec = 137
	if d := tl.decide(1); d.Desired != 1 {
		t.Errorf("t=137: desired %d, want 1 (6 s window + 2 s grace from 130)", d.Desired)
	}
	tl.sec = 139
	if d := tl.decide(1); d.Desired != 0 {
		t.Errorf("t=139: desired %d (%s), want 0", d.Desired, d.Reason)
	}
}
