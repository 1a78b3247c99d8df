package autoscale

import (
	"fmt"
	"math"
	"time"
)

// FunctionKey names a MeshFunction: its namespace and name.
type FunctionKey struct {
	Namespace string
	Name      string
}

// String renders the key as namespace/name, the form used in logs and errors.
func (k FunctionKey) String() string { return k.Namespace + "/" + k.Name }

// Stat is one pod's report for one second, sent by the function's own sidecar.
type Stat struct {
	Function FunctionKey
	Pod      string
	// Concurrency is the time-weighted average of in-flight requests over the
	// second, so a request running the whole second counts 1.
	Concurrency float64
	// Requests is how many requests arrived in the second (its RPS).
	Requests float64
	// InFlight is how many requests were still running when the second ended.
	// A long request keeps this above zero, so the function is never idle
	// while it runs even if the sidecar reports Concurrency only on completion.
	InFlight int
}

// busy reports whether the pod did or is doing any work: the request that
// completed last finished no earlier than the end of the last busy second.
func (s Stat) busy() bool { return s.Concurrency > 0 || s.Requests > 0 || s.InFlight > 0 }

// Decision is what the decider wants for one function at one instant.
type Decision struct {
	// Desired is the replica count to set. It is 0 only when WantsZero.
	Desired int32
	// Panic is true while the decider is in panic mode (no scale-downs).
	Panic bool
	// WantsZero asks for the last pod to go. The caller should hand off
	// first: remove it only once caller sidecars ACKed the snapshot that
	// tells them to hold (or a bounded timeout passed).
	WantsZero bool
	// StableValue and PanicValue are the observed window averages.
	StableValue float64
	PanicValue  float64
	// Held is the number of requests caller sidecars held for the function at
	// this decision, summed over the sidecars and clamped (see Decider.SetHeld).
	Held int
	// Reason says in a few words why Desired has this value.
	Reason string
}

// Decider is Knative's KPA decider for one function, plus request-aware
// scale-to-zero and demand from caller sidecars. It is not safe for
// concurrent use: the Autoscaler serialises calls.
type Decider struct {
	spec         Spec
	win          *window
	delay        *maxWindow
	panicTime    time.Time // zero when not panicking
	maxPanicPods int32     // highest count chosen in this panic
	lastBusy     time.Time // end of the last second with work, a poke or pending messages
	pending      int
	held         heldCounts
	levelSec     int64 // last second the demand level (pending + held) was written into the window
	initialized  bool  // the function has reached InitialScale ready pods once
}

// NewDecider starts a decider at now with readyPods already serving. With
// more than one ready pod it starts in panic, holding readyPods, so that an
// autoscaler restart (which loses metric history) does not shed pods
// (Knative PR #4795). A function with InitialScale > 0 or ready pods counts as
// busy from now, so an untouched new function goes to zero one stable window
// plus grace after it was created, not at once.
func NewDecider(spec Spec, now time.Time, readyPods int) *Decider {
	d := &Decider{spec: spec, win: newWindow(spec.StableWindow), delay: newMaxWindow(spec.ScaleDownDelay)}
	if readyPods > 1 {
		d.panicTime = now
		d.maxPanicPods = int32(readyPods)
	}
	if spec.InitialScale > 0 || readyPods > 0 {
		d.lastBusy = now
	}
	return d
}

// SetSpec changes the configuration, keeping the metric history that still
// fits in the new stable window.
func (d *Decider) SetSpec(spec Spec) {
	if spec.StableWindow != d.spec.StableWindow {
		d.win = d.win.resize(spec.StableWindow)
	}
	if spec.ScaleDownDelay != d.spec.ScaleDownDelay {
		d.delay = newMaxWindow(spec.ScaleDownDelay)
	}
	d.spec = spec
}

// Spec returns the current configuration.
func (d *Decider) Spec() Spec { return d.spec }

// Record adds one pod's per-second stat, received at now.
func (d *Decider) Record(now time.Time, s Stat) {
	d.win.addStat(now, s.Concurrency, s.Requests)
	if s.busy() {
		d.lastBusy = now
	}
}

// Poke records demand from a caller sidecar that holds a request for this
// function: like Knative's activator stat it counts as one in-flight request
// in this second, so the next Decide wants at least 1 (or ActivationScale)
// pods: ceil(1/70) = 1.
func (d *Decider) Poke(now time.Time) {
	d.win.addDemand(now, 1)
	d.lastBusy = now
}

// SetPending sets how many async messages wait for this function. Each counts
// as an in-flight request in every second until the count changes, so 700
// pending messages at target 70 want ceil(700/70) = 10 pods.
func (d *Decider) SetPending(now time.Time, n int) {
	d.setLevel(now, func() { d.pending = max(0, n) })
}

// level is the demand that stands until it changes: pending messages plus the
// requests caller sidecars hold (clamped, see heldCap).
func (d *Decider) level() int {
	return d.pending + min(d.held.total, d.heldCap())
}

// setLevel writes the old level up to now, applies change, and writes the
// new level into this second too (the bucket keeps the higher of the two).
func (d *Decider) setLevel(now time.Time, change func()) {
	d.fillLevel(now)
	change()
	d.levelSec = now.Unix() - 1
	d.fillLevel(now)
}

