package autoscale

import (
	"cmp"
	"context"
	"slices"
	"sync"

	"k8s.io/utils/clock"
)

// ScaleSink receives decisions; the MeshFunction controller implements it by
// writing Deployment replicas (skipping no-op writes, and handing off through
// xDS ACKs before acting on WantsZero). The Autoscaler calls it from one
// goroutine, in key order for a tick, and never while holding its lock, so a
// sink may call back into the Autoscaler.
type ScaleSink interface {
	SetDesired(fn FunctionKey, d Decision)
}

// ScaleSinkFunc adapts a function to ScaleSink.
type ScaleSinkFunc func(fn FunctionKey, d Decision)

// SetDesired calls f.
func (f ScaleSinkFunc) SetDesired(fn FunctionKey, d Decision) { f(fn, d) }

// Autoscaler runs one Decider per function: every TickInterval (2 s) it
// decides for all of them, and a poke or new pending work decides for that
// function at once, so a cold start does not wait up to 2 s for the tick.
// Pokes are deduplicated: however many arrive for a function between two
// ticks, they trigger one immediate decision; the rest only feed the window.
// The exception is a held count that grew past the one the last decision
// saw (a burst reported in two pokes, 1 then 200): it decides again at once,
// at most MaxImmediateDecisions times between two ticks.
type Autoscaler struct {
	clock clock.WithTicker
	sink  ScaleSink
	wake  chan struct{}

	mu    sync.Mutex
	fns   map[FunctionKey]*function
	queue []FunctionKey // functions waiting for an immediate decision
	// aliases send the signals for a function with revisions, which has no decider of its
	// own, to the revision that serves it (SetAlias).
	aliases map[FunctionKey]FunctionKey
	// aliasPending is the async backlog last reported for an aliased function: it moves
	// with the alias, since the queue reports a count only when it changes.
	aliasPending map[FunctionKey]int
}

type function struct {
	d       *Decider
	ready   int
	pending int
	queued  bool // in a.queue, waiting for an immediate decision
	// immediate counts the immediate decisions queued since the last tick.
	immediate int
	// decidedHeld is the held count the last decision saw.
	decidedHeld int
	metrics     *fnMetrics
}

// MaxImmediateDecisions bounds the immediate decisions for one function between
// two ticks (2 s): the first poke's, then one per growth of the held count. A
// burst that reaches the caller's sidecar over half a second (seen in the local
// mesh: 1, then 130, then 200) takes three; a hostile caller raising its count
// by one per poke takes no more than eight, so at most 4 scale writes a second.
const MaxImmediateDecisions = 8

// NewAutoscaler returns an Autoscaler that decides on clk's time and emits to sink.
func NewAutoscaler(clk clock.WithTicker, sink ScaleSink) *Autoscaler {
	return &Autoscaler{clock: clk, sink: sink, wake: make(chan struct{}, 1), fns: map[FunctionKey]*function{},
		aliases: map[FunctionKey]FunctionKey{}, aliasPending: map[FunctionKey]int{}}
}

// SetSpec adds a function or changes its configuration. A new function's
// decider starts with the ready count last given to SetReady (0 if none).
func (a *Autoscaler) SetSpec(fn FunctionKey, spec Spec) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f, ok := a.fns[fn]
	switch {
	case !ok:
		a.fns[fn] = &function{d: NewDecider(spec, a.clock.Now(), 0)}
	case f.d == nil:
		f.d = NewDecider(spec, a.clock.Now(), f.ready)
	default:
		f.d.SetSpec(spec)
	}
}

// Remove forgets a function and its history.
func (a *Autoscaler) Remove(fn FunctionKey) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.fns, fn)
	forgetFunction(fn)
}

// SetReady sets how many of the function's pods are ready. Call it before
// SetSpec for an existing workload so that the new decider starts in panic
// and holds those pods (see NewDecider).
func (a *Autoscaler) SetReady(fn FunctionKey, n int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f, ok := a.fns[fn]
	if !ok {
		// Remember the count for a decider created later.
		a.fns[fn] = &function{ready: n}
		return
	}
	f.ready = n
}

// get returns the function's state if it has a decider. Call with a.mu held.
func (a *Autoscaler) get(fn FunctionKey) *function {
	if f, ok := a.fns[fn]; ok && f.d != nil {
		return f
	}
	return nil
}

// SetAlias makes signals for fn count for target: a MeshFunction with revisions has a
// decider per revision and none of its own, and its async backlog (counted per function),
// its pods' stats when the pod's revision is unknown, and pokes from sidecars that predate
// revisions all name the function. target is the revision its latest traffic goes to. A
// zero target removes the alias.
func (a *Autoscaler) SetAlias(fn, target FunctionKey) {
	a.mu.Lock()
	defer a.mu.Unlock()
	old, had := a.aliases[fn]
	if had && old == target {
		return
	}
	n := a.aliasPending[fn]
	if f := a.get(old); had && f != nil && n > 0 {
		f.d.SetPending(a.clock.Now(), 0)
		f.pending = 0
	}
	if target == (FunctionKey{}) {
		delete(a.aliases, fn)
		delete(a.aliasPending, fn)
		return
	}
	a.aliases[fn] = target
	if f := a.get(target); f != nil && n > 0 {
		a.setPending(target, f, n)
	}
}

