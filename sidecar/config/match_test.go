package config

import (
	"net/http/httptest"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func vh(name string, domains ...string) *routev3.VirtualHost {
	return &routev3.VirtualHost{Name: name, Domains: domains, Routes: []*routev3.Route{{
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: name}}}}}}
}

func TestVirtualHostSelectionFollowsEnvoyOrder(t *testing.T) {
	rt, err := DecodeRouteConfig(&routev3.RouteConfiguration{Name: "outbound_http", VirtualHosts: []*routev3.VirtualHost{
		vh("exact", "reviews", "reviews:9080", "reviews.default.svc.cluster.local"),
		vh("suffix-short", "*.com"),
		vh("suffix-long", "*.example.com"),
		vh("prefix", "api.*"),
		vh("star", "*"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]string{
		"reviews":                           "exact",
		"REVIEWS:9080":                      "exact",
		"reviews.default.svc.cluster.local": "exact",
		"reviews:9081":                      "star", // port forms are matched as written
		"a.example.com":                     "suffix-long",
		"a.other.com":                       "suffix-short",
		"api.example.com":                   "suffix-long", // suffix wildcards beat prefix ones
		"api.internal":                      "prefix",
		"unknown":                           "star",
	} {
		if got := rt.VirtualHostFor(host); got == nil || got.Name != want {
			t.Errorf("host %q: got %v, want %s", host, got, want)
		}
	}
}

func sm(exact string) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: exact}}
}

func TestRouteMatching(t *testing.T) {
	re := &matcherv3.RegexMatcher{Regex: "/items/[0-9]+"}
	cases := []struct {
		name   string
		match  *routev3.RouteMatch
		method string
		target string
		header map[string]string
		want   bool
	}{
		{"prefix", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/api"}}, "GET", "/api/v1?x=1", nil, true},
		{"prefix miss", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/api"}}, "GET", "/ap", nil, false},
		{"exact ignores query", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/a"}}, "GET", "/a?b=c", nil, true},
		{"exact case-insensitive", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/A"}, CaseSensitive: wrapperspb.Bool(false)}, "GET", "/a", nil, true},
		{"exact case-sensitive by default", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/A"}}, "GET", "/a", nil, false},
		{"regex is anchored", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: re}}, "GET", "/items/12/x", nil, false},
		{"regex", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: re}}, "GET", "/items/12", nil, true},
		{"method", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
			Headers: []*routev3.HeaderMatcher{{Name: ":method", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: sm("POST")}}}}, "GET", "/", nil, false},
		{"header exact", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
			Headers: []*routev3.HeaderMatcher{{Name: "x-user", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: sm("jason")}}}}, "GET", "/", map[string]string{"X-User": "jason"}, true},
		{"header inverted", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
			Headers: []*routev3.HeaderMatcher{{Name: "x-user", InvertMatch: true, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: sm("jason")}}}}, "GET", "/", map[string]string{"X-User": "jason"}, false},
		{"header absent never matches a string matcher", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
			Headers: []*routev3.HeaderMatcher{{Name: "x-user", InvertMatch: true, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: sm("jason")}}}}, "GET", "/", nil, false},
		{"header present", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
			Headers: []*routev3.HeaderMatcher{{Name: "x-canary", HeaderMatchSpecifier: &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}}}}, "GET", "/", map[string]string{"X-Canary": ""}, true},
		{"query exact", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
			QueryParameters: []*routev3.QueryParameterMatcher{{Name: "v", QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_StringMatch{StringMatch: sm("2")}}}}, "GET", "/?v=2", nil, true},
		{"query missing", &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"},
			QueryParameters: []*routev3.QueryParameterMatcher{{Name: "v", QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_PresentMatch{PresentMatch: true}}}}, "GET", "/?w=2", nil, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := decodeMatch(tc.match, "test")
			if err != nil {
				t.Fatal(err)
			}
			r := httptest.NewRequest(tc.method, tc.target, nil)
			for k, v := range tc.header {
				r.Header.Set(k, v)
			}
			path := r.URL.Path
			if got := m.Matches(r, path); got != tc.want {
				t.Errorf("Matches = %v, want %v", got, tc.want)
			}
		})
	}
}

func BenchmarkRouteFor(b *testing.B) {
	var vhs []*routev3.VirtualHost
	for _, n := range []string{"a", "b", "c", "reviews", "d"} {
		vhs = append(vhs, vh(n, n, n+".default", n+".default.svc.cluster.local", n+":9080"))
	}
	rt, _ := DecodeRouteConfig(&routev3.RouteConfiguration{VirtualHosts: vhs})
	r := httptest.NewRequest("GET", "/api/v1/items", nil)
	b.ReportAllocs()
	for b.Loop() {
		if rt.VirtualHostFor("reviews:9080").RouteFor(r) == nil {
			b.Fatal("no route")
		}
	}
}
