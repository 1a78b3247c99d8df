package activator

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// Defaults for FunctionRef fields left at zero; they match the
// `weft.dev/function` metadata defaults in docs/xds-contract.md.
const (
	DefaultHoldTimeout = 30 * time.Second
	DefaultMaxPending  = 100
	// DemandInterval is how often the held count for one function is sent
	// again while requests stay held and the count does not grow: the
	// autoscaler forgets a count it has not heard for 3 s.
	DemandInterval = time.Second
	// BurstInterval is the most often a grown held count is sent: a burst
	// arriving over a few ms is reported as its first request at once, then
	// in full 20 ms later, so at most 50 pokes a second per function.
	BurstInterval = 20 * time.Millisecond
)

// FunctionRef is what the proxy knows about a function cluster, from its
// `weft.dev/function` metadata.
type FunctionRef struct {
	Namespace string
	Name      string
	// Cluster is the xDS cluster name, function|<ns>/<name>; endpoint
	// changes arrive keyed by it.
	Cluster     string
	HoldTimeout time.Duration // 0 = DefaultHoldTimeout
	MaxPending  int           // 0 = DefaultMaxPending
	// ContainerConcurrency caps this caller's in-flight requests at
	// ContainerConcurrency × ready endpoints; 0 = unlimited.
	ContainerConcurrency int
}

func (f FunctionRef) String() string { return f.Namespace + "/" + f.Name }

func (f FunctionRef) holdTimeout() time.Duration {
	if f.HoldTimeout > 0 {
		return f.HoldTimeout
	}
	return DefaultHoldTimeout
}

func (f FunctionRef) maxPending() int {
	if f.MaxPending > 0 {
		return f.MaxPending
	}
	return DefaultMaxPending
}

// DemandSink tells the autoscaler how many requests wait for a function with
// no endpoints; held 0 withdraws the count. Reporter implements it over gRPC.
// The Activator calls it from one goroutine per function at a time, so the
// counts for a function arrive in order; it may block (bounded by the sink).
type DemandSink interface {
	Demand(namespace, name string, held int)
}

// DemandSinkFunc adapts a function to DemandSink.
type DemandSinkFunc func(namespace, name string, held int)

// Demand calls f.
func (f DemandSinkFunc) Demand(namespace, name string, held int) { f(namespace, name, held) }

// Activator holds requests per function cluster until it has endpoints and
// concurrency room. It is safe for concurrent use.
type Activator struct {
	clock clock.WithTicker
	sink  DemandSink

	mu       sync.Mutex
	clusters map[string]*cluster
}

type cluster struct {
	ref        FunctionRef
	ready      int
	inFlight   int
	queue      []*waiter // FIFO, at most ref.maxPending() long
	lastDemand time.Time // when the last held count was sent
	reported   int       // the held count last sent; 0 = none or withdrawn
	demanding  bool      // a demandLoop goroutine runs for this cluster
	wake       chan struct{}
	stats      stats
}

type waiter struct {
	admitted chan struct{} // closed when the waiter got a slot
	done     bool          // admitted (set under Activator.mu)
}

// New returns an Activator that reads time from clk and sends demand to sink.
func New(clk clock.WithTicker, sink DemandSink) *Activator {
	return &Activator{clock: clk, sink: sink, clusters: map[string]*cluster{}}
}

func (a *Activator) cluster(name string) *cluster {
	c, ok := a.clusters[name]
	if !ok {
		c = &cluster{wake: make(chan struct{}, 1)}
		a.clusters[name] = c
	}
	return c
}

// room reports whether one more request may go to the cluster now:
// ready × containerConcurrency in flight at most, so 2 ready pods at
// containerConcurrency 10 admit 20.
func (c *cluster) room() bool {
	if c.ready <= 0 {
		return false
	}
	cc := c.ref.ContainerConcurrency
	return cc <= 0 || c.inFlight < cc*c.ready
}

// admit hands free slots to waiters in arrival order. Call with a.mu held.
func (c *cluster) admit() {
	for len(c.queue) > 0 && c.room() {
		w := c.queue[0]
		c.queue[0] = nil
		c.queue = c.queue[1:]
		w.done = true
		c.inFlight++
		c.stats.released++
		close(w.admitted)
	}
}

