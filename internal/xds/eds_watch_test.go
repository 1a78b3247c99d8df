package xds

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"google.golang.org/protobuf/types/known/anypb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/snapshot"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
	"github.com/weftmesh/weft/sidecar/xdsclient"
)

// An endpoint change reaches every stream of every view as the changed assignment alone,
// at the view's new version; the sidecar's own client merges it and holds every other
// assignment as before.
func TestEDSChangeSendsOnlyChangedAssignments(t *testing.T) {
	f := newMeshFixture(t, meshInput(20, 2, 2))
	web, other := meshNode("web-1", "ns-0", "web"), meshNode("api-1", "ns-1", "api")
	names := edsNames(t, f.c, snapshot.ViewFromNode(web))
	if len(names) < 22 {
		t.Fatalf("view holds %d assignments, want every route's and function's", len(names))
	}
	var probes []*edsProbe
	for i, n := range []*corev3.Node{web, meshNode("web-2", "ns-0", "web"), meshNode("web-3", "ns-0", "web"), other} {
		p := newEDSProbe(t, f.s.Addr().String(), n, names, "")
		r := p.next()
		if got := len(r.GetResources()); got != len(names) {
			t.Fatalf("probe %d: first response holds %d assignments, want all %d", i, got, len(names))
		}
		p.ack(r)
		probes = append(probes, p)
	}
	cl := xdsclient.New(xdsclient.Options{Address: f.s.Addr().String(), Node: meshNode("web-4", "ns-0", "web")})
	cctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = cl.Run(cctx) }()
	poll.Until(t, 10*time.Second, func() bool { return cl.Current() != nil }, "waiting for the sidecar's config")

	f.waitOpen(web, 4)
	f.waitOpen(other, 1)
	// svc-4 loses one of its three endpoints.
	f.change(endpointsOf("ns-0", "svc-4", 2, 4))
	changed := namesOf(t, names, "|svc-4.")
	for i, p := range probes {
		r := p.next()
		if want := f.edsVersion(p.node); r.GetVersionInfo() != want {
			t.Errorf("probe %d: version %s, want the view's %s", i, r.GetVersionInfo(), want)
		}
		if got := claNames(t, r); !sameNames(got, changed) {
			t.Fatalf("probe %d: response holds %v, want only %v", i, got, changed)
		}
		for name, cla := range clas(t, r) {
			if n := len(cla.GetEndpoints()[0].GetLbEndpoints()); n != 2 {
				t.Errorf("probe %d: %s has %d endpoints, want 2", i, name, n)
			}
		}
		p.ack(r)
		p.quiet()
	}
	poll.Until(t, 10*time.Second, func() bool {
		cfg := cl.Current()
		return cfg.Versions[resourcev3.EndpointType] == f.edsVersion(web) && len(cfg.Clusters[changed[0]].Endpoints) == 2
	}, "waiting for the sidecar to hold svc-4's two endpoints")
	cfg := cl.Current()
	for _, n := range names {
		if !strings.Contains(n, "|svc-4.") && len(cfg.Clusters[n].Endpoints) == 0 {
			t.Errorf("sidecar lost the endpoints of %s", n)
		}
	}
}

