package httpproxy_test

import (
	"net/http"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/wrapperspb"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// Issue 15 item 4: a prefix rewrite on an Exact match was silently ignored (the path went up
// unchanged). Envoy swaps "the matched prefix (or path)": the prefix for a prefix match, the
// whole path for a path or safe_regex match. Each kind, on both paths, for forwarded requests
// and for redirects.
func TestPrefixRewriteOnEveryMatchKind(t *testing.T) {
	cn := st.OutboundClusterName(9080, "", "reviews", "default", "default", "reviews")
	rewrite := func(to string) st.RouteOption {
		return st.Edit(func(r *routev3.Route) { r.GetRoute().PrefixRewrite = to })
	}
	regex := func(re string) st.RouteOption {
		return st.Edit(func(r *routev3.Route) {
			r.Match.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}
		})
	}
	caseless := st.Edit(func(r *routev3.Route) { r.Match.CaseSensitive = wrapperspb.Bool(false) })
	redirect := func(to string) st.RouteOption {
		return st.Edit(func(r *routev3.Route) {
			r.Action = &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{
				PathRewriteSpecifier: &routev3.RedirectAction_PrefixRewrite{PrefixRewrite: to}}}
		})
	}
	vhost := st.VirtualHost("default/reviews", "reviews", "default", []int{9080},
		st.Route("exact", st.Path("/login"), st.To(cn), rewrite("/auth/login")),
		st.Route("exact-caseless", st.Path("/Logout"), caseless, st.To(cn), rewrite("/auth/logout")),
		st.Route("regex", regex("/items/[0-9]+"), st.To(cn), rewrite("/item")),
		st.Route("prefix-caseless", st.Prefix("/API/"), caseless, st.To(cn), rewrite("/v2/")),
		st.Route("redirect-exact", st.Path("/old"), redirect("/new")),
		st.Route("redirect-regex", regex("/r/[a-z]+"), redirect("/landing")),
		st.Route("redirect-prefix", st.Prefix("/docs/"), redirect("/manual/")),
		st.Route("prefix", st.Prefix("/v1/"), st.To(cn), rewrite("/api/")),
	)
	cases := []struct{ path, want string }{
		{"/login", "/auth/login"},
		{"/login?next=/x", "/auth/login?next=/x"}, // the query is not part of the matched path
		{"/LOGOUT", "/auth/logout"},
		{"/items/42", "/item"},
		{"/items/42?full=1", "/item?full=1"},
		{"/api/users/7", "/v2/users/7"}, // the path's own spelling of the prefix is swapped
		{"/v1/ratings", "/api/ratings"},
		{"/v1/", "/api/"},
	}
	redirects := []struct{ path, want string }{
		{"/old?q=1", "http://reviews/new?q=1"},
		{"/r/abc", "http://reviews/landing"},
		{"/docs/a/b", "http://reviews/manual/a/b"},
	}
	bothPaths(t, func(t *testing.T, goroutines bool) {
		got := make(chan string, 1)
		be := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) {
			got <- r.URL.RequestURI()
		})
		cp := st.StartControlPlane(t)
		cp.Set(st.Snapshot{Listeners: []types.Resource{st.OutboundListener()}, Routes: []types.Resource{st.RouteConfig(vhost)},
			Clusters: []types.Resource{st.EDSCluster(cn)}, Endpoints: []types.Resource{st.Endpoints(cn, st.Endpoint{Addr: st.HostPort(be.URL)})}})
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		for _, c := range cases {
			if code, _, _ := st.Get(t, client, base, "reviews", c.path); code != 200 {
				t.Errorf("GET %s: %d, want 200", c.path, code)
				continue
			}
			if uri := <-got; uri != c.want {
				t.Errorf("GET %s reached the backend as %s, want %s", c.path, uri, c.want)
			}
		}
		noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		for _, c := range redirects {
			code, _, h := st.Get(t, noFollow, base, "reviews", c.path)
			if code != 301 || h.Get("Location") != c.want {
				t.Errorf("GET %s: %d Location=%q, want 301 %s", c.path, code, h.Get("Location"), c.want)
			}
		}
	})
}
