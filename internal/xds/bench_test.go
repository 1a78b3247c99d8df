package xds

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/weftmesh/weft/internal/snapshot"
)

// edsClient is a minimal sidecar: it subscribes to the reviews endpoints, ACKs every
// response and reports each EDS version it receives.
func edsClient(ctx context.Context, b *testing.B, addr string, id int, got func(version string)) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Error(err)
		return
	}
	go func() { <-ctx.Done(); _ = conn.Close() }()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		b.Error(err)
		return
	}
	n := node(fmt.Sprintf("client-%d", id), "default", 0)
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: n, TypeUrl: resourcev3.EndpointType, ResourceNames: []string{reviewsCluster}}); err != nil {
		b.Error(err)
		return
	}
	go func() {
		for {
			resp, err := st.Recv()
			if err != nil {
				return
			}
			var cla endpointv3.ClusterLoadAssignment
			if len(resp.GetResources()) != 1 || resp.GetResources()[0].UnmarshalTo(&cla) != nil {
				b.Errorf("unexpected EDS response %v", resp)
				return
			}
			if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(),
				ResponseNonce: resp.GetNonce(), ResourceNames: []string{reviewsCluster}}); err != nil {
				return
			}
			got(resp.GetVersionInfo())
		}
	}()
}

// BenchmarkEndpointPush measures, per op, the time from an EndpointSlice change being set
// in the cache (SetResult → SetSnapshot) until all 1,000 connected ADS clients (real gRPC
// streams over loopback, one connection each) have received the new EDS version.
func BenchmarkEndpointPush(b *testing.B) {
	const clients = 1000
	results := []*snapshot.Result{snapshot.Translate(input("10.0.0.1")), snapshot.Translate(input("10.0.0.1", "10.0.0.2"))}
	c := NewCache()
	ctx := context.Background()
	if err := c.SetResult(ctx, results[0]); err != nil {
		b.Fatal(err)
	}
	s := startServer(b, c)
	v := snapshot.ViewFromNode(node("x", "default", 0))

	var mu sync.Mutex
	var want string
	var have atomic.Int64
	done := make(chan struct{}, 1)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	initial := make(chan struct{}, clients)
	for i := 0; i < clients; i++ {
		first := true
		edsClient(cctx, b, s.Addr().String(), i, func(ver string) {
			if first {
				first = false
				initial <- struct{}{}
				return
			}
			mu.Lock()
			ok := ver == want
			mu.Unlock()
			if ok && have.Add(1) == clients {
				done <- struct{}{}
			}
		})
	}
	for i := 0; i < clients; i++ {
		<-initial
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		next := results[(i+1)%2]
		snap, err := next.Snapshot(v)
		if err != nil {
			b.Fatal(err)
		}
		mu.Lock()
		want = snap.GetVersion(resourcev3.EndpointType)
		mu.Unlock()
		have.Store(0)
		if err := c.SetResult(ctx, next); err != nil {
			b.Fatal(err)
		}
		<-done
	}
	b.StopTimer()
	b.ReportMetric(float64(clients), "clients")
}
