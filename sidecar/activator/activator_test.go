package activator

import (
	"context"
	"errors"
	"fmt"
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
	a := New(fc, DemandSinkFunc(func(ns, name string, held int) { demands <- fmt.Sprintf("%s/%s=%d", ns, name, held) }))
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
	// The fifth waits for room, not for a first endpoint: it is load the pods do
	// not see, so it is reported as held all the same.
	if got := f.nextDemand(); got != "shop/img=1" {
		t.Errorf("demand for a request held for room = %q, want shop/img=1", got)
	}
	f.a.ClusterEndpointsChanged(img, 3) // 3 × 2 = 6
	if r := <-r5; r.err != nil {
		t.Fatal(r.err)
	}
	if got := f.nextDemand(); got != "shop/img=0" {
		t.Errorf("demand once it got room = %q, want shop/img=0", got)
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

// nextDemand returns the next demand the sink got, failing after 10 s.
func (f *fixture) nextDemand() string {
	f.t.Helper()
	select {
	case d := <-f.demands:
		return d
	case <-time.After(10 * time.Second):
		f.t.Fatal("no demand sent within 10 s")
		return ""
	}
}

// untilDemand reads demands until want; it fails on more than max before it.
func (f *fixture) untilDemand(want string, max int) (seen []string) {
	f.t.Helper()
	for {
		d := f.nextDemand()
		seen = append(seen, d)
		if d == want {
			return seen
		}
		if len(seen) > max {
			f.t.Fatalf("demands %v, want %q within %d", seen, want, max)
		}
	}
}

func TestDemandCarriesHeldCountThenRefreshesThenWithdraws(t *testing.T) {
	f := newFixture(t)
	var rs []chan result
	for range 10 {
		rs = append(rs, f.hold(context.Background(), ref()))
	}
	// The first held request is reported at once, before the other nine arrive or
	// with them (the sender runs on its own goroutine); the burst is reported in
	// full once BurstInterval passed, not one poke per request.
	first := f.nextDemand()
	f.waitWaiters(11) // ten hold timers and the demand ticker
	if first != "shop/img=10" {
		f.fc.Step(BurstInterval)
		if got := f.nextDemand(); got != "shop/img=10" {
			t.Fatalf("demands %q then %q, want the burst of 10 reported in full after %s", first, got, BurstInterval)
		}
	}
	// Steady: nothing more until DemandInterval since the last send, then a refresh.
	f.fc.Step(DemandInterval / 2)
	f.fc.Step(DemandInterval / 2)
	if got := f.nextDemand(); got != "shop/img=10" {
		t.Fatalf("refresh = %q, want shop/img=10", got)
	}
	if len(f.demands) != 0 {
		t.Fatalf("extra demands %d within a second", len(f.demands))
	}
	// Endpoints arrive: everything is released, the count is withdrawn and the
	// sender stops.
	f.a.ClusterEndpointsChanged(img, 1)
	for _, r := range rs {
		if res := <-r; res.err != nil {
			t.Fatalf("held request: %v", res.err)
		}
	}
	if got := f.nextDemand(); got != "shop/img=0" {
		t.Fatalf("after release: demand %q, want shop/img=0", got)
	}
	for f.a.isDemanding(img) {
		runtime.Gosched()
	}
	f.fc.Step(DemandInterval)
	if len(f.demands) != 0 {
		t.Errorf("demand %q sent after the count was withdrawn", <-f.demands)
	}
}

// Requests that time out shrink the count: a later refresh carries the lower
// count, and the last one gone withdraws it.
func TestDemandFollowsShrinkingQueue(t *testing.T) {
	f := newFixture(t)
	short, long := ref(), ref()
	short.HoldTimeout, long.HoldTimeout = 2*time.Second, time.Minute
	var rs []chan result
	for range 3 {
		rs = append(rs, f.hold(context.Background(), short))
	}
	f.hold(context.Background(), long)
	f.waitWaiters(5) // four hold timers and the demand ticker
	if first := f.nextDemand(); first != "shop/img=4" {
		f.fc.Step(BurstInterval)
		f.untilDemand("shop/img=4", 0)
	}
	// The three short holds time out at 2 s; the next refresh carries 1.
	f.fc.Step(2 * time.Second)
	for _, r := range rs {
		if res := <-r; !errors.Is(res.err, ErrHoldTimeout) {
			t.Fatalf("short hold = %v, want ErrHoldTimeout", res.err)
		}
	}
	f.fc.Step(DemandInterval)
	f.untilDemand("shop/img=1", 2) // a refresh may have gone out before the timeouts
	// The last request times out too: the count is withdrawn.
	f.fc.Step(time.Minute)
	for f.a.Pending(img) != 0 {
		runtime.Gosched()
	}
	f.fc.Step(BurstInterval)
	f.untilDemand("shop/img=0", 2)
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
	a := New(testingclock.NewFakeClock(t0), DemandSinkFunc(func(string, string, int) {}))
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