// Every stream sent a change gets the same marshaled assignment: it is marshaled once, not
// once per sidecar or per view.
func TestEDSAssignmentsMarshaledOnce(t *testing.T) {
	c := NewCache()
	ctx := context.Background()
	cur := snapshot.Translate(meshInput(10, 0, 1))
	if err := c.SetResult(ctx, cur); err != nil {
		t.Fatal(err)
	}
	w := adsCache{c.cache, c.eds}
	type stream struct {
		sub *streamv3.Subscription
		ch  chan cachev3.Response
		req *discoveryv3.DiscoveryRequest
	}
	var streams []*stream
	var firsts [][]*anypb.Any
	for i, app := range []string{"a", "a", "b"} {
		n := meshNode(fmt.Sprintf("p-%d", i), "ns-0", app)
		if err := c.addNode(ctx, snapshot.ViewFromNode(n)); err != nil {
			t.Fatal(err)
		}
		names := edsNames(t, c, snapshot.ViewFromNode(n))
		sub := streamv3.NewSotwSubscription(names, false)
		st := &stream{sub: &sub, ch: make(chan cachev3.Response, 1),
			req: &discoveryv3.DiscoveryRequest{Node: n, TypeUrl: resourcev3.EndpointType, ResourceNames: names}}
		if _, err := w.CreateWatch(st.req, st.sub, st.ch); err != nil {
			t.Fatal(err)
		}
		r := <-st.ch
		out, _ := r.GetDiscoveryResponse()
		firsts = append(firsts, out.GetResources())
		st.sub.SetReturnedResources(r.GetReturnedResources())
		st.req = &discoveryv3.DiscoveryRequest{Node: n, TypeUrl: resourcev3.EndpointType, ResourceNames: names,
			VersionInfo: out.GetVersionInfo(), ResponseNonce: "1"}
		if _, err := w.CreateWatch(st.req, st.sub, st.ch); err != nil {
			t.Fatal(err)
		}
		select {
		case r := <-st.ch:
			t.Fatalf("stream %d: answered an ACK of the current version with %s", i, r.GetResponseVersion())
		default:
		}
		streams = append(streams, st)
	}
	shared := map[*anypb.Any]int{}
	for _, f := range firsts {
		for _, a := range f {
			shared[a]++
		}
	}
	for a, k := range shared {
		if k != len(streams) {
			t.Fatalf("an assignment of the full set was marshaled for %d streams in %d copies (%d bytes)", len(streams), len(streams)-k+1, len(a.GetValue()))
		}
	}
	next, ok := cur.UpdateEndpoints(endpointsOf("ns-0", "svc-3", 1, 3))
	if !ok {
		t.Fatal("fast path refused")
	}
	if err := c.SetResult(ctx, next); err != nil {
		t.Fatal(err)
	}
	var first []*anypb.Any
	for i, st := range streams {
		r := <-st.ch
		out, _ := r.GetDiscoveryResponse()
		if len(out.GetResources()) != 2 {
			t.Fatalf("stream %d: %v, want svc-3's two assignments", i, claNames(t, out))
		}
		if first == nil {
			first = out.GetResources()
		}
		for j, a := range out.GetResources() {
			if a != first[j] {
				t.Errorf("stream %d got its own marshaled copy of the change", i)
			}
		}
		if rm := r.GetReturnedResources(); len(rm) != 1 {
			t.Errorf("stream %d: the response leaves %d returned-resource entries per stream, want 1", i, len(rm))
		}
	}
}

// A stream that opens after changes, and one that reconnects holding an older version or
// even the current one (a new stream cannot know what its sidecar holds), get every
// assignment.
func TestEDSNewAndReconnectingStreamsGetEverything(t *testing.T) {
	f := newMeshFixture(t, meshInput(20, 2, 2))
	web := meshNode("web-1", "ns-0", "web")
	names := edsNames(t, f.c, snapshot.ViewFromNode(web))
	p := newEDSProbe(t, f.s.Addr().String(), web, names, "")
	r := p.next()
	p.ack(r)
	old := r.GetVersionInfo()
	f.waitOpen(web, 1)
	f.change(endpointsOf("ns-0", "svc-2", 1, 2))
	p.ack(p.next())
	f.waitOpen(web, 1)
	f.change(endpointsOf("ns-0", "svc-6", 4, 6))
	cur := p.next()
	p.ack(cur)
	for _, tc := range []struct{ name, version string }{{"new", ""}, {"reconnect holding an older version", old},
		{"reconnect holding the current version", cur.GetVersionInfo()}} {
		q := newEDSProbe(t, f.s.Addr().String(), meshNode("web-2", "ns-0", "web"), names, tc.version)
		r := q.next()
		if got := claNames(t, r); len(got) != len(names) || r.GetVersionInfo() != f.edsVersion(web) {
			t.Errorf("%s: got %d assignments at %s, want all %d at %s", tc.name, len(got), r.GetVersionInfo(), len(names), f.edsVersion(web))
		}
		if eps := clas(t, r)[namesOf(t, names, "|svc-6.")[0]].GetEndpoints()[0].GetLbEndpoints(); len(eps) != 4 {
			t.Errorf("%s: svc-6 has %d endpoints, want the current 4", tc.name, len(eps))
		}
		q.ack(r)
		q.quiet()
	}
}

