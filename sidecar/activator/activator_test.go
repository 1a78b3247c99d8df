package activator

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	testingclock "k8s.io/utils/clock/testing"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const img = "function|shop/img"

func ref() FunctionRef {
	return FunctionRef{Namespace: "shop", Name: "img", Cluster: img}
}

type fixture struct {
	t       *testing.T
	fc      *testingclock.FakeClock
	a       *Activator
	demands chan string
}

func newFixture(t *testing.T) *fixture {
	fc := testingclock.NewFakeClock(t0)
	demands := make(chan string, 100)
	a := New(fc, DemandSinkFunc(func(ns, name string) { demands <- ns + "/" + name }))
	return &fixture{t: t, fc: fc, a: a, demands: demands}
}

type result struct {
	release func()
	waited  time.Duration
	err     error
}

// hold starts Hold in the background and waits until the request is queued,
// so requests started one after another arrive in that order.
func (f *fixture) hold(ctx context.Context, fn FunctionRef) chan result {
	ch := make(chan result, 1)
	before := f.a.Pending(fn.Cluster)
	go func() {
		rel, waited, err := f.a.Hold(ctx, fn)
		ch <- result{rel, waited, err}
	}()
	for f.a.Pending(fn.Cluster) == before {
		runtime.Gosched()
	}
	return ch
}

// waitWaiters waits until the fake clock has n timers and tickers armed.
func (f *fixture) waitWaiters(n int) {
	for f.fc.Waiters() < n {
		runtime.Gosched()
	}
}

func TestHoldWithReadyEndpointsReturnsAtOnce(t *testing.T) {
	f := newFixture(t)
	f.a.ClusterEndpointsChanged(img, 2)
	rel, waited, err := f.a.Hold(context.Background(), ref())
	if err != nil || waited != 0 {
		t.Fatalf("Hold = %v, %v; want no wait", waited, err)
	}
	if got := f.a.InFlight(img); got != 1 {
		t.Errorf("in flight = %d, want 1", got)
	}
	rel()
	rel() // a second call must not free a second slot
	if got := f.a.InFlight(img); got != 0 {
		t.Errorf("in flight after release = %d, want 0", got)
	}
	if len(f.demands) != 0 {
		t.Errorf("demand sent for a function with endpoints")
	}
}

func TestReleaseInArrivalOrderWithinConcurrency(t *testing.T) {
	f := newFixture(t)
	fn := ref()
	fn.ContainerConcurrency = 1
	ctx := context.Background()
	r1 := f.hold(ctx, fn)
	r2 := f.hold(ctx, fn)
	r3 := f.hold(ctx, fn)
	f.fc.Step(3 * time.Second)

	// One endpoint at containerConcurrency 1: room for exactly one.
	f.a.ClusterEndpointsChanged(img, 1)
	first := <-r1
	if first.err != nil || first.waited != 3*time.Second {
		t.Fatalf("first = %v, %v; want admitted after 3s", first.waited, first.err)
	}
	if got := f.a.Pending(img); got != 2 {
		t.Fatalf("pending = %d, want 2 (1 ready × cc 1 = 1 in flight)", got)
	}
	first.release()
	second := <-r2
	if second.err != nil {
		t.Fatal(second.err)
	}
	if got := f.a.Pending(img); got != 1 {
		t.Fatalf("pending = %d, want 1: release admits exactly the next waiter", got)
	}
	second.release()
	if third := <-r3; third.err != nil {
		t.Fatal(third.err)
	}
	if got := f.a.InFlight(img); got != 1 {
		t.Errorf("in flight = %d, want 1", got)
	}
}

func TestConcurrencyCapCountsWarmRequests(t *testing.T) {
	f := newFixture(t)
	fn := ref()
	fn.ContainerConcurrency = 2
	f.a.ClusterEndpointsChanged(img, 2) // 2 × 2 = 4 in flight
	for i := range 4 {
		if _, waited, err := f.a.Hold(context.Background(), fn); err != nil || waited != 0 {
			t.Fatalf("request %d: %v, %v; want immediate", i, waited, err)
		}
	}
	r5 := f.hold(context.Background(), fn)
	if len(f.demands) != 0 {
		t.Errorf("demand sent though the function has endpoints (only full)")
	}
	f.a.ClusterEndpointsChanged(img, 3) // 3 × 2 = 6
	if r := <-r5; r.err != nil {
		t.Fatal(r.err)
	}
	if got := f.a.InFlight(img); got != 5 {
		t.Errorf("in flight = %d, want 5", got)
	}
}

func TestOverflow(t *testing.T) {
	f := newFixture(t)
	fn := ref()
	fn.MaxPending = 2
	f.hold(context.Background(), fn)
	f.hold(context.Background(), fn)
	_, _, err := f.a.Hold(context.Background(), fn)
	var he *HoldError
	if !errors.As(err, &he) || !errors.Is(err, ErrQueueFull) {
		t.Fatalf("third Hold = %v, want a queue-full HoldError", err)
	}
	if !strings.Contains(err.Error(), "queue for function shop/img is full (2 pending") {
		t.Errorf("message %q does not name the function and its pending count", err)
	}
	if he.RetryAfter() != time.Second {
		t.Errorf("RetryAfter = %v, want 1s", he.RetryAfter())
	}
}

