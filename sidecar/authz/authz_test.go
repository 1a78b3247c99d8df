package authz_test

import (
	"strings"
	"testing"

	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/authz"
	"github.com/weftmesh/weft/sidecar/config"
)

const (
	web   = "spiffe://cluster.local/ns/shop/sa/web"
	other = "spiffe://cluster.local/ns/shop/sa/cart"
	ops   = "spiffe://cluster.local/ns/ops/sa/debugger"
)

func str(kind string, v string) *matcherv3.StringMatcher {
	switch kind {
	case "prefix":
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: v}}
	case "regex":
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: v}}}
	case "exact-i":
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}, IgnoreCase: true}
	}
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}
}

func header(name string, m *matcherv3.StringMatcher) *rbacconfigv3.Permission {
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Header{Header: &routev3.HeaderMatcher{Name: name,
		HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: m}}}}
}

func path(m *matcherv3.StringMatcher) *rbacconfigv3.Permission {
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{Rule: &matcherv3.PathMatcher_Path{Path: m}}}}
}

func and(ps ...*rbacconfigv3.Permission) *rbacconfigv3.Permission {
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_AndRules{AndRules: &rbacconfigv3.Permission_Set{Rules: ps}}}
}

func or(ps ...*rbacconfigv3.Permission) *rbacconfigv3.Permission {
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_OrRules{OrRules: &rbacconfigv3.Permission_Set{Rules: ps}}}
}

func authn(m *matcherv3.StringMatcher) *rbacconfigv3.Principal {
	return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Authenticated_{Authenticated: &rbacconfigv3.Principal_Authenticated{PrincipalName: m}}}
}

var anyone = &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Any{Any: true}}
var anything = &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Any{Any: true}}

// decode runs RBAC filters through the sidecar's listener decoder, as they arrive over xDS.
func decode(t *testing.T, filters ...*rbacv3.RBAC) *config.Authz {
	t.Helper()
	var hf []*hcmv3.HttpFilter
	for _, f := range filters {
		a, _ := anypb.New(f)
		hf = append(hf, &hcmv3.HttpFilter{Name: contract.RBACFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}})
	}
	r, _ := anypb.New(&routerv3.Router{})
	hf = append(hf, &hcmv3.HttpFilter{Name: contract.RouterFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: r}})
	h, _ := anypb.New(&hcmv3.HttpConnectionManager{StatPrefix: "inbound_http", HttpFilters: hf,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: "x", ConfigSource: &corev3ConfigSourceADS}}})
	l := &listenerv3.Listener{Name: "inbound_http", Address: addr, FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
		Name: contract.HCMFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: h}}}}}}
	info, err := config.DecodeListener(l)
	if err != nil {
		t.Fatalf("decoding: %v", err)
	}
	if info.Authz == nil {
		t.Fatal("no Authz decoded")
	}
	return info.Authz
}

func rbac(action rbacconfigv3.RBAC_Action, ps map[string]*rbacconfigv3.Policy) *rbacv3.RBAC {
	return &rbacv3.RBAC{Rules: &rbacconfigv3.RBAC{Action: action, Policies: ps}}
}

