package snapshot

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

func versions(t *testing.T, r *Result, v View) map[string]string {
	t.Helper()
	s, err := r.Snapshot(v)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, ty := range []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType} {
		out[ty] = s.GetVersion(ty)
	}
	return out
}

// Identical input must give identical versions (the cache then pushes nothing), and an
// endpoint change must move only the EDS version.
func TestVersionsFollowContent(t *testing.T) {
	in, views := readInput(t, filepath.Join("testdata", "route-all-fields.in.yaml"))
	v := views[0]
	a, b := versions(t, Translate(in), v), versions(t, Translate(in), v)
	for ty := range a {
		if a[ty] != b[ty] {
			t.Errorf("%s version changed for identical input: %s vs %s", ty, a[ty], b[ty])
		}
	}
	in.EndpointSlices[0].Endpoints[0].Addresses = []string{"10.9.9.9"}
	c := versions(t, Translate(in), v)
	for ty := range a {
		changed := a[ty] != c[ty]
		if want := ty == resourcev3.EndpointType; changed != want {
			t.Errorf("after an endpoint change, %s version changed=%v, want %v", ty, changed, want)
		}
	}
}

func TestViewFromNode(t *testing.T) {
	md, err := structpb.NewStruct(map[string]any{
		"namespace": "shop", "pod": "p-1", "function": "shop/fn", "appPort": 8080.0,
		"labels": map[string]any{"app": "web", "version": "v1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	v := ViewFromNode(&corev3.Node{Id: "p-1.shop", Metadata: md})
	if v.Namespace != "shop" || v.Function != "shop/fn" || v.AppPort != 8080 || v.Labels["version"] != "v1" {
		t.Fatalf("ViewFromNode = %+v", v)
	}
	same := ViewFromNode(&corev3.Node{Id: "p-2.shop", Metadata: md})
	if v.Key() != same.Key() {
		t.Errorf("two pods with the same metadata got different view keys")
	}
	if other := (View{Namespace: "shop", Labels: map[string]string{"app": "web"}}); other.Key() == v.Key() {
		t.Errorf("different views share key %s", v.Key())
	}
	if got := ViewFromNode(&corev3.Node{Id: "p-3.fallback"}); got.Namespace != "fallback" {
		t.Errorf("namespace from node ID = %q, want fallback", got.Namespace)
	}
}

// A function whose controller announced zero is no longer serving (its endpoints are
// DRAINING), which is what the hand-off waits for; a function without status still serves.
func TestFunctionServingFollowsTheZeroAnnouncement(t *testing.T) {
	in, _ := readInput(t, filepath.Join("testdata", "function-going-to-zero.in.yaml"))
	res := Translate(in)
	if res.FunctionServing("shop", "order-processing") {
		t.Error("order-processing announced zero replicas but still counts as serving")
	}
	if !res.FunctionServing("shop", "fresh") {
		t.Error("fresh has a ready endpoint and no status, but does not count as serving")
	}
	for i := range in.MeshFunctions {
		if in.MeshFunctions[i].Name == "order-processing" {
			in.MeshFunctions[i].Status.DesiredReplicas = 1
		}
	}
	if !Translate(in).FunctionServing("shop", "order-processing") {
		t.Error("after scaling back up to 1, order-processing should serve again")
	}
}

// RedisProxy status counts a pool's servers: a static list counts every server as ready; a
// Service-backed pool counts only ready endpoints.
func TestPoolServers(t *testing.T) {
	in, _ := readInput(t, filepath.Join("testdata", "redis.in.yaml"))
	res := Translate(in)
	if total, ready := res.PoolServers("default", "cache"); total != 2 || ready != 2 {
		t.Errorf("cache: %d servers, %d ready; want 2 and 2 (its static list)", total, ready)
	}
	// sessions: one ready endpoint and one terminating one; the terminating server is left
	// out of the ring (readyOnly), so it is not counted at all.
	if total, ready := res.PoolServers("default", "sessions"); total != 1 || ready != 1 {
		t.Errorf("sessions: %d servers, %d ready; want 1 and 1", total, ready)
	}
	if total, ready := res.PoolServers("default", "nope"); total != 0 || ready != 0 {
		t.Errorf("unknown pool: %d servers, %d ready; want none", total, ready)
	}
}

// A TCP-only pod's captured inbound (inboundCapture) reads back through the node metadata,
// keys its own snapshot, and leaves the keys of views without it as they were.
func TestViewInboundCaptureRoundTrip(t *testing.T) {
	base := View{Namespace: "shop", Labels: map[string]string{"app": "redis"}}
	tcp := base
	tcp.InboundCapture = true
	if got := ViewFromNode(&corev3.Node{Id: "redis-0.shop", Metadata: NodeMetadata(tcp)}); !got.InboundCapture || got.Key() != tcp.Key() {
		t.Errorf("round trip of %+v = %+v", tcp, got)
	}
	if got := ViewFromNode(&corev3.Node{Id: "redis-0.shop", Metadata: NodeMetadata(base)}); got.InboundCapture {
		t.Errorf("a view without inbound capture read back with it: %+v", got)
	}
	if base.Key() == tcp.Key() {
		t.Error("a TCP-only pod with captured inbound shares the key of one without")
	}
	// The key of a view without the field is the hash it had before the field existed.
	if got, want := (View{Namespace: "default"}).Key(), "view-"+keyWithoutInboundCapture("default"); got != want {
		t.Errorf("key of an ordinary view moved: %s, want %s", got, want)
	}
}

// keyWithoutInboundCapture is View.Key's hash as it was before InboundCapture, for a view
// with only a namespace.
func keyWithoutInboundCapture(ns string) string {
	h := sha256.New()
	fmt.Fprintf(h, "%q\x00%q\x00%d\x00%q\x00", ns, "", 0, "")
	return hex.EncodeToString(h.Sum(nil)[:12])
}
