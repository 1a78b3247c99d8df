package httpproxy_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

func TestRedirectDirectResponseRewriteAndHeaders(t *testing.T) {
	seen := make(chan *http.Request, 1)
	be := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) {
		seen <- r
		w.Header().Set("X-Internal", "secret")
		_, _ = w.Write([]byte("ok"))
	})
	cn := st.OutboundClusterName(9080, "", "reviews", "default", "default", "reviews")
	hdr := func(k, v string, a corev3.HeaderValueOption_HeaderAppendAction) *corev3.HeaderValueOption {
		return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}, AppendAction: a}
	}
	vhost := st.VirtualHost("default/reviews", "reviews", "default", []int{9080},
		st.Route("redirect", st.Path("/old"), st.Edit(func(r *routev3.Route) {
			r.Action = &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{
				PathRewriteSpecifier: &routev3.RedirectAction_PathRedirect{PathRedirect: "/new"},
				PortRedirect:         8443, ResponseCode: routev3.RedirectAction_PERMANENT_REDIRECT}}
		})),
		st.Route("direct", st.Path("/gone"), st.Edit(func(r *routev3.Route) {
			r.Action = &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 503,
				Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "Service default/gone not found"}}}}
		})),
		st.Route("rewrite", st.Prefix("/v1/"), st.To(cn), st.Edit(func(r *routev3.Route) {
			r.GetRoute().PrefixRewrite = "/api/"
			r.GetRoute().HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: "reviews.internal"}
			r.RequestHeadersToAdd = []*corev3.HeaderValueOption{
				hdr("x-set", "route", corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD),
				hdr("x-keep", "route", corev3.HeaderValueOption_ADD_IF_ABSENT)}
			r.RequestHeadersToRemove = []string{"x-drop"}
			r.ResponseHeadersToAdd = []*corev3.HeaderValueOption{hdr("x-served-by", "weft", corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD)}
			r.ResponseHeadersToRemove = []string{"x-internal"}
		})),
	)
	cp := st.StartControlPlane(t)
	cp.Set(st.Snapshot{Listeners: []types.Resource{st.OutboundListener()}, Routes: []types.Resource{st.RouteConfig(vhost)},
		Clusters: []types.Resource{st.EDSCluster(cn)}, Endpoints: []types.Resource{st.Endpoints(cn, st.Endpoint{Addr: st.HostPort(be.URL)})}})
	base := st.StartSidecar(t, cp, st.SidecarOptions{}).URL(t, st.OutboundListenerName)
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	code, _, h := st.Get(t, noFollow, base, "reviews:9080", "/old?q=1")
	if code != 308 || h.Get("Location") != "http://reviews:8443/new?q=1" {
		t.Errorf("redirect: %d Location=%q, want 308 http://reviews:8443/new?q=1", code, h.Get("Location"))
	}
	code, body, _ := st.Get(t, client, base, "reviews", "/gone")
	if code != 503 || body != "Service default/gone not found" {
		t.Errorf("direct response: %d %q", code, body)
	}

	req, _ := http.NewRequest(http.MethodGet, base+"/v1/items?id=3", nil)
	req.Host = "reviews.default"
	req.Header.Set("X-Set", "caller")
	req.Header.Set("X-Keep", "caller")
	req.Header.Set("X-Drop", "caller")
	req.Header.Set("Connection", "X-Hop")
	req.Header.Set("X-Hop", "per-connection")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var up *http.Request
	select {
	case up = <-seen:
	case <-time.After(10 * time.Second):
		t.Fatalf("rewritten request never reached the backend (response %d)", resp.StatusCode)
	}
	if up.URL.RequestURI() != "/api/items?id=3" || up.Host != "reviews.internal" {
		t.Errorf("upstream saw %s Host %s, want /api/items?id=3 Host reviews.internal", up.URL.RequestURI(), up.Host)
	}
	if up.Header.Get("X-Hop") != "" {
		t.Errorf("X-Hop, named by Connection, reached the upstream")
	}
	if up.Header.Get("X-Set") != "route" || up.Header.Get("X-Keep") != "caller" || up.Header.Get("X-Drop") != "" {
		t.Errorf("upstream headers X-Set=%q X-Keep=%q X-Drop=%q, want route, caller, none",
			up.Header.Get("X-Set"), up.Header.Get("X-Keep"), up.Header.Get("X-Drop"))
	}
	if resp.Header.Get("X-Served-By") != "weft" || resp.Header.Get("X-Internal") != "" {
		t.Errorf("response headers X-Served-By=%q X-Internal=%q", resp.Header.Get("X-Served-By"), resp.Header.Get("X-Internal"))
	}
}

func TestStatsCountRequestsByClusterAndClass(t *testing.T) {
	ok := st.Backend(t, "ok", nil)
	cp := st.StartControlPlane(t)
	snap, cn := oneBackend([]string{ok.URL}, nil)
	cp.Set(snap)
	sc := st.StartSidecar(t, cp, st.SidecarOptions{})
	base := sc.URL(t, st.OutboundListenerName)
	for range 3 {
		st.Get(t, client, base, "reviews", "/")
	}
	st.Get(t, client, base, "nobody", "/")
	var b strings.Builder
	sc.Proxy.WritePrometheus(&b)
	for _, want := range []string{
		`weft_cluster_requests_total{cluster="` + cn + `",class="2xx"} 3`,
		`weft_cluster_request_duration_seconds_count{cluster="` + cn + `"} 3`,
		`weft_listener_requests_total{listener="outbound_http"} 4`,
		`weft_listener_connections_total{listener="outbound_http"}`,
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("stats lack %q:\n%s", want, b.String())
		}
	}
}
