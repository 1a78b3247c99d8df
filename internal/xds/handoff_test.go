package xds

import (
	"context"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/snapshot"
	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
	"github.com/weftmesh/weft/sidecar/xdsclient"
)

// withFunction adds MeshFunction default/fn with one endpoint in the given readiness.
func withFunction(in *snapshot.Input, ready bool) *snapshot.Input {
	in.MeshFunctions = []meshv1alpha1.MeshFunction{{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "fn"}}}
	in.EndpointSlices = append(in.EndpointSlices, discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "fn-1", Labels: map[string]string{discoveryv1.LabelServiceName: "fn"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Port: ptr.To[int32](snapshot.InboundPort)}},
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.5.0.1"}, Conditions: discoveryv1.EndpointConditions{
			Ready: ptr.To(ready), Serving: ptr.To(true), Terminating: ptr.To(!ready)}}},
	})
	return in
}

func TestDrainedAfterEveryCallerACKs(t *testing.T) {
	fn := types.NamespacedName{Namespace: "default", Name: "fn"}
	c := NewCache()
	ctx := context.Background()
	if err := c.SetResult(ctx, snapshot.Translate(withFunction(input("10.0.0.1"), true))); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, c)
	cl := xdsclient.New(xdsclient.Options{Address: s.Addr().String(), Node: node("caller-1", "default", 0)})
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = cl.Run(cctx) }()
	poll.Until(t, 10*time.Second, func() bool { return cl.Current() != nil }, "waiting for the caller's config")
	if s.Drained(fn) {
		t.Fatal("Drained while the function has a ready endpoint")
	}
	// The last pod starts terminating: its endpoint becomes DRAINING.
	if err := c.SetResult(ctx, snapshot.Translate(withFunction(input("10.0.0.1"), false))); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, func() bool { return s.Drained(fn) }, "waiting for the hand-off")
	// The ACK goes out just before the client swaps its config in.
	poll.Until(t, 10*time.Second, func() bool {
		eps := cl.Current().Clusters[snapshot.FunctionClusterName("default", "fn")].Endpoints
		return len(eps) == 1 && eps[0].Health == config.Draining
	}, "waiting for the caller to hold the endpoint as draining")
}
