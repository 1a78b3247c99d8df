package config

import (
	"slices"
	"time"

	"github.com/weftmesh/weft/contract"
)

// AsyncPolicy is one function's asynchronous-call policy, the MeshFunction's spec.async and
// spec.timeout as carried in its cluster metadata, with the CRD's defaults filled in.
// sidecar/async's publisher and consumer run by it.
type AsyncPolicy struct {
	// Enabled makes every call to the function asynchronous; without it callers opt in per
	// request with "Prefer: respond-async".
	Enabled bool
	// MaxAttempts is how many times a call runs before it is dead-lettered.
	MaxAttempts int
	// Backoff before the first retry, doubling per attempt up to MaxBackoff.
	Backoff, MaxBackoff time.Duration
	// RetryOn are the app's status codes that are retried. Connection failures and timeouts
	// are always retried; every other status is final.
	RetryOn []int
	// MaxAge of a call since it was accepted; older calls are dead-lettered unrun.
	MaxAge time.Duration
	// DeadLetter keeps failed calls in WEFT_DEAD; without it they are dropped.
	DeadLetter bool
	// MaxInflight calls one sidecar runs at once.
	MaxInflight int
	// MaxBodyBytes of a call's request body; bigger bodies get 413.
	MaxBodyBytes int64
	// Timeout of one attempt against the app.
	Timeout time.Duration
}

// DefaultAsyncPolicy matches the MeshFunction CRD defaults.
func DefaultAsyncPolicy() AsyncPolicy {
	return AsyncPolicy{
		MaxAttempts:  3,
		Backoff:      time.Second,
		MaxBackoff:   60 * time.Second,
		RetryOn:      []int{429, 500, 502, 503, 504},
		MaxAge:       24 * time.Hour,
		DeadLetter:   true,
		MaxInflight:  10,
		MaxBodyBytes: 1 << 20,
		Timeout:      300 * time.Second,
	}
}

// Retryable reports whether the app's status is in RetryOn.
func (c AsyncPolicy) Retryable(status int) bool { return slices.Contains(c.RetryOn, status) }

// asyncPolicy fills DefaultAsyncPolicy's values into what the metadata left unset, so an
// older control plane that sends only "async": true still works.
func asyncPolicy(m contract.FunctionMeta) AsyncPolicy {
	c := DefaultAsyncPolicy()
	a := m.Async
	c.Enabled = a.Enabled
	if m.Timeout > 0 {
		c.Timeout = m.Timeout
	}
	if a.MaxAttempts > 0 {
		c.MaxAttempts = int(a.MaxAttempts)
	}
	if a.MaxInflight > 0 {
		c.MaxInflight = int(a.MaxInflight)
	}
	if a.MaxBodyBytes > 0 {
		c.MaxBodyBytes = a.MaxBodyBytes
	}
	for _, d := range []struct{ src, dst *time.Duration }{{&a.Backoff, &c.Backoff}, {&a.MaxBackoff, &c.MaxBackoff}, {&a.MaxAge, &c.MaxAge}} {
		if *d.src > 0 {
			*d.dst = *d.src
		}
	}
	if a.DeadLetter != nil {
		c.DeadLetter = *a.DeadLetter
	}
	if a.RetryOn != nil {
		c.RetryOn = nil
		for _, code := range a.RetryOn {
			c.RetryOn = append(c.RetryOn, int(code))
		}
	}
	if c.MaxBackoff < c.Backoff {
		c.MaxBackoff = c.Backoff
	}
	return c
}