func TestHoldTimeout(t *testing.T) {
	f := newFixture(t)
	fn := ref()
	fn.HoldTimeout = 5 * time.Second
	r := f.hold(context.Background(), fn)
	f.waitWaiters(2) // the hold timer and the demand ticker
	f.fc.Step(5 * time.Second)
	res := <-r
	if !errors.Is(res.err, ErrHoldTimeout) {
		t.Fatalf("Hold = %v, want ErrHoldTimeout", res.err)
	}
	if !strings.Contains(res.err.Error(), "function shop/img had no ready endpoint after 5s") {
		t.Errorf("message %q does not say which function and how long", res.err)
	}
	var he *HoldError
	if errors.As(res.err, &he) && he.RetryAfter() <= 0 {
		t.Errorf("RetryAfter = %v, want > 0", he.RetryAfter())
	}
	if got := f.a.Pending(img); got != 0 {
		t.Errorf("pending after timeout = %d, want 0", got)
	}
	// Endpoints arriving later do not count the timed-out request in flight.
	f.a.ClusterEndpointsChanged(img, 1)
	if got := f.a.InFlight(img); got != 0 {
		t.Errorf("in flight = %d, want 0", got)
	}
}

func (a *Activator) isDemanding(cluster string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.clusters[cluster].demanding
}

func TestDemandSentOnceThenEverySecondWhileHeld(t *testing.T) {
	f := newFixture(t)
	var rs []chan result
	for range 10 {
		rs = append(rs, f.hold(context.Background(), ref()))
	}
	// The first held request sent demand at once, the other nine did not.
	if got := <-f.demands; got != "shop/img" {
		t.Fatalf("demand for %q, want shop/img", got)
	}
	f.waitWaiters(11) // ten hold timers and one demand ticker
	if len(f.demands) != 0 {
		t.Fatalf("%d extra demands for one function within a second", len(f.demands))
	}
	// Still held a second later: demand again, once.
	f.fc.Step(time.Second)
	if got := <-f.demands; got != "shop/img" {
		t.Fatalf("repeat demand for %q", got)
	}
	// Endpoints arrive: everything is released and the demand loop stops.
	f.a.ClusterEndpointsChanged(img, 1)
	for _, r := range rs {
		if res := <-r; res.err != nil || res.waited != time.Second {
			t.Fatalf("held request: %v, %v; want admitted after 1s", res.waited, res.err)
		}
	}
	f.fc.Step(time.Second)
	for f.a.isDemanding(img) {
		runtime.Gosched()
	}
	if len(f.demands) != 0 {
		t.Errorf("demand sent after endpoints arrived")
	}
}

func TestCancelRemovesWaiter(t *testing.T) {
	f := newFixture(t)
	fn := ref()
	fn.ContainerConcurrency = 1
	ctx, cancel := context.WithCancel(context.Background())
	ra := f.hold(ctx, fn)
	rb := f.hold(context.Background(), fn)
	cancel()
	if res := <-ra; !errors.Is(res.err, context.Canceled) {
		t.Fatalf("canceled Hold = %v, want context.Canceled", res.err)
	}
	if got := f.a.Pending(img); got != 1 {
		t.Fatalf("pending = %d, want 1", got)
	}
	// The one slot goes to the request still waiting, not to the canceled one.
	f.a.ClusterEndpointsChanged(img, 1)
	if res := <-rb; res.err != nil {
		t.Fatal(res.err)
	}
	if got := f.a.InFlight(img); got != 1 {
		t.Errorf("in flight = %d, want 1", got)
	}
}

// A waiter admitted in the same instant its caller gives up must hand its
// slot to the next waiter, or the slot leaks until restart.
func TestCancelAfterAdmissionGivesSlotBack(t *testing.T) {
	a := New(testingclock.NewFakeClock(t0), DemandSinkFunc(func(string, string) {}))
	c := a.cluster(img)
	c.ref = FunctionRef{Namespace: "shop", Name: "img", Cluster: img, ContainerConcurrency: 1}
	w1 := &waiter{admitted: make(chan struct{})}
	w2 := &waiter{admitted: make(chan struct{})}
	c.queue = []*waiter{w1, w2}
	a.ClusterEndpointsChanged(img, 1)
	if !w1.done || w2.done {
		t.Fatalf("admission: w1 %v w2 %v, want only w1", w1.done, w2.done)
	}
	a.abandon(c, w1, true)
	if !w2.done || c.inFlight != 1 {
		t.Errorf("after cancel: w2 admitted %v, in flight %d; want true, 1", w2.done, c.inFlight)
	}
}