func TestCheckIstioSemantics(t *testing.T) {
	deny := rbac(rbacconfigv3.RBAC_DENY, map[string]*rbacconfigv3.Policy{
		"shop/no-delete/0": {Permissions: []*rbacconfigv3.Permission{header(":method", str("exact", "DELETE"))}, Principals: []*rbacconfigv3.Principal{anyone}},
		"shop/no-debug/0":  {Permissions: []*rbacconfigv3.Permission{path(str("prefix", "/debug/"))}, Principals: []*rbacconfigv3.Principal{authn(str("regex", `spiffe://[^/]+/ns/ops/sa/[^/]+`))}},
	})
	allow := rbac(rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{
		"shop/reviews/0": {Permissions: []*rbacconfigv3.Permission{and(header(":authority", str("exact-i", "reviews")), or(path(str("prefix", "/api/")), path(str("exact", "/"))))},
			Principals: []*rbacconfigv3.Principal{authn(str("exact", web))}},
		"shop/reviews/1": {Permissions: []*rbacconfigv3.Permission{path(str("exact", "/healthz"))}, Principals: []*rbacconfigv3.Principal{anyone}},
		"shop/ops/0":     {Permissions: []*rbacconfigv3.Permission{anything}, Principals: []*rbacconfigv3.Principal{authn(str("regex", `spiffe://[^/]+/ns/ops/sa/[^/]+`))}},
	})
	a := decode(t, deny, allow)
	for _, c := range []struct {
		name   string
		r      authz.Request
		allow  bool
		policy string
	}{
		{"allowed principal, host any case, prefix path", authz.Request{Principal: web, Authority: "REVIEWS", Method: "GET", Path: "/api/x?y=1"}, true, "shop/reviews"},
		{"allowed principal, wrong host", authz.Request{Principal: web, Authority: "ratings", Method: "GET", Path: "/api/x"}, false, "shop/ops, shop/reviews"},
		{"other principal", authz.Request{Principal: other, Authority: "reviews", Method: "GET", Path: "/api/x"}, false, "shop/ops, shop/reviews"},
		{"no principal (plaintext)", authz.Request{Authority: "reviews", Method: "GET", Path: "/api/x"}, false, "shop/ops, shop/reviews"},
		{"no principal, rule without from", authz.Request{Authority: "reviews", Method: "GET", Path: "/healthz"}, true, "shop/reviews"},
		{"DENY first, whoever", authz.Request{Principal: web, Authority: "reviews", Method: "DELETE", Path: "/api/x"}, false, "shop/no-delete"},
		{"DENY by namespace", authz.Request{Principal: ops, Authority: "reviews", Method: "GET", Path: "/debug/pprof"}, false, "shop/no-debug"},
		{"DENY by namespace does not catch plaintext", authz.Request{Authority: "reviews", Method: "GET", Path: "/debug/pprof"}, false, "shop/ops, shop/reviews"},
		{"namespace allowed", authz.Request{Principal: ops, Authority: "x", Method: "PUT", Path: "/anything"}, true, "shop/ops"},
		{"prefix is not substring", authz.Request{Principal: web, Authority: "reviews", Method: "GET", Path: "/apix"}, false, "shop/ops, shop/reviews"},
		{"dot segments out of the prefix", authz.Request{Principal: web, Authority: "reviews", Method: "GET", Path: "/api/../admin"}, false, "shop/ops, shop/reviews"},
		{"dot segments into the DENY", authz.Request{Principal: ops, Authority: "reviews", Method: "GET", Path: "/x/%2e%2E/debug/a"}, false, "shop/no-debug"},
		{"regex principal is anchored", authz.Request{Principal: "spiffe://cluster.local/ns/ops/sa/x/extra", Authority: "x", Method: "GET", Path: "/"}, false, "shop/ops, shop/reviews"},
	} {
		d := authz.Check(a, c.r)
		if d.Allowed != c.allow || d.Policy != c.policy {
			t.Errorf("%s: %+v, want allowed=%v policy %q", c.name, d, c.allow, c.policy)
		}
	}
	if d := authz.Check(nil, authz.Request{}); !d.Allowed || d.Policy != "" {
		t.Errorf("no policy: %+v, want allowed", d)
	}
}

// An ALLOW policy without rules (the "none" rule that never matches) refuses everyone and
// still names itself; DENY-only allows what it does not match.
func TestCheckAllowNothingAndDenyOnly(t *testing.T) {
	never := &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_NotRule{NotRule: anything}}
	a := decode(t, rbac(rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{
		contract.PolicyRuleName("vault", "lockdown", contract.NoRules): {Permissions: []*rbacconfigv3.Permission{never}, Principals: []*rbacconfigv3.Principal{anyone}},
	}))
	d := authz.Check(a, authz.Request{Principal: web, Authority: "vault", Method: "GET", Path: "/"})
	if d.Allowed || d.Policy != "vault/lockdown" || !strings.Contains(d.Body(web), "MeshPolicy vault/lockdown") {
		t.Errorf("allow-nothing: %+v %q", d, d.Body(web))
	}
	a = decode(t, rbac(rbacconfigv3.RBAC_DENY, map[string]*rbacconfigv3.Policy{
		"shop/no-delete/0": {Permissions: []*rbacconfigv3.Permission{header(":method", str("exact", "DELETE"))}, Principals: []*rbacconfigv3.Principal{anyone}},
	}))
	if d := authz.Check(a, authz.Request{Method: "GET", Path: "/"}); !d.Allowed || d.Policy != "" {
		t.Errorf("deny-only, not matching: %+v", d)
	}
	if d := authz.Check(a, authz.Request{Method: "DELETE", Path: "/"}); d.Allowed || !d.Deny || !strings.Contains(d.Body(""), "without a mesh identity") {
		t.Errorf("deny-only, matching: %+v %q", d, d.Body(""))
	}
}

