package autoscale

import (
	"context"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/activator"
)

func TestSignalServerOverGRPC(t *testing.T) {
	a, fc, ch := startAutoscaler(t)
	warm := FunctionKey{"shop", "orders"}
	cold := FunctionKey{"shop", "thumbnails"}
	a.SetSpec(warm, zeroSpec())
	a.SetSpec(cold, zeroSpec())

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	RegisterSignalServer(srv, a)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	r := activator.NewReporter(conn)
	ctx := context.Background()

	// Two pods of shop/orders at 70 each: 140 → 2 pods on the next tick.
	if err := r.Report(ctx, []contract.PodStat{
		{Namespace: "shop", Name: "orders", Pod: "orders-1", Concurrency: 70, Requests: 10},
		{Namespace: "shop", Name: "orders", Pod: "orders-2", Concurrency: 70, Requests: 10, InFlight: 3},
	}); err != nil {
		t.Fatalf("Report: %v", err)
	}

	// A demand poke for shop/thumbnails decides at once, without a tick.
	if err := r.SendDemand(ctx, "shop", "thumbnails"); err != nil {
		t.Fatalf("SendDemand: %v", err)
	}
	got := <-ch
	if got.fn != cold || got.d.Desired != 1 {
		t.Fatalf("immediate decision = %v %d, want %v 1", got.fn, got.d.Desired, cold)
	}

	fc.Step(TickInterval)
	orders, thumbs := <-ch, <-ch
	if orders.fn != warm || orders.d.StableValue != 140 || orders.d.Desired != 2 {
		t.Errorf("tick for %v: stable %v desired %d, want %v 140 2", orders.fn, orders.d.StableValue, orders.d.Desired, warm)
	}
	if thumbs.fn != cold || thumbs.d.Desired != 1 {
		t.Errorf("tick for %v: desired %d, want %v 1", thumbs.fn, thumbs.d.Desired, cold)
	}

	// Demand for a function the manager does not know is refused with a
	// message that says what to check.
	err = r.SendDemand(ctx, "shop", "nope")
	if status.Code(err) != codes.NotFound {
		t.Errorf("SendDemand(unknown) = %v, want NotFound", err)
	}
}