// Removal: an endpoint leaving and all of a Service's endpoints leaving are changes of its
// assignment (sent, with fewer or no endpoints); a whole assignment leaving goes with its
// cluster (CDS is full state), and the sidecar's client drops both.
func TestEDSRemovals(t *testing.T) {
	in := meshInput(20, 2, 2)
	f := newMeshFixture(t, in)
	web := meshNode("web-1", "ns-0", "web")
	names := edsNames(t, f.c, snapshot.ViewFromNode(web))
	cl := xdsclient.New(xdsclient.Options{Address: f.s.Addr().String(), Node: web})
	cctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = cl.Run(cctx) }()
	synced := func() bool {
		cfg := cl.Current()
		return cfg != nil && cfg.Versions[resourcev3.EndpointType] == f.edsVersion(web)
	}
	poll.Until(t, 10*time.Second, synced, "waiting for the sidecar's config")

	svc2, svc8 := namesOf(t, names, "|svc-2.")[0], namesOf(t, names, "|svc-8.")
	f.change(endpointsOf("ns-0", "svc-2", 1, 2))
	poll.Until(t, 10*time.Second, synced, "waiting for one endpoint to leave")
	if eps := cl.Current().Clusters[svc2].Endpoints; len(eps) != 1 {
		t.Fatalf("svc-2 has %d endpoints, want 1", len(eps))
	}
	f.change(endpointsOf("ns-0", "svc-2", 0, 0))
	poll.Until(t, 10*time.Second, synced, "waiting for every endpoint to leave")
	if eps := cl.Current().Clusters[svc2].Endpoints; len(eps) != 0 {
		t.Fatalf("svc-2 has %d endpoints after its slices were deleted, want 0", len(eps))
	}

	// svc-8's route and Service go: a full translation.
	var routes []meshv1alpha1.MeshRoute
	for _, mr := range in.MeshRoutes {
		if mr.Name != "route-8" {
			routes = append(routes, mr)
		}
	}
	var svcs []corev1.Service
	for _, s := range in.Services {
		if s.Name != "svc-8" {
			svcs = append(svcs, s)
		}
	}
	in.MeshRoutes, in.Services = routes, svcs
	in = in.WithEndpoints(endpointsOf("ns-0", "svc-8", 0, 0))
	f.set(snapshot.Translate(in.WithEndpoints(endpointsOf("ns-0", "svc-2", 0, 0))))
	poll.Until(t, 10*time.Second, func() bool {
		cfg := cl.Current()
		_, has := cfg.Clusters[svc8[0]]
		return synced() && !has
	}, "waiting for svc-8's clusters to go")
	for _, n := range svc8 {
		if _, has := cl.Current().Raw[resourcev3.EndpointType][n]; has {
			t.Errorf("the sidecar still holds assignment %s", n)
		}
	}
}

// A NACKed partial response is not sent again; the stream's next response is the full
// set, and the hand-off waits until it is ACKed.
func TestEDSNackThenFullSetAndDrained(t *testing.T) {
	fn := types.NamespacedName{Namespace: "default", Name: "fn"}
	in := withFunction(input("10.0.0.1"), true)
	f := newMeshFixture(t, in)
	n := node("caller-1", "default", 0)
	names := edsNames(t, f.c, snapshot.ViewFromNode(n))
	p := newEDSProbe(t, f.s.Addr().String(), n, names, "")
	held := p.next()
	p.ack(held)
	f.waitOpen(n, 1)

	// The function's last pod starts terminating: its endpoint goes DRAINING.
	f.change(slicesOf(withFunction(input("10.0.0.1"), false), "fn"))
	r := p.next()
	if len(r.GetResources()) != 1 {
		t.Fatalf("want the function's assignment alone, got %v", claNames(t, r))
	}
	p.send(held.GetVersionInfo(), r.GetNonce(), "bad endpoint")
	poll.Until(t, 10*time.Second, func() bool {
		ns := f.s.Nodes()
		return len(ns) == 1 && ns[0].Rejected[resourcev3.EndpointType].Version == r.GetVersionInfo()
	}, "waiting for the NACK to be recorded")
	if f.s.Drained(fn) {
		t.Fatal("Drained although the only caller rejected the draining endpoints")
	}
	p.quiet() // the rejected version is not re-sent

	f.waitOpen(n, 1)
	f.change(slicesOf(withFunction(input("10.0.0.1", "10.0.0.2"), false), "reviews"))
	r = p.next()
	if got := claNames(t, r); len(got) != len(names) || r.GetVersionInfo() != f.edsVersion(n) {
		t.Fatalf("after a NACK: got %v at %s, want all %d assignments at %s", got, r.GetVersionInfo(), len(names), f.edsVersion(n))
	}
	if f.s.Drained(fn) {
		t.Fatal("Drained before the full set was ACKed")
	}
	p.ack(r)
	poll.Until(t, 10*time.Second, func() bool { return f.s.Drained(fn) }, "waiting for the hand-off")
}