// The refusal names at most four ALLOW policies.
func TestCheckBodyBounded(t *testing.T) {
	ps := map[string]*rbacconfigv3.Policy{}
	for _, n := range []string{"a", "b", "c", "d", "e", "f"} {
		ps["ns/"+n+"/0"] = &rbacconfigv3.Policy{Permissions: []*rbacconfigv3.Permission{path(str("exact", "/"+n))}, Principals: []*rbacconfigv3.Principal{anyone}}
	}
	d := authz.Check(decode(t, rbac(rbacconfigv3.RBAC_ALLOW, ps)), authz.Request{Path: "/z"})
	if d.Allowed || d.Policy != "ns/a, ns/b, ns/c, ns/d and 2 more" {
		t.Errorf("%+v", d)
	}
}

func TestNormalizePath(t *testing.T) {
	for in, want := range map[string]string{
		"/a/b":          "/a/b",
		"/a/b?x=/../c":  "/a/b",
		"/a/b#frag":     "/a/b",
		"//a///b":       "/a/b",
		"/a/./b":        "/a/b",
		"/a/x/../b":     "/a/b",
		"/../../a":      "/a",
		"/a/..":         "/",
		"/a/.":          "/a/",
		"/%61/%62":      "/a/b",
		"/a%2fb":        "/a%2Fb",
		"/%2E%2e/a":     "/a",
		"/a/.b/c":       "/a/.b/c",
		"/a/..b":        "/a/..b",
		"*":             "*",
		"/%zz":          "/%zz",
		"/a%":           "/a%",
		"/%7e%41%2d":    "/~A-",
		"/%2F%2F..%2Fx": "/%2F%2F..%2Fx",
	} {
		if got := authz.NormalizePath(in); got != want {
			t.Errorf("NormalizePath(%q) = %q, want %q", in, got, want)
		}
	}
}

