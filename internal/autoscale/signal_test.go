package autoscale

import (
	"context"
	"math"
	"net"
	"strings"
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

// serveSignals starts a real signal server for a on loopback and returns a
// function that dials a new connection (a new caller sidecar) to it.
func serveSignals(t *testing.T, a *Autoscaler) func() *activator.Reporter {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	RegisterSignalServer(srv, a)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return func() *activator.Reporter {
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return activator.NewReporter(conn)
	}
}

// Two caller sidecars, each on its own connection, hold 120 and 80 calls: the
// autoscaler sums them to 200 and asks for ceil(200 / 10) = 20 pods; a caller's
// refresh replaces its own count.
func TestSignalHeldCountsFromTwoCallersSum(t *testing.T) {
	a, _, ch := startAutoscaler(t)
	fn := FunctionKey{"shop", "burst"}
	a.SetSpec(fn, burstSpec())
	dial := serveSignals(t, a)
	ra, rb := dial(), dial()
	ctx := context.Background()
	if err := ra.SendHeld(ctx, "shop", "burst", 120); err != nil {
		t.Fatalf("SendHeld: %v", err)
	}
	if got := <-ch; got.d.Held != 120 || got.d.Desired != 12 {
		t.Fatalf("decision after caller a = held %d desired %d, want 120 12", got.d.Held, got.d.Desired)
	}
	if err := rb.SendHeld(ctx, "shop", "burst", 80); err != nil {
		t.Fatalf("SendHeld: %v", err)
	}
	if got := <-ch; got.d.Held != 200 || got.d.Desired != 20 {
		t.Fatalf("decision after caller b = held %d desired %d, want 200 20", got.d.Held, got.d.Desired)
	}
	// Caller a refreshes with a higher count: it replaces its 120 (200 - 120 + 150 = 230).
	if err := ra.SendHeld(ctx, "shop", "burst", 150); err != nil {
		t.Fatal(err)
	}
	if got := <-ch; got.d.Held != 230 || got.d.Desired != 23 {
		t.Fatalf("decision after a's refresh = held %d desired %d, want 230 23", got.d.Held, got.d.Desired)
	}
}

// Forged or malformed pokes: a negative count holds nothing, an absurd one asks
// for no more than max scale, an unknown function or namespace is NotFound and
// stored nowhere, and a poke naming no function is InvalidArgument.
func TestSignalDemandRefusesOrClampsBadInput(t *testing.T) {
	a, fc, ch := startAutoscaler(t)
	fn := FunctionKey{"shop", "burst"}
	spec := burstSpec()
	spec.MaxScale = 30
	a.SetSpec(fn, spec)
	r := serveSignals(t, a)()
	ctx := context.Background()

	if err := r.SendHeld(ctx, "shop", "burst", -7); err != nil {
		t.Fatalf("SendHeld(-7) = %v, want accepted and clamped", err)
	}
	if got := <-ch; got.d.Held != 0 {
		t.Errorf("held after a negative count = %d, want 0", got.d.Held)
	}
	fc.Step(TickInterval)
	<-ch
	if err := r.SendHeld(ctx, "shop", "burst", math.MaxInt); err != nil {
		t.Fatalf("SendHeld(MaxInt) = %v", err)
	}
	if got := <-ch; got.d.Desired != 30 || got.d.Held != 300 {
		t.Errorf("absurd count: desired %d held %d, want max scale 30 and 30 × 10 = 300", got.d.Desired, got.d.Held)
	}

	for _, tc := range []struct {
		ns, name string
		code     codes.Code
		msg      string
	}{
		{"shop", "nope", codes.NotFound, "function shop/nope is not known to the autoscaler"},
		{"other", "burst", codes.NotFound, "function other/burst is not known to the autoscaler"},
		{"", "burst", codes.InvalidArgument, "names no namespace or no name"},
		{"shop", "", codes.InvalidArgument, "names no namespace or no name"},
	} {
		for _, send := range []func() error{
			func() error { return r.SendHeld(ctx, tc.ns, tc.name, 50) },
			func() error { return r.SendDemand(ctx, tc.ns, tc.name) },
		} {
			err := send()
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("demand for %q/%q = %v, want %v saying %q", tc.ns, tc.name, err, tc.code, tc.msg)
			}
		}
	}
	// Nothing was stored for them: the functions, once created, hold nothing.
	for _, k := range []FunctionKey{{"shop", "nope"}, {"other", "burst"}} {
		a.SetSpec(k, burstSpec())
	}
	fc.Step(TickInterval)
	for range 3 {
		got := <-ch
		if got.fn != fn && (got.d.Held != 0 || got.d.Desired != 0) {
			t.Errorf("%v after being created: held %d desired %d, want 0 0 (refused pokes are not kept)", got.fn, got.d.Held, got.d.Desired)
		}
	}
}
