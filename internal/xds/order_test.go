package xds

import (
	"context"
	"sort"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/structpb"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/snapshot"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
)

// When one change touches every type, a sidecar with all four watches open receives CDS,
// EDS, LDS, RDS in that order (make-before-break): clusters and their endpoints exist before
// a listener or route points at them.
//
// go-control-plane in ADS mode answers an EDS watch only when the request names every
// ClusterLoadAssignment in the snapshot; a cluster the client has not subscribed to yet
// holds EDS back until the client re-requests after CDS (the sidecar's xdsclient does, and
// applies a config only once it is complete). So this client subscribes up front to the
// function cluster that the change adds.
func TestPushOrderIsMakeBeforeBreak(t *testing.T) {
	c := NewCache()
	ctx := context.Background()
	if err := c.SetResult(ctx, snapshot.Translate(input("10.0.0.1"))); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, c)
	st := adsStream(t, s.Addr().String())
	n := node("fn-1", "default", 8080)
	n.Metadata.Fields["function"] = structpb.NewStringValue("default/fn")
	// EDS and RDS names: every load assignment and route configuration this pod's view holds
	// after the change (the function's cluster included), so neither watch waits on a name.
	in := input("10.0.0.1", "10.0.0.2")
	in.MeshFunctions = []meshv1alpha1.MeshFunction{{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "fn"},
		Spec: meshv1alpha1.MeshFunctionSpec{Timeout: &meshv1alpha1.Duration{Duration: 45 * time.Second}}}}
	after, err := snapshot.Translate(in).Snapshot(snapshot.ViewFromNode(n))
	if err != nil {
		t.Fatal(err)
	}
	names := map[string][]string{}
	for _, ty := range []string{resourcev3.EndpointType, resourcev3.RouteType} {
		for name := range after.GetResources(ty) {
			names[ty] = append(names[ty], name)
		}
		sort.Strings(names[ty])
	}
	for _, ty := range []string{resourcev3.RouteType, resourcev3.ListenerType, resourcev3.EndpointType, resourcev3.ClusterType} {
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: n, TypeUrl: ty, ResourceNames: names[ty]}); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 4; i++ {
		resp, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(),
			ResponseNonce: resp.GetNonce(), ResourceNames: names[resp.GetTypeUrl()]}); err != nil {
			t.Fatal(err)
		}
	}
	poll.Until(t, 10*time.Second, func() bool { ns := s.Nodes(); return len(ns) == 1 && len(ns[0].Acked) == 4 }, "waiting for four ACKs")

	// One change to every type: the function appears (its cluster: CDS; its endpoints: EDS;
	// its timeout on this pod's inbound listener: LDS; its virtual host: RDS), and reviews
	// gets another endpoint.
	if err := c.SetResult(ctx, snapshot.Translate(in)); err != nil {
		t.Fatal(err)
	}
	var order []string
	for i := 0; i < 4; i++ {
		resp, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		order = append(order, resp.GetTypeUrl())
	}
	want := []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}
	for i := range want {
		if order[i] != want[i] {
			t.Fatalf("push order = %v, want %v", order, want)
		}
	}
}