// Changes faster than a sidecar ACKs coalesce: a stream has at most one response in
// flight, and its ACK of an older version is answered by one response carrying every
// assignment changed since — or, past maxEDSHistory versions, the full set.
func TestEDSCoalescesChangesFasterThanACKs(t *testing.T) {
	f := newMeshFixture(t, meshInput(40, 0, 1))
	web := meshNode("web-1", "ns-0", "web")
	names := edsNames(t, f.c, snapshot.ViewFromNode(web))
	p := newEDSProbe(t, f.s.Addr().String(), web, names, "")
	p.ack(p.next())
	f.waitOpen(web, 1)
	for i := 1; i <= 5; i++ {
		f.change(endpointsOf("ns-0", fmt.Sprintf("svc-%d", i), 1, i))
	}
	r := p.next() // the open watch took the first change
	if got := claNames(t, r); !sameNames(got, namesOf(t, names, "|svc-1.")) {
		t.Fatalf("first response: %v, want svc-1's", got)
	}
	p.quiet() // nothing more until the ACK
	p.ack(r)
	r = p.next()
	if r.GetVersionInfo() != f.edsVersion(web) {
		t.Fatalf("version %s, want the current %s", r.GetVersionInfo(), f.edsVersion(web))
	}
	var want []string
	for i := 2; i <= 5; i++ {
		want = append(want, namesOf(t, names, fmt.Sprintf("|svc-%d.", i))...)
	}
	if got := claNames(t, r); !sameNames(got, want) {
		t.Fatalf("coalesced response: %v, want %v", got, want)
	}
	p.ack(r)
	p.quiet()
}

// The history bound itself, without the race of an open watch taking the first change.
func TestEDSHistoryBound(t *testing.T) {
	f := newMeshFixture(t, meshInput(40, 0, 1))
	web := meshNode("web-1", "ns-0", "web")
	names := edsNames(t, f.c, snapshot.ViewFromNode(web))
	p := newEDSProbe(t, f.s.Addr().String(), web, names, "")
	first := p.next()
	p.ack(first)
	f.waitOpen(web, 1)
	f.change(endpointsOf("ns-0", "svc-1", 1, 1))
	r := p.next() // in flight: the stream has no open watch until it ACKs
	for i := 2; i < 2+maxEDSHistory; i++ {
		f.change(endpointsOf("ns-0", fmt.Sprintf("svc-%d", i), 1, i))
	}
	// r's version is maxEDSHistory changes old: still in the history.
	p.ack(r)
	got := p.next()
	if n := len(got.GetResources()); n != 2*maxEDSHistory {
		t.Fatalf("ACK of a version %d changes old: %d assignments, want %d (two per Service)", maxEDSHistory, n, 2*maxEDSHistory)
	}
	held := got
	for i := 2 + maxEDSHistory; i < 3+2*maxEDSHistory; i++ {
		f.change(endpointsOf("ns-0", fmt.Sprintf("svc-%d", i), 1, i))
	}
	// held is now maxEDSHistory+1 changes old.
	p.ack(held)
	if got := p.next(); len(got.GetResources()) != len(names) || got.GetVersionInfo() != f.edsVersion(web) {
		t.Fatalf("ACK of a version past the history: %d assignments at %s, want all %d at %s",
			len(got.GetResources()), got.GetVersionInfo(), len(names), f.edsVersion(web))
	}
}

