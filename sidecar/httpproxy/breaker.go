package httpproxy

import (
	"context"
	"sync/atomic"
)

// QueueDepthFactor is how many requests per unit of capacity may wait for a slot before the
// inbound listener answers 503, as Knative's queue-proxy does (queue depth 10 × CC).
const QueueDepthFactor = 10

// breaker enforces a function's containerConcurrency in its own pod's sidecar: capacity
// requests run at once, up to QueueDepthFactor × capacity more wait in arrival order, the
// rest are refused at once. A full queue means the function is overloaded, and a fast 503
// lets the caller's retry policy pick another pod instead of piling up here.
type breaker struct {
	slots    chan struct{}
	admitted atomic.Int64 // running + waiting
	limit    int64
}

func newBreaker(capacity int) *breaker {
	return &breaker{slots: make(chan struct{}, capacity), limit: int64(capacity * (1 + QueueDepthFactor))}
}

// acquire waits for a slot. It returns false at once when the queue is full, or when ctx
// ends while waiting; a true return must be paired with release.
func (b *breaker) acquire(ctx context.Context) bool {
	if !b.admit() {
		return false
	}
	select {
	case b.slots <- struct{}{}:
		return true
	case <-ctx.Done():
		b.admitted.Add(-1)
		return false
	}
}

// tryAcquire takes a slot only if one is free now and nobody waits for it (a released
// slot goes straight to the longest waiter). The event loop uses it: a request that would
// have to wait is served by the goroutine path, which can.
func (b *breaker) tryAcquire() bool {
	if !b.admit() {
		return false
	}
	select {
	case b.slots <- struct{}{}:
		return true
	default:
		b.admitted.Add(-1)
		return false
	}
}

// admit counts a request in (running or waiting), unless the queue is full.
func (b *breaker) admit() bool {
	if b.admitted.Add(1) > b.limit {
		b.admitted.Add(-1)
		return false
	}
	return true
}

func (b *breaker) release() {
	<-b.slots
	b.admitted.Add(-1)
}

// SetInboundConcurrency sets the containerConcurrency the inbound listener enforces; 0 means
// no limit. Requests already admitted finish under the limit they were admitted with.
func (p *Proxy) SetInboundConcurrency(cc int) {
	if cur := p.breaker.Load(); (cur == nil && cc <= 0) || (cur != nil && cap(cur.slots) == cc) {
		return
	}
	if cc <= 0 {
		p.breaker.Store(nil)
		return
	}
	p.breaker.Store(newBreaker(cc))
}
