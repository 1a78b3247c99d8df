package autoscale_test

import (
	"context"
	"net"
	"runtime"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/weftmesh/weft/internal/autoscale"
	"github.com/weftmesh/weft/sidecar/activator"
)

// A burst of 200 calls held by the caller sidecar's Activator for a function at
// zero reaches the real autoscaler (its gRPC signal server on loopback, the
// sidecar's Reporter on a real connection) as 200 held requests, and with
// containerConcurrency 10 at 100 % utilization that decision asks for
// ceil(200 / 10) = 20 pods. Once endpoints come, the count is withdrawn.
func TestBurstReportedInFullOverGRPC(t *testing.T) {
	const n = 200
	decisions := make(chan autoscale.Decision, 100)
	asClock := testingclock.NewFakeClock(time.Now())
	as := autoscale.NewAutoscaler(asClock, autoscale.ScaleSinkFunc(func(_ autoscale.FunctionKey, d autoscale.Decision) { decisions <- d }))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = as.Start(ctx) }()
	for !asClock.HasWaiters() {
		runtime.Gosched()
	}
	spec := autoscale.DefaultSpec()
	spec.InitialScale, spec.ContainerConcurrency, spec.TargetUtilization = 0, 10, 1
	as.SetSpec(autoscale.FunctionKey{Namespace: "shop", Name: "img"}, spec)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	autoscale.RegisterSignalServer(srv, as)
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rep := activator.NewReporter(conn)
	rep.OnError = func(err error) { t.Errorf("demand not delivered: %v", err) }

	sent := make(chan int, 100)
	fc := testingclock.NewFakeClock(time.Now())
	act := activator.New(fc, activator.DemandSinkFunc(func(ns, name string, held int) {
		rep.Demand(ns, name, held) // synchronous: delivered when it returns
		sent <- held
	}))
	fn := activator.FunctionRef{Namespace: "shop", Name: "img", Cluster: "function|shop/img", MaxPending: 500, ContainerConcurrency: 10}
	results := make(chan error, n)
	for range n {
		go func() {
			release, _, err := act.Hold(context.Background(), fn)
			if err == nil {
				release()
			}
			results <- err
		}()
	}
	for act.Pending(fn.Cluster) < n {
		runtime.Gosched()
	}
	// The first poke went out at once with whatever was held then; the burst in full
	// goes out once BurstInterval passed.
	fc.Step(activator.BurstInterval)
	var seen []autoscale.Decision
	for {
		select {
		case d := <-decisions:
			seen = append(seen, d)
		case <-time.After(10 * time.Second):
			t.Fatalf("no decision with all %d held within 10 s; decisions %+v", n, seen)
		}
		if last := seen[len(seen)-1]; last.Held == n {
			if last.Desired != 20 {
				t.Fatalf("decision on %d held = %d pods (%s), want ceil(200 / 10) = 20", n, last.Desired, last.Reason)
			}
			break
		}
	}
	if len(seen) > 2 {
		t.Errorf("%d decisions before the burst was seen in full, want at most 2 (first request, then all): %+v", len(seen), seen)
	}

	// 20 endpoints: all 200 are admitted, and the sidecar withdraws its count.
	act.ClusterEndpointsChanged(fn.Cluster, 20)
	for range n {
		if err := <-results; err != nil {
			t.Fatalf("held call: %v", err)
		}
	}
	for held := range sent {
		if held == 0 {
			break
		}
	}
	// One tick (2 s) is within the autoscaler's 3 s expiry, so only the withdrawal
	// can have cleared the count.
	asClock.Step(autoscale.TickInterval)
	if d := <-decisions; d.Held != 0 {
		t.Fatalf("held count %d after the calls were released and the count withdrawn, want 0", d.Held)
	}
}