// A stream subscribed to some assignments gets only those of a change, and a response
// with none when the change is elsewhere: it must still ACK the view's new version.
func TestEDSPartialSubscription(t *testing.T) {
	f := newMeshFixture(t, meshInput(10, 0, 1))
	web := meshNode("web-1", "ns-0", "web")
	all := edsNames(t, f.c, snapshot.ViewFromNode(web))
	mine := append(namesOf(t, all, "|svc-1."), namesOf(t, all, "|svc-2.")...)
	p := newEDSProbe(t, f.s.Addr().String(), web, mine, "")
	r0 := p.next()
	if got := claNames(t, r0); !sameNames(got, mine) {
		t.Fatalf("first response: %v, want %v", got, mine)
	}
	p.ack(r0)
	f.waitOpen(web, 1)
	f.change(endpointsOf("ns-0", "svc-5", 1, 5))
	r := p.next()
	if len(r.GetResources()) != 0 || r.GetVersionInfo() != f.edsVersion(web) {
		t.Fatalf("change elsewhere: %v at %s, want none at %s", claNames(t, r), r.GetVersionInfo(), f.edsVersion(web))
	}
	p.ack(r)
	f.waitOpen(web, 1)
	f.change(snapshot.EndpointChange{"ns-0/svc-2": endpointsOf("ns-0", "svc-2", 1, 2)["ns-0/svc-2"],
		"ns-0/svc-7": endpointsOf("ns-0", "svc-7", 1, 7)["ns-0/svc-7"]})
	if got := claNames(t, p.next()); !sameNames(got, namesOf(t, all, "|svc-2.")) {
		t.Fatalf("change of svc-2 and svc-7: %v, want svc-2's alone", got)
	}
}

// A view with redis endpoints has its own EDS version: a change of its pool's endpoints
// reaches it alone, and a shared change reaches both views at their own versions.
func TestEDSRedisViews(t *testing.T) {
	in := meshInput(10, 0, 1)
	in.Services = append(in.Services, corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns-0", Name: "cache-redis"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.50", Ports: []corev1.ServicePort{{Name: "redis", Port: 6379, TargetPort: intstr.FromInt32(6379)}}}})
	in.EndpointSlices = append(in.EndpointSlices, redisSlice(2))
	in.RedisProxies = []meshv1alpha1.RedisProxy{{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns-0", Name: "cache", Generation: 1},
		Spec: meshv1alpha1.RedisProxySpec{
			WorkloadSelector: &meshv1alpha1.WorkloadSelector{Labels: map[string]string{"app": "web"}},
			ServiceRef:       &meshv1alpha1.RedisServiceRef{Name: "cache-redis", Port: 6379},
		},
	}}
	f := newMeshFixture(t, in)
	web, api := meshNode("web-1", "ns-0", "web"), meshNode("api-1", "ns-0", "api")
	webNames, apiNames := edsNames(t, f.c, snapshot.ViewFromNode(web)), edsNames(t, f.c, snapshot.ViewFromNode(api))
	if len(webNames) != len(apiNames)+1 {
		t.Fatalf("web holds %d assignments, api %d: want the pool's one more", len(webNames), len(apiNames))
	}
	pw := newEDSProbe(t, f.s.Addr().String(), web, webNames, "")
	pw.ack(pw.next())
	pa := newEDSProbe(t, f.s.Addr().String(), api, apiNames, "")
	pa.ack(pa.next())
	f.waitOpen(web, 1)
	f.waitOpen(api, 1)
	var pool []string
	for _, n := range webNames {
		if !slices.Contains(apiNames, n) {
			pool = append(pool, n)
		}
	}
	shared := namesOf(t, apiNames, "|cache-redis.")

	// The pool's Service changes: its own assignment reaches both views, the pool's only
	// the view that has the pool.
	f.change(snapshot.EndpointChange{"ns-0/cache-redis": {redisSlice(3)}})
	for _, tc := range []struct {
		p    *edsProbe
		want []string
	}{{pw, append(append([]string(nil), shared...), pool...)}, {pa, shared}} {
		r := tc.p.next()
		if got := claNames(t, r); !sameNames(got, tc.want) || r.GetVersionInfo() != f.edsVersion(tc.p.node) {
			t.Fatalf("%s got %v at %s, want %v at %s", tc.p.node.GetId(), got, r.GetVersionInfo(), tc.want, f.edsVersion(tc.p.node))
		}
		tc.p.ack(r)
		tc.p.quiet()
	}
	f.waitOpen(web, 1)
	f.waitOpen(api, 1)

	f.change(endpointsOf("ns-0", "svc-3", 1, 3))
	for _, p := range []*edsProbe{pw, pa} {
		r := p.next()
		if got := claNames(t, r); !sameNames(got, namesOf(t, apiNames, "|svc-3.")) || r.GetVersionInfo() != f.edsVersion(p.node) {
			t.Fatalf("%s got %v at %s, want svc-3's at %s", p.node.GetId(), got, r.GetVersionInfo(), f.edsVersion(p.node))
		}
	}
	if f.edsVersion(web) == f.edsVersion(api) {
		t.Fatal("views with and without the pool share a version")
	}
}
