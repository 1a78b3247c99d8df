package snapshot

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/config"
)

// The gateway view survives the trip through node metadata the cache keys streams by, and
// is a view of its own: a pod of weft-system that is not the gateway keys elsewhere.
func TestGatewayViewRoundTripsThroughNodeMetadata(t *testing.T) {
	g := GatewayView()
	back := ViewFromNode(&corev3.Node{Id: "weft-gateway-1.weft-system", Metadata: NodeMetadata(g)})
	if !back.Gateway || back.Key() != g.Key() {
		t.Fatalf("round trip: got %+v (key %s), want %+v (key %s)", back, back.Key(), g, g.Key())
	}
	if plain := (View{Namespace: GatewayNamespace}); plain.Key() == g.Key() {
		t.Fatal("the gateway view shares its key with an ordinary weft-system view")
	}
	if v := ViewFromNode(&corev3.Node{Id: "p.default", Metadata: NodeMetadata(View{Namespace: "default"})}); v.Gateway {
		t.Fatal("an ordinary view reads back as the gateway's")
	}
}

func gatewayRoutes(t *testing.T, res *Result) (*routev3.RouteConfiguration, map[string]string) {
	t.Helper()
	snap, err := res.Snapshot(GatewayView())
	if err != nil {
		t.Fatal(err)
	}
	checkSidecarAccepts(t, snap, GatewayView())
	rs := snap.GetResources(resourcev3.RouteType)
	if len(rs) != 1 {
		t.Fatalf("gateway has %d route configurations, want 1", len(rs))
	}
	rc := rs[GatewayRouteName].(*routev3.RouteConfiguration)
	byDomain := map[string]string{}
	for _, vh := range rc.GetVirtualHosts() {
		for _, d := range vh.GetDomains() {
			byDomain[d] = vh.GetName()
		}
	}
	return rc, byDomain
}

// The gateway routes MeshFunction and MeshRoute hosts by their cluster-wide names and
// nothing else: no bare short names (they mean nothing outside a namespace), no
// ClusterIPs, no plain Service; anything else reaches the 404 catch-all.
func TestGatewayServesOnlyMeshObjectHosts(t *testing.T) {
	in, _ := readInput(t, filepath.Join("testdata", "gateway.in.yaml"))
	rc, byDomain := gatewayRoutes(t, Translate(in))
	for _, d := range []string{"hello.default", "hello.default:80", "hello.default.svc.cluster.local", "hello.example.com",
		"reviews.default", "reviews.default:9080", "reviews.default:80", "reviews.example.com"} {
		if byDomain[d] == "" || byDomain[d] == gatewayNotFoundRoute {
			t.Errorf("domain %s is not routed by the gateway", d)
		}
	}
	for _, d := range []string{"hello", "reviews", "plain", "plain.default", "plain.default.svc.cluster.local", "10.96.0.20", "10.96.0.30:9080"} {
		if vh, ok := byDomain[d]; ok {
			t.Errorf("domain %s is routed by the gateway (virtual host %s)", d, vh)
		}
	}
	last := rc.GetVirtualHosts()[len(rc.GetVirtualHosts())-1]
	if last.GetName() != gatewayNotFoundRoute || !slices.Equal(last.GetDomains(), []string{"*"}) {
		t.Fatalf("last virtual host is %s %v, want the catch-all", last.GetName(), last.GetDomains())
	}
	dr := last.GetRoutes()[0].GetDirectResponse()
	if dr.GetStatus() != 404 || !strings.Contains(dr.GetBody().GetInlineString(), "no MeshFunction or MeshRoute serves this Host") {
		t.Fatalf("catch-all answers %d %q", dr.GetStatus(), dr.GetBody().GetInlineString())
	}
}

