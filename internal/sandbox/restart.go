package sandbox

import (
	"context"
	"time"

	"k8s.io/utils/clock"
)

// restartBackoff is the delay before a crashed process is started again: doubling from
// initial up to max, and back to initial once a run has lasted resetAfter, as the
// kubelet's CrashLoopBackOff resets after ten minutes of running. Without the reset a
// manager that crashed five times over a day would be left down 30 s on every later crash
// (issue 12 item 8).
type restartBackoff struct {
	initial, max, resetAfter time.Duration
	next                     time.Duration
}

// Restart back-offs of the local mesh. A process that stayed up a minute ran healthily:
// its next crash is a new incident, not part of a crash loop.
const (
	managerRestartInitial    = 2 * time.Second
	containerRestartInitial  = time.Second
	restartBackoffMax        = 30 * time.Second
	restartBackoffResetAfter = 60 * time.Second
)

func newRestartBackoff(initial time.Duration) *restartBackoff {
	return &restartBackoff{initial: initial, max: restartBackoffMax, resetAfter: restartBackoffResetAfter}
}

// after returns the delay before the next start of a process that ran for ranFor.
func (b *restartBackoff) after(ranFor time.Duration) time.Duration {
	if b.next == 0 || ranFor >= b.resetAfter {
		b.next = b.initial
	}
	d := b.next
	b.next = min(2*b.next, b.max)
	return d
}

// superviseLoop starts a process with start, waits for it to exit (done closes), and
// starts it again after the back-off, until ctx ends. exited hears each exit and the delay
// before the restart; stop stops the process in force when ctx ends.
func superviseLoop(ctx context.Context, clk clock.Clock, b *restartBackoff, done <-chan struct{},
	start func() (<-chan struct{}, error), exited func(delay time.Duration), stop func()) {
	startedAt := clk.Now()
	for {
		select {
		case <-ctx.Done():
			stop()
			return
		case <-done:
		}
		d := b.after(clk.Since(startedAt))
		exited(d)
		select {
		case <-ctx.Done():
			return
		case <-clk.After(d):
		}
		startedAt = clk.Now()
		if nd, err := start(); err == nil {
			done = nd
		} else {
			// Could not even start it: that counts as a crash at once.
			closed := make(chan struct{})
			close(closed)
			done = closed
		}
	}
}
