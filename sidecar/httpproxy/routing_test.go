package httpproxy_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

var client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

// twoBackends returns a snapshot where host "reviews" routes via opts to clusters
// A and B, each with one backend answering "A" or "B".
func twoBackends(t *testing.T, opts ...st.RouteOption) (st.Snapshot, string, string) {
	a := st.Backend(t, "A", nil)
	b := st.Backend(t, "B", nil)
	ca := st.OutboundClusterName(9080, "v1", "reviews", "default", "default", "reviews")
	cb := st.OutboundClusterName(9080, "v2", "reviews", "default", "default", "reviews")
	rt := st.Route("default/reviews/0/0", append([]st.RouteOption{st.Prefix("/")}, opts...)...)
	return st.Snapshot{
		Listeners: []types.Resource{st.OutboundListener()},
		Routes:    []types.Resource{st.RouteConfig(st.VirtualHost("default/reviews", "reviews", "default", []int{9080}, rt))},
		Clusters:  []types.Resource{st.EDSCluster(ca), st.EDSCluster(cb)},
		Endpoints: []types.Resource{st.Endpoints(ca, st.Endpoint{Addr: st.HostPort(a.URL)}), st.Endpoints(cb, st.Endpoint{Addr: st.HostPort(b.URL)})},
	}, ca, cb
}

func TestWeightedSplitLandsWithinFivePercent(t *testing.T) {
	cp := st.StartControlPlane(t)
	snap, ca, cb := twoBackends(t)
	snap.Routes = []types.Resource{st.RouteConfig(st.VirtualHost("default/reviews", "reviews", "default", []int{9080},
		st.Route("default/reviews/0/0", st.Prefix("/"), st.Weighted(ca, 80, cb, 20))))}
	cp.Set(snap)
	sc := st.StartSidecar(t, cp, st.SidecarOptions{})
	base := sc.URL(t, st.OutboundListenerName)
	counts := map[string]int{}
	for range 1000 {
		code, body, _ := st.Get(t, client, base, "reviews.default:9080", "/ratings")
		if code != http.StatusOK {
			t.Fatalf("status %d body %q", code, body)
		}
		counts[body]++
	}
	if counts["A"] < 750 || counts["A"] > 850 {
		t.Errorf("80/20 split over 1000 requests gave %v; want A within 750..850", counts)
	}
}

func TestBadConfigIsNACKedAndOldConfigKeepsServing(t *testing.T) {
	cp := st.StartControlPlane(t)
	snap, ca, _ := twoBackends(t, st.To(st.OutboundClusterName(9080, "v1", "reviews", "default", "default", "reviews")))
	v1 := cp.Set(snap)
	sc := st.StartSidecar(t, cp, st.SidecarOptions{})
	sc.WaitForVersion(t, resourcev3.RouteType, v1)
	base := sc.URL(t, st.OutboundListenerName)
	if code, body, _ := st.Get(t, client, base, "reviews", "/"); code != 200 || body != "A" {
		t.Fatalf("before the bad config: %d %q, want 200 A", code, body)
	}

	// v2 sends traffic to B but also sets a field the sidecar does not implement.
	bad := st.Clone(snap.Routes[0].(*routev3.RouteConfiguration))
	r := bad.VirtualHosts[0].Routes[0]
	r.GetRoute().ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: st.OutboundClusterName(9080, "v2", "reviews", "default", "default", "reviews")}
	r.GetRoute().HostRewriteSpecifier = &routev3.RouteAction_AutoHostRewrite{AutoHostRewrite: wrapBool(true)}
	snap.Routes = []types.Resource{bad}
	cp.Set(snap)

	st.Eventually(t, 20*time.Second, func() bool { return len(cp.NACKs()) > 0 }, "the control plane never saw a NACK")
	// go-control-plane's cache answers a NACK by re-sending the same version at once; the
	// client must damp that loop (it used to spin at thousands of NACKs per second).
	time.Sleep(time.Second)
	if n := len(cp.NACKs()); n > 20 {
		t.Errorf("%d NACKs within a second of one bad version; repeats must back off", n)
	}
	n := cp.NACKs()[0]
	if !strings.Contains(n.Message, "auto_host_rewrite") || !strings.Contains(n.Message, "default/reviews/0/0") {
		t.Errorf("NACK message %q should name the field auto_host_rewrite and the route", n.Message)
	}
	if n.TypeURL != resourcev3.RouteType || n.Version != v1 {
		t.Errorf("NACK for %s carried version %q; want the route type and the last good version %q", n.TypeURL, n.Version, v1)
	}
	st.Eventually(t, 10*time.Second, func() bool { return cp.ACKed(resourcev3.ClusterType) != v1 },
		"the clusters of the new snapshot (which were fine) were never ACKed")
	if got := sc.Client.Current().Versions[resourcev3.RouteType]; got != v1 {
		t.Errorf("route version in force = %q, want the last good %q", got, v1)
	}
	for range 20 {
		if code, body, _ := st.Get(t, client, base, "reviews", "/"); code != 200 || body != "A" {
			t.Fatalf("after the NACK: %d %q, want the old config's 200 A", code, body)
		}
	}
	_ = ca
}

