package sandbox

import (
	"context"
	"testing"
	"time"

	testclock "k8s.io/utils/clock/testing"

	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
)

// TestRestartBackoffResetsAfterAHealthyRun pins issue 12 item 8: `weft dev` restarted a
// crashed manager after 2, 4, 8, 16, 30 s and never went back to 2 s, so after a few
// crashes on a long day every later one left the mesh without a control plane for 30 s.
func TestRestartBackoffResetsAfterAHealthyRun(t *testing.T) {
	clk := testclock.NewFakeClock(time.Unix(1000, 0))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	delays := make(chan time.Duration)
	starts := make(chan chan struct{}, 1)
	first := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		superviseLoop(ctx, clk, newRestartBackoff(managerRestartInitial), first,
			func() (<-chan struct{}, error) {
				d := make(chan struct{})
				starts <- d
				return d, nil
			},
			func(d time.Duration) { delays <- d },
			func() {})
	}()
	// crash ends the running process after it ran for ranFor, and returns the delay the
	// supervisor chose and the next process, once it has started.
	running := first
	crash := func(ranFor time.Duration) time.Duration {
		t.Helper()
		clk.Step(ranFor)
		close(running)
		var d time.Duration
		select {
		case d = <-delays:
		case <-time.After(10 * time.Second):
			t.Fatal("the supervisor did not notice the exit")
		}
		poll.Until(t, 10*time.Second, clk.HasWaiters, "the supervisor is not waiting out its back-off")
		clk.Step(d)
		select {
		case running = <-starts:
		case <-time.After(10 * time.Second):
			t.Fatal("the supervisor did not start the process again")
		}
		return d
	}
	want := []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	for i, w := range want {
		if got := crash(time.Second); got != w {
			t.Fatalf("crash %d in a loop: restart after %v, want %v", i+1, got, w)
		}
	}
	if got := crash(restartBackoffResetAfter); got != managerRestartInitial {
		t.Fatalf("a crash after %v up: restart after %v, want the back-off reset to %v", restartBackoffResetAfter, got, managerRestartInitial)
	}
	if got := crash(time.Second); got != 2*managerRestartInitial {
		t.Fatalf("the next quick crash: restart after %v, want %v", got, 2*managerRestartInitial)
	}
	cancel()
	<-stopped
}