// Hold returns when the request may be sent to fn's cluster: at once with
// waited = 0 when it has ready endpoints and room (and nobody queued ahead),
// otherwise after waiting in the function's FIFO. The caller must call
// release when the request is finished, to free its slot. Errors: a
// *HoldError when the queue is full or the hold timed out (both with
// RetryAfter), or ctx's error if the caller gave up first.
func (a *Activator) Hold(ctx context.Context, fn FunctionRef) (release func(), waited time.Duration, err error) {
	a.mu.Lock()
	c := a.cluster(fn.Cluster)
	c.ref = fn
	if len(c.queue) == 0 && c.room() {
		c.inFlight++
		a.mu.Unlock()
		return a.releaser(c), 0, nil
	}
	if n := len(c.queue); n >= fn.maxPending() {
		c.stats.overflowed++
		a.mu.Unlock()
		return nil, 0, &HoldError{Function: fn.String(), Pending: n, kind: ErrQueueFull, retryAfter: RetryAfter}
	}
	w := &waiter{admitted: make(chan struct{})}
	c.queue = append(c.queue, w)
	c.stats.held++
	start := a.clock.Now()
	// Report the held count whether the function has no endpoint or no room:
	// either way these requests are load the pods do not see yet (Knative's
	// activator reports the requests it buffers in both cases).
	startLoop := !c.demanding
	c.demanding = true
	c.wakeDemand()
	a.mu.Unlock()

	if startLoop {
		go a.demandLoop(c)
	}

	timer := a.clock.NewTimer(fn.holdTimeout())
	defer timer.Stop()
	select {
	case <-w.admitted:
	case <-timer.C():
		if a.abandon(c, w, false) {
			return nil, 0, &HoldError{Function: fn.String(), Waited: fn.holdTimeout(), kind: ErrHoldTimeout, retryAfter: RetryAfter}
		}
	case <-ctx.Done():
		// Even if admitted in the same instant, abandon gives the slot back.
		a.abandon(c, w, true)
		return nil, 0, fmt.Errorf("waiting for an endpoint of function %s: %w", fn, ctx.Err())
	}
	waited = a.clock.Since(start)
	a.mu.Lock()
	c.stats.observe(waited)
	a.mu.Unlock()
	return a.releaser(c), waited, nil
}

// TimedOut counts a hold timeout for fn that happened past this sidecar: its endpoint
// came in time, but the function's own sidecar answered that the app had not started
// within what was left of the hold. To the caller it is the same refusal, so it is
// counted with the holds that timed out here.
func (a *Activator) TimedOut(fn FunctionRef) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.cluster(fn.Cluster)
	if c.ref.Name == "" {
		c.ref = fn
	}
	c.stats.timedOut++
}

// abandon takes w out of the queue after a timeout or cancellation and
// reports true. If w was admitted meanwhile: on cancellation its slot goes
// to the next waiter and abandon reports true; on timeout the request may
// proceed and abandon reports false.
func (a *Activator) abandon(c *cluster, w *waiter, canceled bool) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	defer c.wakeDemand()
	if w.done {
		if !canceled {
			return false
		}
		c.inFlight--
		c.stats.canceled++
		c.admit()
		return true
	}
	if i := slices.Index(c.queue, w); i >= 0 {
		c.queue = slices.Delete(c.queue, i, i+1)
	}
	if canceled {
		c.stats.canceled++
	} else {
		c.stats.timedOut++
	}
	return true
}

// releaser returns the request's release func; calling it more than once is harmless.
func (a *Activator) releaser(c *cluster) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			a.mu.Lock()
			defer a.mu.Unlock()
			c.inFlight--
			c.admit()
			c.wakeDemand()
		})
	}
}

// demandLoop sends the cluster's held count while it has held requests: at
// once when it starts, again within BurstInterval whenever the count grew,
// and every DemandInterval otherwise; once none is held it withdraws the
// count (sends 0) and exits. It is the only sender for its
// cluster, so the autoscaler gets the counts in order.
func (a *Activator) demandLoop(c *cluster) {
	t := a.clock.NewTicker(BurstInterval)
	defer t.Stop()
	for {
		a.mu.Lock()
		held, send, done := c.nextDemand(a.clock.Now())
		ref := c.ref
		a.mu.Unlock()
		if send {
			a.sink.Demand(ref.Namespace, ref.Name, held)
		}
		if done {
			return
		}
		if send && held == 0 {
			continue // withdrawn: look again at once, requests may have come meanwhile
		}
		select {
		case <-t.C():
		case <-c.wake:
		}
	}
}

// wakeDemand has the cluster's demandLoop, if one runs, look at the held
// count now rather than on its next tick: a grown count goes out at once if
// BurstInterval passed, and an empty queue is withdrawn at once. Call with
// a.mu held.
func (c *cluster) wakeDemand() {
	if !c.demanding {
		return
	}
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// nextDemand decides what demandLoop sends at now. Call with a.mu held.
func (c *cluster) nextDemand(now time.Time) (held int, send, done bool) {
	n := len(c.queue)
	if n == 0 {
		if c.reported > 0 {
			c.reported, c.lastDemand = 0, now
			return 0, true, false
		}
		c.demanding = false
		return 0, false, true
	}
	since := now.Sub(c.lastDemand)
	switch {
	case c.reported == 0, // the first held request: no wait
		n > c.reported && since >= BurstInterval, // grew: report the burst in full
		since >= DemandInterval:                  // refresh before the autoscaler forgets it
		c.reported, c.lastDemand = n, now
		return n, true, false
	}
	return 0, false, false
}

// ClusterEndpointsChanged records how many ready (HEALTHY) endpoints a
// cluster has now, and releases held requests in arrival order as far as
// concurrency allows. The proxy calls it on every EDS update.
func (a *Activator) ClusterEndpointsChanged(cluster string, ready int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.cluster(cluster)
	c.ready = ready
	c.admit()
	c.wakeDemand()
}

// Pending returns how many requests wait for cluster.
func (a *Activator) Pending(cluster string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.clusters[cluster]; ok {
		return len(c.queue)
	}
	return 0
}

// InFlight returns how many requests admitted through Hold are not yet released.
func (a *Activator) InFlight(cluster string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.clusters[cluster]; ok {
		return c.inFlight
	}
	return 0
}
