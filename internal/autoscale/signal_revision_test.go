package autoscale

import (
	"context"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/activator"
)

// A revision's pod reports under its function's name (its sidecar knows only the function);
// the server counts the stat for the pod's revision, and a caller's demand naming the
// revision wakes that revision alone.
func TestSignalsCountForTheRevision(t *testing.T) {
	a, fc, ch := startAutoscaler(t)
	r1, r2 := FunctionKey{"shop", "orders-00001"}, FunctionKey{"shop", "orders-00002"}
	a.SetSpec(r1, zeroSpec())
	a.SetSpec(r2, zeroSpec())

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	RegisterSignalServer(srv, a, RevisionSourceFunc(func(ns, pod string) string {
		if ns == "shop" && pod == "orders-00001-abc-1" {
			return "orders-00001"
		}
		return ""
	}))
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	rep := activator.NewReporter(conn)
	ctx := context.Background()

	if err := rep.Report(ctx, []contract.PodStat{{Namespace: "shop", Name: "orders", Pod: "orders-00001-abc-1", Concurrency: 140, Requests: 10}}); err != nil {
		t.Fatalf("Report: %v", err)
	}
	if err := rep.SendDemand(ctx, "shop", "orders-00002"); err != nil {
		t.Fatalf("SendDemand naming a revision: %v", err)
	}
	if got := <-ch; got.fn != r2 || got.d.Desired != 1 {
		t.Fatalf("immediate decision %v %d, want %v 1", got.fn, got.d.Desired, r2)
	}
	fc.Step(TickInterval)
	first, second := <-ch, <-ch
	if first.fn != r1 || first.d.StableValue != 140 || first.d.Desired != 2 {
		t.Errorf("tick for %v: stable %v desired %d, want %v 140 2 (the pod's stat counted for its revision)", first.fn, first.d.StableValue, first.d.Desired, r1)
	}
	// orders-00002 saw only its own poke (one request), none of orders-00001's 140.
	if second.fn != r2 || second.d.StableValue > 1 {
		t.Errorf("tick for %v: stable %v, want at most 1 (its poke): the other revision's stat leaked", second.fn, second.d.StableValue)
	}
}
