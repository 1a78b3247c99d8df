package peer

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/weftmesh/weft/internal/autoscale"
	"github.com/weftmesh/weft/internal/xds"
)

// recording is a SignalSink that counts what reaches it.
type recording struct{ stats, pokes, held atomic.Int32 }

func (r *recording) Record(autoscale.Stat) bool                   { r.stats.Add(1); return true }
func (r *recording) Poke(autoscale.FunctionKey) bool              { r.pokes.Add(1); return true }
func (r *recording) Held(autoscale.FunctionKey, string, int) bool { r.held.Add(1); return true }

func (r *recording) String() string {
	return fmt.Sprintf("%d stats, %d pokes, %d held", r.stats.Load(), r.pokes.Load(), r.held.Load())
}

// leadingSinceZero reports whether the Hub's Start has not run yet.
func (h *Hub) leadingSinceZero() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.leadingSince.IsZero()
}

// A follower without a leader keeps at most MaxBufferedStats stats (the newest) and one
// demand entry per function and caller (the latest count), and drops stats older than
// MaxStatAge when it sends.
func TestForwarderBuffersAreBounded(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	local := &recording{}
	f := &Forwarder{Local: local, Elected: make(chan struct{}), Clock: clk}
	fn := autoscale.FunctionKey{Namespace: "ns", Name: "fn"}
	for i := range MaxBufferedStats + 500 {
		f.Record(autoscale.Stat{Function: fn, Pod: fmt.Sprintf("p-%d", i)})
	}
	for i := range 3 * MaxBufferedDemands {
		f.Held(fn, fmt.Sprintf("caller-%d", i%MaxBufferedDemands), i)
	}
	f.Held(autoscale.FunctionKey{Namespace: "ns", Name: "other"}, "one-too-many", 1)
	if local.stats.Load()+local.pokes.Load()+local.held.Load() != 0 {
		t.Fatalf("a follower applied signals locally: %s", local)
	}
	b, _ := f.take()
	if len(b.Stats) != MaxBufferedStats || b.Stats[0].Pod != "p-500" {
		t.Errorf("buffered %d stats from %s, want the newest %d from p-500", len(b.Stats), b.Stats[0].Pod, MaxBufferedStats)
	}
	if len(b.Demand) != MaxBufferedDemands {
		t.Errorf("buffered %d demand entries, want %d", len(b.Demand), MaxBufferedDemands)
	}
	for _, d := range b.Demand {
		if d.Name == "other" {
			t.Fatal("a demand entry past the bound was kept")
		}
		if *d.Held < 2*MaxBufferedDemands {
			t.Fatalf("%s's held count %d is not its latest", d.Caller, *d.Held)
		}
	}
	// A failed send puts the batch back; by the next try its stats are too old to count.
	f.putBack(b, false)
	clk.Step(MaxStatAge + time.Second)
	if b, _ := f.take(); len(b.Stats) != 0 || len(b.Demand) != MaxBufferedDemands {
		t.Errorf("after %s: %d stats, %d demand entries; want 0 and %d", MaxStatAge, len(b.Stats), len(b.Demand), MaxBufferedDemands)
	}
}

// On the leader the Forwarder is the local autoscaler, and what it buffered as a follower
// is applied there once its replica leads.
func TestForwarderAppliesItsBufferOnElection(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	local := &recording{}
	elected := make(chan struct{})
	f := &Forwarder{Local: local, Elected: elected, Clock: clk,
		Leader: LeaderFinderFunc(func(context.Context) (string, error) { return "", nil })}
	fn := autoscale.FunctionKey{Namespace: "ns", Name: "fn"}
	f.Record(autoscale.Stat{Function: fn, Pod: "p"})
	f.Poke(fn)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Start(ctx) }()
	close(elected)
	f.poke()
	deadline := time.Now().Add(5 * time.Second)
	for local.stats.Load()+local.pokes.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		f.poke()
	}
	cancel()
	<-done
	if local.stats.Load() != 1 || local.pokes.Load() != 1 {
		t.Fatalf("after election the local autoscaler got %s, want the buffered stat and poke", local)
	}
	f.Held(fn, "c", 3)
	if local.held.Load() != 1 {
		t.Fatalf("the leader's Held did not reach the local autoscaler: %s", local)
	}
}

type localNodes struct {
	nodes   []xds.NodeState
	drained bool
}

func (l localNodes) Nodes() []xds.NodeState            { return l.nodes }
func (l localNodes) Drained(types.NamespacedName) bool { return l.drained }

// A follower's report counts until it is ReportTTL old: a replica that died no longer
// holds up the hand-off nor counts in status.
func TestHubForgetsReportsOfDeadReplicas(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
	elected := make(chan struct{})
	close(elected)
	h := &Hub{Local: localNodes{nodes: []xds.NodeState{{ID: "a.ns"}}, drained: true}, Elected: elected, Clock: clk}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = h.Start(ctx) }()
	fn := types.NamespacedName{Namespace: "ns", Name: "fn"}
	stale := xds.NodeState{ID: "b.ns", Acked: map[string]string{resourcev3.EndpointType: "v1"}, Want: map[string]string{resourcev3.EndpointType: "v2"}}
	dup := xds.NodeState{ID: "a.ns", Acked: map[string]string{}, Want: map[string]string{resourcev3.EndpointType: "v9"}}
	if _, err := h.HandleReport(ctx, &Report{Replica: "r2", Nodes: []xds.NodeState{stale, dup}}); err != nil {
		t.Fatal(err)
	}
	for h.leadingSinceZero() {
		time.Sleep(time.Millisecond)
	}
	clk.Step(ReportInterval)
	if got := h.Nodes(); len(got) != 2 || got[0].ID != "a.ns" || got[0].Want != nil || got[1].ID != "b.ns" {
		t.Fatalf("Nodes = %+v, want the local a.ns (not the report's copy) and the reported b.ns", got)
	}
	if h.Drained(fn) {
		t.Fatal("Drained while a follower's sidecar has not ACKed its endpoints")
	}
	clk.Step(ReportTTL)
	if got := h.Nodes(); len(got) != 1 {
		t.Fatalf("Nodes after the report expired = %+v, want only the local sidecar", got)
	}
	if !h.Drained(fn) {
		t.Fatal("an expired report still holds up the hand-off")
	}
	if _, err := h.HandleReport(ctx, &Report{}); err == nil {
		t.Fatal("a report without a replica name was taken")
	}
}
