package queue_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats.go/jetstream"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/queue"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
)

// series reads every series of name from controller-runtime's registry (what the manager
// serves), keyed namespace/name.
func series(t *testing.T, name string) map[string]float64 {
	t.Helper()
	fams, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			var ns, n string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "namespace":
					ns = l.GetValue()
				case "name":
					n = l.GetValue()
				}
			}
			out[ns+"/"+n] = m.GetGauge().GetValue()
		}
	}
	return out
}

// Queued and dead-lettered calls show per function on the manager's registry after a poll;
// a drained function's series goes; a publisher inventing more functions than
// MaxFunctionSeries cannot grow the series past it.
func TestQueueGaugesFromStreamState(t *testing.T) {
	s := startServer(t, "", t.TempDir())
	js := connect(t, s.ClientURL(), "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := queue.EnsureStreams(ctx, js, queue.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	publish := func(subject string, n int) {
		for range n {
			if _, err := js.Publish(ctx, subject, []byte("x")); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(contract.CallsSubject("mq", "a"), 3)
	publish(contract.CallsSubject("mq", "b"), 2)
	publish(contract.DeadSubject("mq", "a"), 4)
	publish("weft.dead.not-a-function", 1) // malformed: ignored

	rec := &sinkRecorder{last: map[queue.FunctionKey]int{}}
	w := &queue.PendingWatcher{JS: js, Sink: rec, Interval: 20 * time.Millisecond, Logger: logr.Discard()}
	wctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = w.Start(wctx); close(done) }()
	defer func() { stop(); <-done }()

	poll.Until(t, 60*time.Second, func() bool {
		p, d := series(t, "weft_queue_pending_messages"), series(t, "weft_queue_dead_letters")
		return p["mq/a"] == 3 && p["mq/b"] == 2 && d["mq/a"] == 4
	}, "waiting for pending mq/a 3, mq/b 2 and dead mq/a 4")
	if d := series(t, "weft_queue_dead_letters"); len(d) != 1 {
		t.Errorf("dead-letter series = %v, want only mq/a", d)
	}

	// Drain mq/b: its series goes, mq/a's stays.
	s2, err := js.Stream(ctx, contract.CallsStream)
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Purge(ctx, jetstream.WithPurgeSubject(contract.CallsSubject("mq", "b"))); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 60*time.Second, func() bool {
		p := series(t, "weft_queue_pending_messages")
		_, has := p["mq/b"]
		return !has && p["mq/a"] == 3
	}, "waiting for mq/b's series to go after its backlog drained")

	// A flood of invented functions is capped; the largest backlog stays visible.
	for i := range queue.MaxFunctionSeries + 50 {
		publish(contract.CallsSubject("flood", fmt.Sprintf("f%d", i)), 1)
	}
	poll.Until(t, 60*time.Second, func() bool {
		n := len(series(t, "weft_queue_pending_messages"))
		return n == queue.MaxFunctionSeries
	}, "waiting for the pending gauge to hold MaxFunctionSeries series")
	if p := series(t, "weft_queue_pending_messages"); p["mq/a"] != 3 {
		t.Errorf("mq/a (3 queued, the largest backlog) was dropped by the cap: %v", p["mq/a"])
	}
}
