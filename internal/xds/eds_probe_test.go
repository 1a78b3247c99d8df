package xds

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/weftmesh/weft/internal/snapshot"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
)

// edsProbe is a bare ADS client that subscribes to EDS alone, as a sidecar's EDS watch
// does, and shows the test every response as it came off the wire.
type edsProbe struct {
	t     *testing.T
	st    discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node  *corev3.Node
	names []string
	resps chan *discoveryv3.DiscoveryResponse
	// cdsNonce is the nonce of the last CDS response quiet got (a request without it
	// would be ignored as stale).
	cdsNonce string
}

// newEDSProbe opens a stream and subscribes to names, claiming to hold version.
func newEDSProbe(t *testing.T, addr string, n *corev3.Node, names []string, version string) *edsProbe {
	t.Helper()
	p := &edsProbe{t: t, st: adsStream(t, addr), node: n, names: names, resps: make(chan *discoveryv3.DiscoveryResponse, 64)}
	go func() {
		defer close(p.resps)
		for {
			r, err := p.st.Recv()
			if err != nil {
				return
			}
			p.resps <- r
		}
	}()
	p.send(version, "", "")
	return p
}

func (p *edsProbe) send(version, nonce, nack string) {
	p.t.Helper()
	req := &discoveryv3.DiscoveryRequest{Node: p.node, TypeUrl: resourcev3.EndpointType, VersionInfo: version,
		ResponseNonce: nonce, ResourceNames: p.names}
	if nack != "" {
		req.ErrorDetail = &status.Status{Code: 3, Message: nack}
	}
	if err := p.st.Send(req); err != nil {
		p.t.Fatal(err)
	}
}

// next is the next EDS response (other types are skipped).
func (p *edsProbe) next() *discoveryv3.DiscoveryResponse {
	p.t.Helper()
	for {
		select {
		case r, ok := <-p.resps:
			if !ok {
				p.t.Fatal("stream ended")
			}
			if r.GetTypeUrl() == resourcev3.EndpointType {
				return r
			}
		case <-time.After(10 * time.Second):
			p.t.Fatal("no EDS response within 10s")
		}
	}
}

func (p *edsProbe) ack(r *discoveryv3.DiscoveryResponse) {
	p.send(r.GetVersionInfo(), r.GetNonce(), "")
}

// quiet asserts that no EDS response is queued for the stream: ADS queues one stream's
// responses in order, so one queued before this CDS request would arrive before its answer
// (the request claims no version, so the server answers it at once).
func (p *edsProbe) quiet() {
	p.t.Helper()
	if err := p.st.Send(&discoveryv3.DiscoveryRequest{Node: p.node, TypeUrl: resourcev3.ClusterType, ResponseNonce: p.cdsNonce}); err != nil {
		p.t.Fatal(err)
	}
	for {
		select {
		case r, ok := <-p.resps:
			if !ok {
				p.t.Fatal("stream ended")
			}
			switch r.GetTypeUrl() {
			case resourcev3.EndpointType:
				p.t.Fatalf("unexpected EDS response, version %s, %d resources %v", r.GetVersionInfo(), len(r.GetResources()), claNames(p.t, r))
			case resourcev3.ClusterType:
				p.cdsNonce = r.GetNonce()
				return
			}
		case <-time.After(10 * time.Second):
			p.t.Fatal("no CDS response within 10s")
		}
	}
}

// claNames decodes a response's assignments by name.
func clas(t *testing.T, r *discoveryv3.DiscoveryResponse) map[string]*endpointv3.ClusterLoadAssignment {
	t.Helper()
	out := map[string]*endpointv3.ClusterLoadAssignment{}
	for _, a := range r.GetResources() {
		cla := &endpointv3.ClusterLoadAssignment{}
		if err := a.UnmarshalTo(cla); err != nil {
			t.Fatal(err)
		}
		out[cla.GetClusterName()] = cla
	}
	return out
}

