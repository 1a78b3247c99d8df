package activator

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// RetryAfter is the Retry-After a proxy should send with a HoldError: long
// enough not to hammer a function that is starting, short enough that a
// retry soon finds it up.
const RetryAfter = time.Second

// Kinds of HoldError, for errors.Is.
var (
	ErrQueueFull   = errors.New("hold queue full")
	ErrHoldTimeout = errors.New("hold timed out")
)

// HoldError is a held request refused with 503: the function's queue in
// this sidecar was full, or it had no ready endpoint within its hold timeout.
type HoldError struct {
	Function string        // namespace/name
	Pending  int           // requests already queued (queue full)
	Waited   time.Duration // how long it waited (timeout)

	kind       error
	retryAfter time.Duration
}

// Error says what happened and what to do.
func (e *HoldError) Error() string {
	if errors.Is(e.kind, ErrHoldTimeout) {
		return fmt.Sprintf("function %s had no ready endpoint after %s; check that its pods start "+
			"(kubectl get pods -n %s), retry after %s, or raise spec.activation.holdTimeout",
			e.Function, e.Waited, namespaceOf(e.Function), e.retryAfter)
	}
	return fmt.Sprintf("the queue for function %s is full (%d pending requests wait for it to start); "+
		"retry after %s or raise spec.activation.maxPending", e.Function, e.Pending, e.retryAfter)
}

// Unwrap returns ErrQueueFull or ErrHoldTimeout.
func (e *HoldError) Unwrap() error { return e.kind }

// RetryAfter is the delay to advertise in the Retry-After header.
func (e *HoldError) RetryAfter() time.Duration { return e.retryAfter }

func namespaceOf(fn string) string {
	ns, _, _ := strings.Cut(fn, "/")
	return ns
}