// fillLevel writes the level into every second since it was last written, so
// gaps between calls do not dilute the average. Held counts that expired
// before now stop at their expiry second.
func (d *Decider) fillLevel(now time.Time) {
	for _, exp := range d.held.expired(now) {
		d.fillTo(exp.at)
		d.held.remove(exp.caller)
	}
	d.fillTo(now)
}

func (d *Decider) fillTo(now time.Time) {
	lv := d.level()
	if lv <= 0 {
		return
	}
	nowSec := now.Unix()
	start := max(d.levelSec+1, nowSec-int64(len(d.win.buckets))+1)
	for s := start; s <= nowSec; s++ {
		d.win.addDemand(time.Unix(s, 0), float64(lv))
	}
	d.levelSec = max(d.levelSec, nowSec)
	if now.After(d.lastBusy) {
		d.lastBusy = now
	}
}

// Decide computes the desired replicas at now given readyPods, following
// Knative's Scale (autoscaler.go) step by step; see the comments for the
// arithmetic with default settings.
func (d *Decider) Decide(now time.Time, readyPods int) Decision {
	s := d.spec
	if readyPods >= int(s.InitialScale) {
		d.initialized = true
	}
	d.fillLevel(now)
	stable := d.win.average(now, s.StableWindow, s.Metric)
	panicV := d.win.average(now, s.PanicWindow(), s.Metric)
	target := s.TargetValue()

	// ready counts at least 1 so a function at zero can still scale up and
	// the rates below do not collapse to 0.
	ready := math.Max(1, float64(readyPods))
	// maxUp = ceil(1000 × ready): effectively unbounded by default; the ceil
	// lets a rate like 1.1 on 2 pods still grow by one (2.2 → 3).
	maxUp := math.Ceil(s.MaxScaleUpRate * ready)
	// maxDown = floor(ready / 2): 10 ready pods go to at least 5 this tick.
	maxDown := math.Floor(ready / s.MaxScaleDownRate)
	// 150 concurrent at target 70 → ceil(2.14) = 3 pods.
	dspc := math.Ceil(stable / target)
	dppc := math.Ceil(panicV / target)
	desiredStable := int32(math.Min(math.Max(dspc, maxDown), maxUp))
	desiredPanic := int32(math.Min(math.Max(dppc, maxDown), maxUp))
	if s.ActivationScale > 1 {
		if dspc > 0 && s.ActivationScale > desiredStable {
			desiredStable = s.ActivationScale
		}
		if dppc > 0 && s.ActivationScale > desiredPanic {
			desiredPanic = s.ActivationScale
		}
	}

	// Panic when the 6 s window alone needs twice the ready pods: 1 ready pod
	// and 150 concurrent → dppc 3, 3/1 ≥ 2.
	overPanic := dppc/ready >= s.PanicThresholdPct/100
	switch {
	case overPanic:
		// Entering, or still over: (re)start the panic clock.
		d.panicTime = now
	case !d.panicTime.IsZero() && d.panicTime.Add(s.StableWindow).Before(now):
		// A whole stable window without over-panic: the burst is now in the
		// stable average, so the stable decision can take over.
		d.panicTime = time.Time{}
		d.maxPanicPods = 0
	}

	desired, reason := desiredStable, fmt.Sprintf("stable %.2f %s at target %.2f per pod", stable, s.Metric, target)
	inPanic := !d.panicTime.IsZero()
	if inPanic {
		desired = max(desiredStable, desiredPanic)
		// No scale-down while panicking: keep the highest count of this panic.
		d.maxPanicPods = max(d.maxPanicPods, desired)
		desired = d.maxPanicPods
		reason = fmt.Sprintf("panic: %.2f %s over the panic window at target %.2f per pod", panicV, s.Metric, target)
	}
	if d.delay != nil {
		if delayed := d.delay.record(now, desired); delayed != desired {
			desired, reason = delayed, fmt.Sprintf("scale-down delay holds the %d chosen in the last %s", delayed, s.ScaleDownDelay)
		}
	}

	// Zero only after a whole stable window of exactly zero and then the
	// grace period, both counted from the end of the last busy second (the
	// last request's completion, a poke or pending messages). 1 pod idle at
	// t=0 with defaults: average 0 from t=60, zero at t=90.
	if desired == 0 && !d.lastBusy.IsZero() {
		idleFor := now.Sub(d.lastBusy)
		if need := s.StableWindow + s.ScaleToZeroGrace; stable != 0 || idleFor < need {
			desired, reason = 1, fmt.Sprintf("idle for %s of the %s needed before scaling to zero", idleFor, need)
		}
	}
	if !d.initialized && desired < s.InitialScale {
		desired, reason = s.InitialScale, fmt.Sprintf("initial scale %d not reached yet", s.InitialScale)
	}
	if s.MinScale > 0 && desired < s.MinScale {
		desired, reason = s.MinScale, fmt.Sprintf("min scale %d", s.MinScale)
	}
	if s.MaxScale > 0 && desired > s.MaxScale {
		desired, reason = s.MaxScale, fmt.Sprintf("max scale %d", s.MaxScale)
	}
	if desired == 0 {
		reason = fmt.Sprintf("idle for a stable window of %s plus grace %s", s.StableWindow, s.ScaleToZeroGrace)
	}
	return Decision{
		Held:        d.Held(),
		Desired:     desired,
		Panic:       inPanic,
		WantsZero:   desired == 0,
		StableValue: stable,
		PanicValue:  panicV,
		Reason:      reason,
	}
}