func claNames(t *testing.T, r *discoveryv3.DiscoveryResponse) []string {
	var out []string
	for n := range clas(t, r) {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// edsNames are the assignment names view v's snapshot holds, sorted (what its sidecar
// subscribes to).
func edsNames(t *testing.T, c *Cache, v snapshot.View) []string {
	t.Helper()
	eds, err := c.Result().EndpointResources(v)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for n := range eds.Items {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// namesOf are the names in names that contain part (a Service has two assignments: its
// own cluster's and its route's).
func namesOf(t *testing.T, names []string, part string) []string {
	t.Helper()
	var found []string
	for _, n := range names {
		if strings.Contains(n, part) {
			found = append(found, n)
		}
	}
	if len(found) == 0 {
		t.Fatalf("no assignment name contains %q", part)
	}
	return found
}

func sameNames(got, want []string) bool {
	g, w := append([]string(nil), got...), append([]string(nil), want...)
	sort.Strings(g)
	sort.Strings(w)
	return strings.Join(g, ",") == strings.Join(w, ",")
}

// meshNode is a sidecar in namespace ns with label app.
func meshNode(pod, ns, app string) *corev3.Node {
	md, err := structpb.NewStruct(map[string]any{"namespace": ns, "pod": pod, "appPort": float64(8080),
		"labels": map[string]any{"app": app}})
	if err != nil {
		panic(err)
	}
	return &corev3.Node{Id: pod + "." + ns, Metadata: md}
}

// endpointsOf is an endpoint-only change giving Service ns/svc pods endpoints (numbered
// from base); pods = 0 deletes all its slices.
func endpointsOf(ns, svc string, pods, base int) snapshot.EndpointChange {
	if pods == 0 {
		return snapshot.EndpointChange{ns + "/" + svc: nil}
	}
	return snapshot.EndpointChange{ns + "/" + svc: {scaleSlice(ns, svc, 8080, pods, base)}}
}

// meshFixture serves meshInput(20, 2, 2) and tracks the Result served.
type meshFixture struct {
	t   *testing.T
	c   *Cache
	s   *Server
	cur *snapshot.Result
}

func newMeshFixture(t *testing.T, in *snapshot.Input) *meshFixture {
	f := &meshFixture{t: t, c: NewCache(), cur: snapshot.Translate(in)}
	if err := f.c.SetResult(context.Background(), f.cur); err != nil {
		t.Fatal(err)
	}
	f.s = startServer(t, f.c)
	return f
}

// change applies an endpoint-only change through the fast path.
func (f *meshFixture) change(ch snapshot.EndpointChange) {
	f.t.Helper()
	next, ok := f.cur.UpdateEndpoints(ch)
	if !ok {
		f.t.Fatal("fast path refused")
	}
	f.set(next)
}

func (f *meshFixture) set(r *snapshot.Result) {
	f.t.Helper()
	if err := f.c.SetResult(context.Background(), r); err != nil {
		f.t.Fatal(err)
	}
	f.cur = r
}

// waitOpen waits until n open EDS watches of node's view wait in the edsWatcher: a change
// made then reaches each of them at once, not after its ACK.
func (f *meshFixture) waitOpen(node *corev3.Node, n int) {
	f.t.Helper()
	key := snapshot.ViewFromNode(node).Key()
	poll.Until(f.t, 10*time.Second, func() bool {
		f.c.eds.mu.Lock()
		defer f.c.eds.mu.Unlock()
		vs := f.c.eds.views[key]
		return vs != nil && len(vs.watches) == n
	}, "waiting for open EDS watches")
}

func (f *meshFixture) edsVersion(n *corev3.Node) string {
	return f.c.Versions(snapshot.ViewFromNode(n))[resourcev3.EndpointType]
}

func redisSlice(pods int) discoveryv1.EndpointSlice {
	es := scaleSlice("ns-0", "cache-redis", 6379, pods, 900)
	es.Ports[0].Name = ptr.To("redis")
	for i := range es.Endpoints {
		es.Endpoints[i].Hostname = ptr.To(fmt.Sprintf("cache-redis-%d", i))
	}
	return es
}

// The sidecar subscribes to EDS by wildcard (no names: its ACKs then carry none): it gets
// the view's every assignment first, then each change alone, and a NACK or reconnect still
// gets everything.
func TestEDSWildcardSubscription(t *testing.T) {
	f := newMeshFixture(t, meshInput(20, 0, 1))
	web := meshNode("web-1", "ns-0", "web")
	names := edsNames(t, f.c, snapshot.ViewFromNode(web))
	p := newEDSProbe(t, f.s.Addr().String(), web, nil, "")
	r := p.next()
	if got := claNames(t, r); !sameNames(got, names) {
		t.Fatalf("first response: %d assignments, want all %d", len(got), len(names))
	}
	p.ack(r)
	f.waitOpen(web, 1)
	f.change(endpointsOf("ns-0", "svc-9", 2, 9))
	r = p.next()
	if got := claNames(t, r); !sameNames(got, namesOf(t, names, "|svc-9.")) || r.GetVersionInfo() != f.edsVersion(web) {
		t.Fatalf("change: %v at %s, want svc-9's at %s", got, r.GetVersionInfo(), f.edsVersion(web))
	}
	p.ack(r)
	p.quiet()
	q := newEDSProbe(t, f.s.Addr().String(), meshNode("web-2", "ns-0", "web"), nil, r.GetVersionInfo())
	if got := claNames(t, q.next()); len(got) != len(names) {
		t.Fatalf("reconnect: %d assignments, want all %d", len(got), len(names))
	}
}