func TestNewClusterAndRouteArriveTogether(t *testing.T) {
	cp := st.StartControlPlane(t)
	snap, ca, cb := twoBackends(t, st.To(st.OutboundClusterName(9080, "v1", "reviews", "default", "default", "reviews")))
	// v1 knows only cluster A.
	full := snap
	snap.Clusters, snap.Endpoints = snap.Clusters[:1], snap.Endpoints[:1]
	v1 := cp.Set(snap)
	sc := st.StartSidecar(t, cp, st.SidecarOptions{})
	sc.WaitForVersion(t, resourcev3.RouteType, v1)
	base := sc.URL(t, st.OutboundListenerName)
	// v2 adds cluster B and moves the route to it: the sidecar must subscribe to B's
	// endpoints and switch only once they are there.
	full.Routes = []types.Resource{st.RouteConfig(st.VirtualHost("default/reviews", "reviews", "default", nil,
		st.Route("r", st.Prefix("/"), st.To(cb))))}
	v2 := cp.Set(full)
	sc.WaitForVersion(t, resourcev3.RouteType, v2)
	if code, body, _ := st.Get(t, client, base, "reviews", "/"); code != 200 || body != "B" {
		t.Fatalf("after adding cluster B: %d %q, want 200 B", code, body)
	}
	_ = ca
}

// A weighted cluster's own header edits (a MeshRoute destination's headers) apply only when
// that cluster is picked, before the route's.
func TestWeightedClusterHeadersApplyToThePickedDestination(t *testing.T) {
	echo := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, name+":"+r.Header.Get("X-Dest"))
		}
	}
	a, b := st.Backend(t, "A", echo("A")), st.Backend(t, "B", echo("B"))
	ca := st.OutboundClusterName(9080, "v1", "reviews", "default", "default", "reviews")
	cb := st.OutboundClusterName(9080, "v2", "reviews", "default", "default", "reviews")
	set := func(k, v string) []*corev3.HeaderValueOption {
		return []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: k, Value: v},
			AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}}
	}
	withHeaders := func(r *routev3.Route) {
		for _, wc := range r.GetRoute().GetWeightedClusters().GetClusters() {
			dest := "a"
			if wc.GetName() == cb {
				dest = "b"
			}
			wc.RequestHeadersToAdd = set("x-dest", dest)
			wc.ResponseHeadersToAdd = set("x-picked", dest)
		}
	}
	cp := st.StartControlPlane(t)
	cp.Set(st.Snapshot{
		Listeners: []types.Resource{st.OutboundListener()},
		Routes: []types.Resource{st.RouteConfig(st.VirtualHost("default/reviews", "reviews", "default", []int{9080},
			st.Route("default/reviews/0/0", st.Prefix("/"), st.Weighted(ca, 50, cb, 50), withHeaders)))},
		Clusters:  []types.Resource{st.EDSCluster(ca), st.EDSCluster(cb)},
		Endpoints: []types.Resource{st.Endpoints(ca, st.Endpoint{Addr: st.HostPort(a.URL)}), st.Endpoints(cb, st.Endpoint{Addr: st.HostPort(b.URL)})},
	})
	sc := st.StartSidecar(t, cp, st.SidecarOptions{})
	base := sc.URL(t, st.OutboundListenerName)
	seen := map[string]int{}
	for range 100 {
		code, body, hdr := st.Get(t, client, base, "reviews:9080", "/")
		if code != http.StatusOK {
			t.Fatalf("status %d body %q", code, body)
		}
		want := map[string]string{"A:a": "a", "B:b": "b"}[body]
		if want == "" || hdr.Get("X-Picked") != want {
			t.Fatalf("body %q with x-picked %q: a destination got the other's headers", body, hdr.Get("X-Picked"))
		}
		seen[body]++
	}
	if seen["A:a"] == 0 || seen["B:b"] == 0 {
		t.Fatalf("100 calls at 50/50 reached only %v", seen)
	}
}
