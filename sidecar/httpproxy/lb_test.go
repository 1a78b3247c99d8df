package httpproxy_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

func TestDrainingEndpointGetsNoNewRequests(t *testing.T) {
	a := st.Backend(t, "A", nil)
	b := st.Backend(t, "B", nil)
	cp := st.StartControlPlane(t)
	snap, cn := oneBackend(nil, nil)
	snap.Endpoints = []types.Resource{st.Endpoints(cn, st.Endpoint{Addr: st.HostPort(a.URL)},
		st.Endpoint{Addr: st.HostPort(b.URL), Health: corev3.HealthStatus_DRAINING})}
	cp.Set(snap)
	base := st.StartSidecar(t, cp, st.SidecarOptions{}).URL(t, st.OutboundListenerName)
	for range 20 {
		if _, body, _ := st.Get(t, client, base, "reviews", "/"); body != "A" {
			t.Fatalf("got %q, want every request on the HEALTHY endpoint A", body)
		}
	}
}

func TestRingHashKeepsAKeyOnOneEndpoint(t *testing.T) {
	var urls []string
	for _, n := range []string{"A", "B", "C"} {
		urls = append(urls, st.Backend(t, n, nil).URL)
	}
	cp := st.StartControlPlane(t)
	snap, _ := oneBackend(urls, []st.RouteOption{st.Edit(func(r *routev3.Route) {
		r.GetRoute().HashPolicy = []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_Header_{
			Header: &routev3.RouteAction_HashPolicy_Header{HeaderName: "x-user"}}}}
	})}, func(c *clusterv3.Cluster) { c.LbPolicy = clusterv3.Cluster_RING_HASH })
	cp.Set(snap)
	base := st.StartSidecar(t, cp, st.SidecarOptions{}).URL(t, st.OutboundListenerName)
	distinct := map[string]bool{}
	for _, user := range []string{"u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"} {
		var first string
		for i := range 10 {
			req, _ := http.NewRequest(http.MethodGet, base+"/", nil)
			req.Host = "reviews"
			req.Header.Set("X-User", user)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 8)
			n, _ := resp.Body.Read(buf)
			resp.Body.Close()
			got := string(buf[:n])
			if i == 0 {
				first = got
				distinct[got] = true
			} else if got != first {
				t.Fatalf("user %s went to %s then %s; ring hash must keep a key on one endpoint", user, first, got)
			}
		}
	}
	if len(distinct) < 2 {
		t.Errorf("8 keys all landed on %v; the ring should spread them", distinct)
	}
}

func TestActiveHealthCheckRemovesAndRestoresEndpoint(t *testing.T) {
	var sick atomic.Bool
	a := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" && sick.Load() {
			http.Error(w, "sick", 500)
			return
		}
		_, _ = w.Write([]byte("A"))
	})
	b := st.Backend(t, "B", nil)
	cp := st.StartControlPlane(t)
	snap, _ := oneBackend([]string{a.URL, b.URL}, nil, func(c *clusterv3.Cluster) {
		c.HealthChecks = []*corev3.HealthCheck{{Timeout: durationpb.New(time.Second), Interval: durationpb.New(50 * time.Millisecond),
			HealthyThreshold: wrapperspb.UInt32(1), UnhealthyThreshold: wrapperspb.UInt32(2),
			HealthChecker: &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &corev3.HealthCheck_HttpHealthCheck{Path: "/healthz"}}}}
	})
	cp.Set(snap)
	base := st.StartSidecar(t, cp, st.SidecarOptions{}).URL(t, st.OutboundListenerName)
	sick.Store(true)
	st.Eventually(t, 20*time.Second, func() bool {
		for range 10 {
			if _, body, _ := st.Get(t, client, base, "reviews", "/"); body == "A" {
				return false
			}
		}
		return true
	}, "endpoint A still gets traffic after failing its health checks")
	sick.Store(false)
	st.Eventually(t, 20*time.Second, func() bool {
		_, body, _ := st.Get(t, client, base, "reviews", "/")
		return body == "A"
	}, "endpoint A never came back after passing its health check")
}