// Every route the gateway forwards on removes the headers sidecars trust from each other,
// so a forged one never leaves the gateway; a route's own removals are kept.
func TestGatewayRemovesInternalHeadersOnEveryRoute(t *testing.T) {
	in, _ := readInput(t, filepath.Join("testdata", "gateway.in.yaml"))
	rc, _ := gatewayRoutes(t, Translate(in))
	n := 0
	for _, vh := range rc.GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			if r.GetRoute() == nil {
				continue
			}
			n++
			rm := r.GetRequestHeadersToRemove()
			for _, h := range gatewayStrippedHeaders {
				if c := countFold(rm, h); c != 1 {
					t.Errorf("route %s of %s removes %s %d times, want once", r.GetName(), vh.GetName(), h, c)
				}
			}
			if strings.HasPrefix(vh.GetName(), "default/reviews|") && !slices.Contains(rm, "x-user-drop") {
				t.Errorf("route %s lost the MeshRoute's own removal: %v", r.GetName(), rm)
			}
		}
	}
	if n == 0 {
		t.Fatal("no forwarding route in the gateway")
	}
	// The meshed view's routes are untouched (the gateway copies, never edits, shared routes).
	snap, err := Translate(in).Snapshot(View{Namespace: "default"})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range snap.GetResources(resourcev3.RouteType) {
		for _, vh := range m.(*routev3.RouteConfiguration).GetVirtualHosts() {
			for _, r := range vh.GetRoutes() {
				if slices.Contains(r.GetRequestHeadersToRemove(), "x-weft-start-budget-ms") {
					t.Fatalf("meshed route %s of %s removes the gateway's headers", r.GetName(), vh.GetName())
				}
			}
		}
	}
	// A shared Result serves both views: building the gateway first must not leak either.
	res := Translate(in)
	gatewayRoutes(t, res)
	snap, err = res.Snapshot(View{Namespace: "default"})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range snap.GetResources(resourcev3.RouteType) {
		for _, vh := range m.(*routev3.RouteConfiguration).GetVirtualHosts() {
			if vh.GetName() == gatewayNotFoundRoute {
				t.Fatal("the gateway's catch-all reached a meshed view")
			}
		}
	}
}

func countFold(list []string, s string) int {
	n := 0
	for _, l := range list {
		if strings.EqualFold(l, s) {
			n++
		}
	}
	return n
}

// The gateway publishes async calls like a meshed caller, so it gets the queue cluster
// and its credential whenever a function exists, and nothing of the capture or inbound
// side: one listener, on all addresses, port 8080.
func TestGatewayGetsQueueAndOnlyItsListener(t *testing.T) {
	q, err := NewQueue("nats://10.244.0.1:4222", SharedQueueToken("tok"))
	if err != nil {
		t.Fatal(err)
	}
	in, _ := readInput(t, filepath.Join("testdata", "gateway.in.yaml"))
	in.Queue = q
	snap, err := Translate(in).Snapshot(GatewayView())
	if err != nil {
		t.Fatal(err)
	}
	checkSidecarAccepts(t, snap, GatewayView())
	c, ok := snap.GetResources(resourcev3.ClusterType)[contract.QueueClusterName]
	if !ok {
		t.Fatal("the gateway has no queue cluster: async calls through it would fail")
	}
	cfg, err := config.Build(config.Resources{resourcev3.ClusterType: {contract.QueueClusterName: c.(proto.Message)},
		resourcev3.SecretType: secretsOf(snap)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if qm := cfg.Clusters[contract.QueueClusterName].Queue; qm == nil || qm.Token != "tok" {
		t.Fatalf("gateway decoded the queue as %+v", qm)
	}
	ls := snap.GetResources(resourcev3.ListenerType)
	if len(ls) != 1 {
		t.Fatalf("gateway has %d listeners, want 1", len(ls))
	}
	info, err := config.DecodeListener(ls[GatewayListenerName].(*listenerv3.Listener))
	if err != nil {
		t.Fatal(err)
	}
	if info.Address != "0.0.0.0:8080" || info.RDSName != GatewayRouteName {
		t.Fatalf("gateway listener %s routes %s, want 0.0.0.0:8080 and %s", info.Address, info.RDSName, GatewayRouteName)
	}
	// The same bounds as every sidecar HTTP listener: 60 KiB and 100 header fields, a 10 s
	// head timeout, 5 min idle, 10 000 connections.
	want := config.HTTPLimits{MaxHeadBytes: 60 << 10, MaxHeaders: 100, HeadTimeout: 10 * time.Second,
		IdleTimeout: 5 * time.Minute, MaxConnections: 10_000}
	if info.Limits != want {
		t.Fatalf("gateway limits %+v, want the sidecar's %+v", info.Limits, want)
	}

	// Without a function there is nothing to publish to: no credential.
	in.MeshFunctions = nil
	snap, err = Translate(in).Snapshot(GatewayView())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := snap.GetResources(resourcev3.ClusterType)[contract.QueueClusterName]; ok {
		t.Fatal("the gateway got the queue credential in a mesh without functions")
	}
}

// A redis pool never counts the gateway among its sidecars (it never gets pool listeners).
func TestGatewayIncludesNoRedisPool(t *testing.T) {
	in, _ := readInput(t, filepath.Join("testdata", "redis.in.yaml"))
	res := Translate(in)
	for _, p := range res.Redis {
		if res.Includes(GatewayView(), p.Key) {
			t.Errorf("gateway counted among the sidecars of %s", p.Key)
		}
	}
	if !res.Includes(GatewayView(), ObjectKey{Kind: KindMeshRoute, Namespace: "default", Name: "x"}) {
		t.Error("gateway not counted for a MeshRoute's ACKs")
	}
}