// resolve is fn, or its alias when fn has no decider. Call with a.mu held.
func (a *Autoscaler) resolve(fn FunctionKey) (FunctionKey, *function) {
	if f := a.get(fn); f != nil {
		return fn, f
	}
	if t, ok := a.aliases[fn]; ok {
		return t, a.get(t)
	}
	return fn, nil
}

// Record feeds one pod's per-second stat, stamped with the receive time. It
// reports false when the function has no spec yet (the stat is dropped).
func (a *Autoscaler) Record(s Stat) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, f := a.resolve(s.Function)
	if f == nil {
		return false
	}
	f.d.Record(a.clock.Now(), s)
	return true
}

// Poke records demand from a caller sidecar holding a request and queues an
// immediate decision unless one was already queued since the last tick. It
// reports false when the function has no spec yet.
func (a *Autoscaler) Poke(fn FunctionKey) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	fn, f := a.resolve(fn)
	if f == nil {
		return false
	}
	f.d.Poke(a.clock.Now())
	if f.immediate == 0 {
		a.enqueue(fn, f)
	}
	return true
}

// Held records that caller (a sidecar's identity) holds n requests for fn
// (see Decider.SetHeld) and decides at once if this is the first poke since
// the last tick or the summed count grew past the last decision's, at most
// MaxImmediateDecisions times between ticks. It reports false when the
// function has no spec yet; nothing is stored then.
func (a *Autoscaler) Held(fn FunctionKey, caller string, n int) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	fn, f := a.resolve(fn)
	if f == nil {
		return false
	}
	f.d.SetHeld(a.clock.Now(), caller, n)
	if f.immediate == 0 || (f.d.Held() > f.decidedHeld && f.immediate < MaxImmediateDecisions) {
		a.enqueue(fn, f)
	}
	return true
}

// SetPending sets the number of async messages waiting for the function.
// Going from none to some decides at once, like a poke.
func (a *Autoscaler) SetPending(fn FunctionKey, n int) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, aliased := a.aliases[fn]; aliased && a.get(fn) == nil {
		a.aliasPending[fn] = n
	}
	fn, f := a.resolve(fn)
	if f == nil {
		return false
	}
	a.setPending(fn, f, n)
	return true
}

// setPending applies an async backlog to a function with a decider. Call with a.mu held.
func (a *Autoscaler) setPending(fn FunctionKey, f *function, n int) {
	f.d.SetPending(a.clock.Now(), n)
	if f.pending == 0 && n > 0 && f.immediate == 0 {
		a.enqueue(fn, f)
	}
	f.pending = n
}

// enqueue queues an immediate decision for fn unless one is queued already.
func (a *Autoscaler) enqueue(fn FunctionKey, f *function) {
	if f.queued {
		return
	}
	f.queued = true
	f.immediate++
	a.queue = append(a.queue, fn)
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// Start runs the tick loop until ctx ends; it matches controller-runtime's
// Runnable so the manager can own it.
func (a *Autoscaler) Start(ctx context.Context) error {
	t := a.clock.NewTicker(TickInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
			a.emit(a.tick())
		case <-a.wake:
			a.emit(a.decideQueued())
		}
	}
}

type keyed struct {
	fn FunctionKey
	d  Decision
}

// tick decides for every function in key order and re-arms pokes.
func (a *Autoscaler) tick() []keyed {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.clock.Now()
	out := make([]keyed, 0, len(a.fns))
	for fn, f := range a.fns {
		if f.d == nil {
			continue
		}
		f.queued, f.immediate = false, 0
		d := f.d.Decide(now, f.ready)
		f.decidedHeld = d.Held
		f.record(fn, d)
		out = append(out, keyed{fn, d})
	}
	a.queue = a.queue[:0]
	slices.SortFunc(out, func(x, y keyed) int {
		return cmp.Or(cmp.Compare(x.fn.Namespace, y.fn.Namespace), cmp.Compare(x.fn.Name, y.fn.Name))
	})
	return out
}

// decideQueued decides for the functions poked since the last pass.
func (a *Autoscaler) decideQueued() []keyed {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.clock.Now()
	var out []keyed
	for _, fn := range a.queue {
		if f := a.get(fn); f != nil {
			f.queued = false
			d := f.d.Decide(now, f.ready)
			f.decidedHeld = d.Held
			f.record(fn, d)
			out = append(out, keyed{fn, d})
		}
	}
	a.queue = a.queue[:0]
	return out
}

func (a *Autoscaler) emit(ds []keyed) {
	for _, k := range ds {
		a.sink.SetDesired(k.fn, k.d)
	}
}
