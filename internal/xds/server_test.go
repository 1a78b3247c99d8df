package xds

import (
	"context"
	"fmt"
	"net"
	"sort"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	sotwv3 "github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/snapshot"
	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
	"github.com/weftmesh/weft/sidecar/xdsclient"
)

// input is one MeshRoute "reviews" → Service reviews:9080 with the given endpoint IPs.
func input(ips ...string) *snapshot.Input {
	in := &snapshot.Input{
		MeshRoutes: []meshv1alpha1.MeshRoute{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "reviews", Generation: 1},
			Spec: meshv1alpha1.MeshRouteSpec{Hosts: []string{"reviews"}, HTTP: []meshv1alpha1.HTTPRule{{
				Route: []meshv1alpha1.RouteDestination{{Destination: meshv1alpha1.Destination{Service: "reviews"}, Weight: 1}}}}},
		}},
		Services: []corev1.Service{{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "reviews"},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 9080, TargetPort: intstr.FromInt32(8080)}}}}},
	}
	es := discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "reviews-1",
		Labels: map[string]string{discoveryv1.LabelServiceName: "reviews"}},
		AddressType: discoveryv1.AddressTypeIPv4, Ports: []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080)}}}
	for _, ip := range ips {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	in.EndpointSlices = []discoveryv1.EndpointSlice{es}
	return in
}

const reviewsCluster = "outbound|9080||reviews.default.svc.cluster.local|default/reviews"

// defaultReviewsCluster is the reviews Service's own cluster, which every Service gets.
const defaultReviewsCluster = "outbound|9080||reviews.default.svc.cluster.local"

func node(pod, ns string, appPort int) *corev3.Node {
	md, err := structpb.NewStruct(map[string]any{"namespace": ns, "pod": pod, "appPort": float64(appPort),
		"labels": map[string]any{"app": "productpage"}})
	if err != nil {
		panic(err)
	}
	return &corev3.Node{Id: pod + "." + ns, Metadata: md}
}

// startServer runs a Server on 127.0.0.1 until the test ends.
func startServer(t testing.TB, c *Cache) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(c, Options{Listener: ln})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server stopped with %v", err)
		}
	})
	<-s.Ready()
	return s
}

// The sidecar's own xDS client receives exactly the translated config, then the new
// endpoints after an EndpointSlice change, and its ACKs make the route count as synced.
func TestSidecarReceivesSnapshotAndEndpointUpdate(t *testing.T) {
	c := NewCache()
	ctx := context.Background()
	if err := c.SetResult(ctx, snapshot.Translate(input("10.0.0.1"))); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, c)
	cl := xdsclient.New(xdsclient.Options{Address: s.Addr().String(), Node: node("productpage-1", "default", 9080)})
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = cl.Run(cctx) }()

	endpointsOf := func() []string {
		cfg := cl.Current()
		if cfg == nil || cfg.Clusters[reviewsCluster] == nil {
			return nil
		}
		var out []string
		for _, e := range cfg.Clusters[reviewsCluster].Endpoints {
			out = append(out, e.Address)
		}
		return out
	}
	poll.Until(t, 10*time.Second, func() bool { return len(endpointsOf()) == 1 }, "waiting for the first config")
	cfg := cl.Current()
	var listeners []string
	for _, l := range cfg.HTTPListeners {
		listeners = append(listeners, l.Name+"@"+l.Address)
	}
	if got, want := fmt.Sprint(listeners), "[inbound_http@0.0.0.0:15006 outbound_http|80@ outbound_http|9080@ outbound_http@127.0.0.1:15001]"; got != want {
		// the per-port HTTP chains of the outbound listener are served unbound, behind it
		t.Errorf("listeners = %s, want %s", got, want)
	}
	var clusters []string
	for name := range cfg.Clusters {
		clusters = append(clusters, name)
	}
	sort.Strings(clusters)
	if got, want := fmt.Sprint(clusters), "[BlackHoleCluster InboundPassthroughCluster PassthroughCluster inbound|9080 "+
		defaultReviewsCluster+" "+reviewsCluster+"]"; got != want {
		t.Errorf("clusters = %s, want %s", got, want)
	}
	if got := endpointsOf(); got[0] != "10.0.0.1:8080" {
		t.Errorf("endpoints = %v", got)
	}
	before := c.Versions(snapshot.ViewFromNode(node("productpage-1", "default", 9080)))

	if err := c.SetResult(ctx, snapshot.Translate(input("10.0.0.1", "10.0.0.2"))); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, func() bool { return len(endpointsOf()) == 2 }, "waiting for the new endpoints")
	after := c.Versions(snapshot.ViewFromNode(node("productpage-1", "default", 9080)))
	for _, ty := range Types {
		if changed := before[ty] != after[ty]; changed != (ty == resourcev3.EndpointType) {
			t.Errorf("%s version changed=%v after an endpoint-only change", ty, changed)
		}
	}
	poll.Until(t, 10*time.Second, func() bool {
		st := Sync(c.Result(), s.Nodes(), c)[snapshot.ObjectKey{Kind: snapshot.KindMeshRoute, Namespace: "default", Name: "reviews"}]
		return st.Subscribed == 1 && st.Synced == 1 && st.Rejected == 0
	}, "waiting for the route to count as synced")
}