func TestIncompleteConfigIsNotApplied(t *testing.T) {
	cp := st.StartControlPlane(t)
	snap, ca, cb := twoBackends(t, st.To(st.OutboundClusterName(9080, "v1", "reviews", "default", "default", "reviews")))
	v1 := cp.Set(snap)
	sc := st.StartSidecar(t, cp, st.SidecarOptions{})
	sc.WaitForVersion(t, resourcev3.RouteType, v1)
	base := sc.URL(t, st.OutboundListenerName)
	// v2's routes point at a cluster CDS does not have (an inconsistent snapshot the real
	// control plane never sends): the sidecar must keep v1 rather than blackhole traffic.
	snap.Routes = []types.Resource{st.RouteConfig(st.VirtualHost("default/reviews", "reviews", "default", nil,
		st.Route("r", st.Prefix("/"), st.To("outbound|1||ghost.default.svc.cluster.local|default/ghost"))))}
	snap.SkipConsistency = true
	cp.Set(snap)
	st.Eventually(t, 20*time.Second, func() bool { return sc.Client.Status().Pending != "" }, "the incomplete config was not noticed")
	if p := sc.Client.Status().Pending; !strings.Contains(p, "ghost") {
		t.Errorf("pending = %q, want it to name the missing cluster", p)
	}
	if code, body, _ := st.Get(t, client, base, "reviews", "/"); code != 200 || body != "A" {
		t.Errorf("got %d %q, want v1's 200 A", code, body)
	}
	_, _ = ca, cb
}

func TestShutdownFinishesInFlightRequests(t *testing.T) {
	release := make(chan struct{})
	be := st.Backend(t, "", func(w http.ResponseWriter, _ *http.Request) { <-release; _, _ = w.Write([]byte("done")) })
	cp := st.StartControlPlane(t)
	snap, _ := oneBackend([]string{be.URL}, nil)
	cp.Set(snap)
	sc := st.StartSidecar(t, cp, st.SidecarOptions{})
	base := sc.URL(t, st.OutboundListenerName)
	got := make(chan string, 1)
	go func() { _, body, _ := st.Get(t, client, base, "reviews", "/"); got <- body }()
	st.Eventually(t, 10*time.Second, func() bool { n, _ := sc.Proxy.Listener(st.OutboundListenerName).Stats(); return n == 1 }, "request never in flight")
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done <- sc.Proxy.Shutdown(ctx)
	}()
	st.Eventually(t, 10*time.Second, func() bool {
		_, err := http.Get(base + "/")
		return err != nil
	}, "the listener kept accepting after Shutdown")
	close(release)
	if body := <-got; body != "done" {
		t.Errorf("in-flight request got %q, want done", body)
	}
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}

// A cookie hash policy with a TTL generates the cookie for a request that has none, and a
// client that sends it back stays on one endpoint.
func TestCookieWithTTLIsGeneratedAndSticks(t *testing.T) {
	var urls []string
	for _, n := range []string{"A", "B", "C"} {
		urls = append(urls, st.Backend(t, n, nil).URL)
	}
	cp := st.StartControlPlane(t)
	snap, _ := oneBackend(urls, []st.RouteOption{st.Edit(func(r *routev3.Route) {
		r.GetRoute().HashPolicy = []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_Cookie_{
			Cookie: &routev3.RouteAction_HashPolicy_Cookie{Name: "session", Ttl: durationpb.New(time.Hour), Path: "/"}}}}
	})}, func(c *clusterv3.Cluster) { c.LbPolicy = clusterv3.Cluster_RING_HASH })
	cp.Set(snap)
	base := st.StartSidecar(t, cp, st.SidecarOptions{}).URL(t, st.OutboundListenerName)
	get := func(cookie *http.Cookie) (string, *http.Response) {
		req, _ := http.NewRequest(http.MethodGet, base+"/", nil)
		req.Host = "reviews"
		if cookie != nil {
			req.AddCookie(cookie)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 8)
		n, _ := resp.Body.Read(buf)
		resp.Body.Close()
		return string(buf[:n]), resp
	}
	for range 6 {
		first, resp := get(nil)
		var ck *http.Cookie
		for _, c := range resp.Cookies() {
			if c.Name == "session" {
				ck = c
			}
		}
		if ck == nil || ck.MaxAge != 3600 || ck.Path != "/" || !ck.HttpOnly {
			t.Fatalf("no generated session cookie with Max-Age 3600 on %v", resp.Header.Values("Set-Cookie"))
		}
		for range 5 {
			got, resp := get(ck)
			if len(resp.Cookies()) != 0 {
				t.Fatalf("a request carrying the cookie got another one: %v", resp.Header.Values("Set-Cookie"))
			}
			// The first request hashed on the value it was given, so the cookie keeps it there.
			if got != first {
				t.Fatalf("cookie %s went to %s, then %s", ck.Value, first, got)
			}
		}
	}
}
