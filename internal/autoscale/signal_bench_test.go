package autoscale

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/weftmesh/weft/sidecar/activator"
)

// BenchmarkDemandToDecision measures a cold start's first leg: from a caller's sidecar
// sending the demand poke (real gRPC over loopback, the JSON codec) to the autoscaler's
// decision reaching the MeshFunction controller's sink. Each iteration pokes a different
// function at zero, so the per-tick de-duplication never hides one.
func BenchmarkDemandToDecision(b *testing.B) {
	ch := make(chan FunctionKey, 1)
	a := NewAutoscaler(testingclock.NewFakeClock(time.Now()), ScaleSinkFunc(func(fn FunctionKey, d Decision) { ch <- fn }))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = a.Start(ctx) }()
	for i := 0; i < b.N; i++ {
		a.SetSpec(FunctionKey{"bench", fmt.Sprint("fn-", i)}, zeroSpec())
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer()
	RegisterSignalServer(srv, a)
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	r := activator.NewReporter(conn)
	_ = r.SendDemand(ctx, "bench", "warm-up") // connect first; NotFound is fine
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := r.SendDemand(ctx, "bench", fmt.Sprint("fn-", i)); err != nil {
			b.Fatal(err)
		}
		if got := <-ch; got.Name != fmt.Sprint("fn-", i) {
			b.Fatalf("decision for %v", got)
		}
	}
}
