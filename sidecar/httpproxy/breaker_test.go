package httpproxy

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
)

// With capacity 2 the breaker runs 2, queues 20 and refuses the 23rd at once; releasing a
// slot admits a waiter; a waiter whose caller gives up leaves the queue.
func TestBreakerRunsQueuesAndRefuses(t *testing.T) {
	b := newBreaker(2)
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if !b.acquire(ctx) {
			t.Fatalf("acquire %d refused with free slots", i)
		}
	}
	var wg sync.WaitGroup
	admitted := make(chan int, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if b.acquire(ctx) {
				admitted <- i
			}
		}()
	}
	poll.Until(t, 10*time.Second, func() bool { return b.admitted.Load() == 22 }, "fewer than 22 admitted to run or wait")
	if b.acquire(ctx) {
		t.Fatal("the 23rd request was admitted; the queue is 10 × capacity")
	}
	if len(admitted) != 0 {
		t.Fatal("a waiter ran while both slots were taken")
	}
	b.release()
	select {
	case <-admitted:
	case <-time.After(10 * time.Second):
		t.Fatal("releasing a slot admitted no waiter")
	}

	cctx, cancel := context.WithCancel(ctx)
	gaveUp := make(chan bool)
	go func() { gaveUp <- b.acquire(cctx) }()
	// 2 running + 19 waiting + the new waiter.
	poll.Until(t, 10*time.Second, func() bool { return b.admitted.Load() == 22 }, "the new waiter was not admitted to wait (want 22)")
	cancel()
	if <-gaveUp {
		t.Fatal("a canceled waiter was admitted")
	}
	if got := b.admitted.Load(); got != 21 {
		t.Fatalf("after a waiter gave up %d remain admitted, want 21", got)
	}
	// Drain: every admitted request (2 running, 19 waiting) releases in turn.
	for i := 0; i < 21; i++ {
		b.release()
	}
	wg.Wait()
	if b.admitted.Load() != 0 {
		t.Fatalf("%d still admitted after every release", b.admitted.Load())
	}
}

func TestSetInboundConcurrency(t *testing.T) {
	p := New(Options{})
	p.SetInboundConcurrency(0)
	if p.breaker.Load() != nil {
		t.Fatal("containerConcurrency 0 set a limit")
	}
	p.SetInboundConcurrency(4)
	b := p.breaker.Load()
	if b == nil || cap(b.slots) != 4 || b.limit != 44 {
		t.Fatalf("breaker %+v, want 4 slots and a limit of 44", b)
	}
	p.SetInboundConcurrency(4)
	if p.breaker.Load() != b {
		t.Fatal("the same limit replaced the breaker (and its in-flight accounting)")
	}
}
