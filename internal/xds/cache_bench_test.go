package xds

import (
	"context"
	"fmt"
	"testing"

	"github.com/weftmesh/weft/internal/snapshot"
)

// BenchmarkSetResult measures the translation path's cache step: installing a new
// translation in which the endpoints changed, for 100 connected views (each gets a new EDS
// version, so each SetSnapshot is counted and stamped for the push-latency metric).
func BenchmarkSetResult(b *testing.B) {
	const views = 100
	results := []*snapshot.Result{snapshot.Translate(input("10.0.0.1")), snapshot.Translate(input("10.0.0.1", "10.0.0.2"))}
	c := NewCache()
	ctx := context.Background()
	for i := 0; i < views; i++ {
		if err := c.addNode(ctx, snapshot.ViewFromNode(node(fmt.Sprintf("pod-%d", i), fmt.Sprintf("ns-%d", i), 0))); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := c.SetResult(ctx, results[i%2]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(views, "views")
}

// BenchmarkMetricsPerPush measures what the metrics add per xDS event: counting a response
// sent (recordPush) and, per ACK, the push-latency and convergence bookkeeping (observeAck).
func BenchmarkMetricsPerPush(b *testing.B) {
	c := NewCache()
	ctx := context.Background()
	if err := c.SetResult(ctx, snapshot.Translate(input("10.0.0.1"))); err != nil {
		b.Fatal(err)
	}
	n := node("bench-1", "default", 0)
	v := snapshot.ViewFromNode(n)
	if err := c.addNode(ctx, v); err != nil {
		b.Fatal(err)
	}
	cb := &callbacks{cache: c, tracker: newTracker()}
	cb.tracker.open(sotwStream(1), n.GetId(), v, false)
	vers := c.Versions(v)
	for _, t := range Types {
		cb.tracker.ack(sotwStream(1), t, vers[t])
	}
	b.Run("recordPush", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			recordPush(Types[i%len(Types)])
		}
	})
	b.Run("observeAck", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			t := Types[i%len(Types)]
			cb.observeAck(sotwStream(1), t, vers[t])
		}
	})
}