// The decoder refuses what the matcher does not implement, by name, so the sidecar NACKs
// it instead of enforcing less than the control plane meant.
func TestDecodeRefusesUnsupported(t *testing.T) {
	for name, f := range map[string]*rbacv3.RBAC{
		"LOG action":      rbac(rbacconfigv3.RBAC_LOG, nil),
		"shadow rules":    {Rules: &rbacconfigv3.RBAC{}, ShadowRules: &rbacconfigv3.RBAC{}},
		"no rules":        {},
		"other header":    rbac(rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{"a/b/0": {Permissions: []*rbacconfigv3.Permission{header("x-user", str("exact", "admin"))}, Principals: []*rbacconfigv3.Principal{anyone}}}),
		"source ip":       rbac(rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{"a/b/0": {Permissions: []*rbacconfigv3.Permission{anything}, Principals: []*rbacconfigv3.Principal{{Identifier: &rbacconfigv3.Principal_DirectRemoteIp{}}}}}),
		"no principals":   rbac(rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{"a/b/0": {Permissions: []*rbacconfigv3.Permission{anything}}}),
		"destination ip":  rbac(rbacconfigv3.RBAC_DENY, map[string]*rbacconfigv3.Policy{"a/b/0": {Permissions: []*rbacconfigv3.Permission{{Rule: &rbacconfigv3.Permission_DestinationPort{DestinationPort: 80}}}, Principals: []*rbacconfigv3.Principal{anyone}}}),
		"nested too deep": rbac(rbacconfigv3.RBAC_DENY, map[string]*rbacconfigv3.Policy{"a/b/0": {Permissions: []*rbacconfigv3.Permission{deepNot(12)}, Principals: []*rbacconfigv3.Principal{anyone}}}),
	} {
		a, _ := anypb.New(f)
		r, _ := anypb.New(&routerv3.Router{})
		h, _ := anypb.New(&hcmv3.HttpConnectionManager{StatPrefix: "inbound_http", HttpFilters: []*hcmv3.HttpFilter{
			{Name: contract.RBACFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}},
			{Name: contract.RouterFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: r}}},
			RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: "x", ConfigSource: &corev3ConfigSourceADS}}})
		l := &listenerv3.Listener{Name: "inbound_http", Address: addr, FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: contract.HCMFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: h}}}}}}
		if _, err := config.DecodeListener(l); err == nil || !strings.Contains(err.Error(), "rbac") {
			t.Errorf("%s: decoded (%v), want an error naming the rbac filter", name, err)
		}
	}
	// ALLOW before DENY, or two ALLOW filters, is not the contract's layout.
	allow := rbac(rbacconfigv3.RBAC_ALLOW, nil)
	deny := rbac(rbacconfigv3.RBAC_DENY, nil)
	for name, fs := range map[string][]*rbacv3.RBAC{"allow then deny": {allow, deny}, "two allow": {allow, allow}, "two deny": {deny, deny}} {
		func() {
			var hf []*hcmv3.HttpFilter
			for _, f := range fs {
				a, _ := anypb.New(f)
				hf = append(hf, &hcmv3.HttpFilter{Name: contract.RBACFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}})
			}
			r, _ := anypb.New(&routerv3.Router{})
			hf = append(hf, &hcmv3.HttpFilter{Name: contract.RouterFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: r}})
			h, _ := anypb.New(&hcmv3.HttpConnectionManager{StatPrefix: "inbound_http", HttpFilters: hf,
				RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: "x", ConfigSource: &corev3ConfigSourceADS}}})
			l := &listenerv3.Listener{Name: "inbound_http", Address: addr, FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
				Name: contract.HCMFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: h}}}}}}
			if _, err := config.DecodeListener(l); err == nil {
				t.Errorf("%s: decoded", name)
			}
		}()
	}
}

// deepNot is not(not(...(any))) n levels deep.
func deepNot(n int) *rbacconfigv3.Permission {
	p := anything
	for range n {
		p = &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_NotRule{NotRule: p}}
	}
	return p
}

// BenchmarkCheck: the typical shape (one DENY, one ALLOW of two rules with a principal, a
// host of 10 forms, a prefix and a method), an allowed request with a normal path.
func BenchmarkCheck(b *testing.B) {
	var hosts []*rbacconfigv3.Permission
	for _, h := range []string{"reviews", "reviews:9080", "reviews.default", "reviews.default:9080", "reviews.default.svc", "reviews.default.svc:9080",
		"reviews.default.svc.cluster.local", "reviews.default.svc.cluster.local:9080", "10.96.0.10", "10.96.0.10:9080"} {
		hosts = append(hosts, header(":authority", str("exact-i", h)))
	}
	t := &testing.T{}
	a := decode(t, rbac(rbacconfigv3.RBAC_DENY, map[string]*rbacconfigv3.Policy{
		"default/no-delete/0": {Permissions: []*rbacconfigv3.Permission{header(":method", str("exact", "DELETE"))}, Principals: []*rbacconfigv3.Principal{anyone}},
	}), rbac(rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{
		"default/readers/0": {Permissions: []*rbacconfigv3.Permission{and(or(hosts...), path(str("prefix", "/api/")), header(":method", str("exact", "GET")))},
			Principals: []*rbacconfigv3.Principal{authn(str("exact", web))}},
		"default/readers/1": {Permissions: []*rbacconfigv3.Permission{path(str("exact", "/healthz"))}, Principals: []*rbacconfigv3.Principal{authn(str("regex", `spiffe://[^/]+/ns/monitoring/sa/[^/]+`))}},
	}))
	r := authz.Request{Principal: web, Authority: "reviews.default.svc.cluster.local:9080", Method: "GET", Path: "/api/v1/reviews/7?x=1"}
	b.ReportAllocs()
	for b.Loop() {
		if d := authz.Check(a, r); !d.Allowed {
			b.Fatal(d)
		}
	}
}