// adsStream opens a raw ADS stream for tests that must send exactly what they want.
func adsStream(t testing.TB, addr string) discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// nackThenProbe subscribes to CDS, NACKs the first response, then subscribes to LDS and
// returns the type of the next response. ADS handles one stream's requests in order and
// queues responses in order, so if the NACK had made the server re-send CDS, that CDS
// response would come before the LDS one.
func nackThenProbe(t *testing.T, addr string) (next string, rejected string) {
	n := node("web-1", "default", 0)
	st := adsStream(t, addr)
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: n, TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetTypeUrl() != resourcev3.ClusterType {
		t.Fatalf("first response is %s, want CDS", resp.GetTypeUrl())
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: n, TypeUrl: resourcev3.ClusterType, ResponseNonce: resp.GetNonce(),
		ErrorDetail: &rpcstatus.Status{Code: 3, Message: "cluster x: field y is not supported"}}); err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: n, TypeUrl: resourcev3.ListenerType}); err != nil {
		t.Fatal(err)
	}
	probe, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	return probe.GetTypeUrl(), resp.GetVersionInfo()
}

// Regression test for the NACK loop (go-control-plane#962): a plain go-control-plane server
// answers a NACK by re-sending the version it rejected; Weft's does not, and records the
// rejection for status instead.
func TestNACKedVersionIsNotResent(t *testing.T) {
	ctx := context.Background()
	t.Run("plain go-control-plane re-sends", func(t *testing.T) {
		c := NewCache()
		if err := c.SetResult(ctx, snapshot.Translate(input("10.0.0.1"))); err != nil {
			t.Fatal(err)
		}
		if err := c.addNode(ctx, snapshot.ViewFromNode(node("web-1", "default", 0))); err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		g := grpc.NewServer()
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, serverv3.NewServer(sctx, c.cache, nil, sotwv3.WithOrderedADS()))
		go func() { _ = g.Serve(ln) }()
		defer g.Stop()
		if next, _ := nackThenProbe(t, ln.Addr().String()); next != resourcev3.ClusterType {
			t.Fatalf("expected upstream to re-send CDS after a NACK (the loop this package prevents); got %s first", next)
		}
	})
	t.Run("weft waits for a new version", func(t *testing.T) {
		c := NewCache()
		if err := c.SetResult(ctx, snapshot.Translate(input("10.0.0.1"))); err != nil {
			t.Fatal(err)
		}
		s := startServer(t, c)
		next, rejected := nackThenProbe(t, s.Addr().String())
		if next != resourcev3.ListenerType {
			t.Fatalf("after a NACK the server sent %s first; the rejected CDS version was re-sent", next)
		}
		nodes := s.Nodes()
		if len(nodes) != 1 || nodes[0].Rejected[resourcev3.ClusterType].Version != rejected {
			t.Fatalf("node state = %+v, want CDS version %s rejected", nodes, rejected)
		}
		st := Sync(c.Result(), nodes, c)[snapshot.ObjectKey{Kind: snapshot.KindMeshRoute, Namespace: "default", Name: "reviews"}]
		if st.Rejected != 1 || st.LastRejection != "web-1.default: cluster x: field y is not supported" {
			t.Errorf("sync status = %+v", st)
		}
	})
}

// A delta (incremental) ADS client gets the same clusters from the same cache.
func TestDeltaADS(t *testing.T) {
	c := NewCache()
	if err := c.SetResult(context.Background(), snapshot.Translate(input("10.0.0.1"))); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, c)
	conn, err := grpc.NewClient(s.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node("web-2", "default", 0), TypeUrl: resourcev3.ClusterType,
		ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range resp.GetResources() {
		var cl clusterv3.Cluster
		if err := r.GetResource().UnmarshalTo(&cl); err != nil {
			t.Fatal(err)
		}
		if err := config.Validate(resourcev3.ClusterType, &cl); err != nil {
			t.Errorf("sidecar would reject %s: %v", cl.GetName(), err)
		}
		names = append(names, cl.GetName())
	}
	sort.Strings(names)
	if fmt.Sprint(names) != "[BlackHoleCluster InboundPassthroughCluster PassthroughCluster "+defaultReviewsCluster+" "+reviewsCluster+"]" {
		t.Errorf("delta clusters = %v", names)
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: resp.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, func() bool {
		ns := s.Nodes()
		return len(ns) == 1 && ns[0].Acked[resourcev3.ClusterType] == resp.GetSystemVersionInfo()
	}, "waiting for the delta ACK")
}
