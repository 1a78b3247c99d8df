package xds

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/weftmesh/weft/internal/snapshot"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
)

// inputOnPort is input with the reviews Service on another port: the cluster names change,
// so every view's CDS is pushed.
func inputOnPort(port int32) *snapshot.Input {
	in := input("10.0.0.1")
	in.Services[0].Spec.Ports[0].Port = port
	in.Services[0].Spec.Ports[0].TargetPort = intstr.FromInt32(8080)
	return in
}

func dialPlain(t *testing.T, s *Server) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(s.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// Regression (issue 16 item 6): go-control-plane numbers SotW and delta streams from 1 with
// separate counters. A delta and a SotW sidecar holding stream number 1 must both be
// tracked, both get pushes, and the delta one closing must not take the SotW one's record
// (or its view's snapshot) with it.
func TestDeltaAndSotWStreamsSharingANumber(t *testing.T) {
	c := NewCache()
	if err := c.SetResult(context.Background(), snapshot.Translate(inputOnPort(9080))); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, c)
	conn := dialPlain(t, s)
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)

	sctx, scancel := context.WithCancel(context.Background())
	defer scancel()
	sotw, err := ads.StreamAggregatedResources(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := sotw.Send(&discoveryv3.DiscoveryRequest{Node: node("sotw-1", "default", 0), TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	sresp, err := sotw.Recv()
	if err != nil {
		t.Fatal(err)
	}
	sotwAck := func(r *discoveryv3.DiscoveryResponse) {
		t.Helper()
		if err := sotw.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()}); err != nil {
			t.Fatal(err)
		}
	}
	sotwAck(sresp)

	dctx, dcancel := context.WithCancel(context.Background())
	defer dcancel()
	delta, err := ads.DeltaAggregatedResources(dctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := delta.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node("delta-1", "other", 0), TypeUrl: resourcev3.ClusterType,
		ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	dresp, err := delta.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := delta.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: dresp.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	bothAcked := func(sv, dv string) func() bool {
		return func() bool {
			got := map[string]string{}
			for _, n := range s.Nodes() {
				got[n.ID] = n.Acked[resourcev3.ClusterType]
			}
			return len(got) == 2 && got["sotw-1.default"] == sv && got["delta-1.other"] == dv
		}
	}
	poll.Until(t, 10*time.Second, bothAcked(sresp.GetVersionInfo(), dresp.GetSystemVersionInfo()), "both sidecars in status")

	// A change reaches both.
	if err := c.SetResult(context.Background(), snapshot.Translate(inputOnPort(9081))); err != nil {
		t.Fatal(err)
	}
	sresp2, err := sotw.Recv()
	if err != nil || sresp2.GetVersionInfo() == sresp.GetVersionInfo() {
		t.Fatalf("SotW push after the change: %v (version %s)", err, sresp2.GetVersionInfo())
	}
	dresp2, err := delta.Recv()
	if err != nil || len(dresp2.GetResources()) == 0 {
		t.Fatalf("delta push after the change: %v", err)
	}
	sotwAck(sresp2)

	// The delta sidecar goes; the SotW one stays tracked and keeps getting pushes.
	dcancel()
	poll.Until(t, 10*time.Second, func() bool { ns := s.Nodes(); return len(ns) == 1 && ns[0].ID == "sotw-1.default" },
		"the delta stream's close forgets only the delta sidecar")
	if err := c.SetResult(context.Background(), snapshot.Translate(inputOnPort(9082))); err != nil {
		t.Fatal(err)
	}
	type result struct {
		r   *discoveryv3.DiscoveryResponse
		err error
	}
	got := make(chan result, 1)
	go func() { r, err := sotw.Recv(); got <- result{r, err} }()
	select {
	case r := <-got:
		if r.err != nil || r.r.GetVersionInfo() == sresp2.GetVersionInfo() {
			t.Fatalf("SotW push after the delta stream closed: %v", r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the SotW sidecar got no push after the delta stream with its number closed")
	}
}

// A NACK is credited to the stream's node only for types Weft serves: made-up type URLs do
// not grow the node's Rejected (or Acked) map, and an oversized error text is cut.
func TestForgedNACKTypeURLsAreNotRecorded(t *testing.T) {
	c := NewCache()
	if err := c.SetResult(context.Background(), snapshot.Translate(input("10.0.0.1"))); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, c)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(dialPlain(t, s)).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node("nacker-1", "default", 0), TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		typ := fmt.Sprintf("type.googleapis.com/forged.T%d", i)
		if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: typ, ResponseNonce: "n", VersionInfo: "v",
			ErrorDetail: &rpcstatus.Status{Message: "forged"}}); err != nil {
			t.Fatal(err)
		}
	}
	long := strings.Repeat("x", 64<<10)
	if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: resp.GetNonce(),
		ErrorDetail: &rpcstatus.Status{Message: long}}); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, func() bool {
		ns := s.Nodes()
		return len(ns) == 1 && ns[0].Rejected[resourcev3.ClusterType].Version != ""
	}, "the real NACK recorded")
	n := s.Nodes()[0]
	if len(n.Rejected) != 1 || len(n.Acked) > 1 {
		t.Fatalf("forged type URLs were recorded: %d rejected, %d acked types", len(n.Rejected), len(n.Acked))
	}
	if l := len(n.Rejected[resourcev3.ClusterType].Error); l > maxErrorBytes+8 {
		t.Fatalf("a %d-byte NACK text was kept whole (%d bytes)", len(long), l)
	}
}
