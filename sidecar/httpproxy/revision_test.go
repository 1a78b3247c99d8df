package httpproxy_test

import (
	"context"
	"errors"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/httpproxy"
	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// revisionMeta sets weft.dev/function metadata of one revision's cluster, as the control
// plane does for a MeshFunction with spec.traffic.
func revisionMeta(ns, fn, rev string) st.ClusterOption {
	return func(c *clusterv3.Cluster) {
		m := contract.FunctionMeta{Namespace: ns, Name: fn, Revision: rev, HoldTimeout: 30 * time.Second, MaxPending: 7}
		c.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{contract.FunctionMetadataKey: m.Encode()}}
	}
}

// A call held for a revision at zero is held for that revision's cluster and names the
// revision, so the autoscaler wakes that revision (each scales on its own), not the function.
func TestHoldForARevisionNamesTheRevision(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		cp := st.StartControlPlane(t)
		c1, c2 := "function|default/fn-00001", "function|default/fn-00002"
		cp.Set(st.Snapshot{
			Listeners: []types.Resource{st.OutboundListener()},
			Routes: []types.Resource{st.RouteConfig(st.VirtualHost("default/fn", "fn", "default", []int{80},
				st.Route("default/fn/0/0", st.Prefix("/"), st.Weighted(c2, 100, c1, 0))))},
			Clusters:  []types.Resource{st.EDSCluster(c1, revisionMeta("default", "fn", "fn-00001")), st.EDSCluster(c2, revisionMeta("default", "fn", "fn-00002"))},
			Endpoints: []types.Resource{st.Endpoints(c1), st.Endpoints(c2)},
		})
		got := make(chan httpproxy.FunctionRef, 1)
		h := holderFunc(func(ctx context.Context, fn httpproxy.FunctionRef) (func(), time.Duration, error) {
			got <- fn
			return nil, 0, errors.New("test: not held")
		})
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines, Holder: h}).URL(t, st.OutboundListenerName)
		st.Get(t, client, base, "fn", "/")
		want := httpproxy.FunctionRef{Namespace: "default", Name: "fn-00002", Cluster: c2, HoldTimeout: 30 * time.Second, MaxPending: 7}
		select {
		case ref := <-got:
			if ref != want {
				t.Errorf("holder got %+v, want %+v", ref, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the call was not held")
		}
	})
}
