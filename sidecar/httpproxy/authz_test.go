package httpproxy_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/weftmesh/weft/contract"
	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// withRBAC returns the inbound listener l with RBAC filters before its router, as the
// control plane translates MeshPolicies (internal/snapshot/policy.go).
func withRBAC(t *testing.T, l *listenerv3.Listener, filters ...*rbacv3.RBAC) *listenerv3.Listener {
	t.Helper()
	f := l.FilterChains[0].Filters[len(l.FilterChains[0].Filters)-1]
	var hcm hcmv3.HttpConnectionManager
	if err := f.GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatal(err)
	}
	var hf []*hcmv3.HttpFilter
	for _, r := range filters {
		a, err := anypb.New(r)
		if err != nil {
			t.Fatal(err)
		}
		hf = append(hf, &hcmv3.HttpFilter{Name: contract.RBACFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}})
	}
	hcm.HttpFilters = append(hf, hcm.HttpFilters...)
	a, err := anypb.New(&hcm)
	if err != nil {
		t.Fatal(err)
	}
	f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
	return l
}

func pathPerm(prefix string) *rbacconfigv3.Permission {
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{
		Rule: &matcherv3.PathMatcher_Path{Path: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: prefix}}}}}}
}

func principalExact(id string) *rbacconfigv3.Principal {
	return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Authenticated_{Authenticated: &rbacconfigv3.Principal_Authenticated{
		PrincipalName: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id}}}}}
}

// cartPolicies are the callee's: shop/no-admin (DENY) refuses /admin/ to everyone;
// shop/web-only (ALLOW) admits web's identity for GET on any path.
func cartPolicies() []*rbacv3.RBAC {
	anyone := []*rbacconfigv3.Principal{{Identifier: &rbacconfigv3.Principal_Any{Any: true}}}
	deny := &rbacv3.RBAC{Rules: &rbacconfigv3.RBAC{Action: rbacconfigv3.RBAC_DENY, Policies: map[string]*rbacconfigv3.Policy{
		"shop/no-admin/0": {Permissions: []*rbacconfigv3.Permission{pathPerm("/admin/")}, Principals: anyone},
	}}}
	get := &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Header{Header: &routev3.HeaderMatcher{Name: ":method",
		HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "GET"}}}}}}
	allow := &rbacv3.RBAC{Rules: &rbacconfigv3.RBAC{Action: rbacconfigv3.RBAC_ALLOW, Policies: map[string]*rbacconfigv3.Policy{
		"shop/web-only/0": {Permissions: []*rbacconfigv3.Permission{get}, Principals: []*rbacconfigv3.Principal{principalExact(webID.String())}},
	}}}
	return []*rbacv3.RBAC{deny, allow}
}

// policedPair is twoSidecars whose callee enforces cartPolicies; it returns once the
// callee runs them.
func policedPair(t *testing.T, goroutines bool) *meshPair {
	t.Helper()
	p := twoSidecars(t, goroutines, 0, "", 0)
	p.snap.Listeners[1] = withRBAC(t, p.snap.Listeners[1].(*listenerv3.Listener), cartPolicies()...)
	p.cp.Set(p.snap)
	st.Eventually(t, 10*time.Second, func() bool {
		code, _ := plainGet(p.calleeAddr)
		return code == http.StatusForbidden
	}, "the callee does not enforce its policies")
	return p
}

// rawRequest sends one request as written on conn and reads the answer.
func rawRequest(t *testing.T, conn net.Conn, method, target string, headers ...string) (int, string) {
	t.Helper()
	var b strings.Builder
	b.WriteString(method + " " + target + " HTTP/1.1\r\nHost: cart\r\n")
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, b.String()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// metric reads one sample of the callee's /stats text.
func metric(t *testing.T, p *meshPair, name, labels string) int {
	t.Helper()
	var buf bytes.Buffer
	p.callee.Proxy.WritePrometheus(&buf)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name+"{"+labels+"}") + ` (\d+)$`).FindStringSubmatch(buf.String())
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// An allowed caller (web, over mutual TLS through its own sidecar) reaches the app; a
// path a DENY policy names is refused whoever asks, however the path is spelled; another
// identity (cart's own certificate) and a plaintext caller are refused with a 403 that
// names the ALLOW policy; the decisions are counted. On both HTTP paths: with the loop on,
// TLS connections join it after their handshake as plaintext ones do (handoffs unchanged).
func TestAuthzInboundEnforcement(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		p := policedPair(t, goroutines)
		for range 3 {
			if code, body, _ := st.Get(t, client, p.outbound, "cart", "/items"); code != 200 || body != "cart-app HTTP/1.1" {
				t.Fatalf("web through its sidecar: %d %q, want 200 from the app", code, body)
			}
		}
		code, body, _ := st.Get(t, client, p.outbound, "cart", "/admin/users")
		if code != http.StatusForbidden || !strings.Contains(body, "MeshPolicy shop/no-admin") || !strings.Contains(body, webID.String()) {
			t.Errorf("web on /admin/: %d %q, want 403 naming shop/no-admin and the caller", code, body)
		}

		// web's certificate on a connection of our own: the path spellings.
		conn, err := tls.Dial("tcp", p.calleeAddr, p.callerID.ClientConfig([]string{"http/1.1"}))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		for _, target := range []string{"/admin/x", "//admin/x", "/./admin/x", "/items/../admin/x", "/%61dmin/x", "/ADMIN/../admin/x?q=1"} {
			if code, body := rawRequest(t, conn, "GET", target); code != http.StatusForbidden || !strings.Contains(body, "shop/no-admin") {
				t.Errorf("GET %s with web's identity: %d %q, want 403 by shop/no-admin", target, code, body)
			}
		}
		if code, body := rawRequest(t, conn, "POST", "/items", "Content-Length: 0"); code != http.StatusForbidden || !strings.Contains(body, "MeshPolicy shop/web-only") {
			t.Errorf("POST (only GET is allowed): %d %q", code, body)
		}
		if code, _ := rawRequest(t, conn, "GET", "/items"); code != 200 {
			t.Errorf("GET /items with web's identity on a connection of our own: %d", code)
		}

		// cart's own certificate: a verified identity, not an allowed one. Headers that
		// claim web's identity change nothing.
		other, err := tls.Dial("tcp", p.calleeAddr, p.calleeID.ClientConfig([]string{"http/1.1"}))
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		forged := []string{"X-Forwarded-Client-Cert: By=spiffe://cluster.local/ns/shop/sa/cart;URI=" + webID.String(),
			"X-Weft-Peer: " + webID.String(), "X-Weft-Principal: " + webID.String()}
		if code, body := rawRequest(t, other, "GET", "/items", forged...); code != http.StatusForbidden ||
			!strings.Contains(body, "MeshPolicy shop/web-only") || !strings.Contains(body, cartID.String()) {
			t.Errorf("cart's identity with forged headers: %d %q, want 403 naming shop/web-only and %s", code, body, cartID)
		}

		// Plaintext (permissive): no identity, so web-only refuses it, forged headers or not.
		handoffs := metric(t, p, "weft_listener_loop_handoffs_total", `listener="inbound_http"`)
		plain, err := net.Dial("tcp", p.calleeAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer plain.Close()
		for range 2 {
			if code, body := rawRequest(t, plain, "GET", "/items", forged...); code != http.StatusForbidden ||
				!strings.Contains(body, "without a mesh identity") || !strings.Contains(body, "shop/web-only") {
				t.Errorf("plaintext with forged headers: %d %q, want 403", code, body)
			}
		}
		if code, body := rawRequest(t, plain, "GET", "/admin/x"); code != http.StatusForbidden || !strings.Contains(body, "shop/no-admin") {
			t.Errorf("plaintext on /admin/: %d %q, want 403 by the DENY policy", code, body)
		}
		if !goroutines {
			if h := metric(t, p, "weft_listener_loop_handoffs_total", `listener="inbound_http"`); h != handoffs {
				t.Errorf("the event loop handed off %d plaintext connections; the refusals must be its own", h-handoffs)
			}
		}

		if n := metric(t, p, "weft_authz_requests_total", `decision="allow",policy="shop/web-only"`); n < 4 {
			t.Errorf("allowed count %d, want at least 4", n)
		}
		if n := metric(t, p, "weft_authz_requests_total", `decision="deny",policy="shop/no-admin"`); n < 8 {
			t.Errorf("DENY count %d, want at least 8", n)
		}
		if n := metric(t, p, "weft_authz_requests_total", `decision="deny",policy="shop/web-only"`); n < 4 {
			t.Errorf("not-allowed count %d, want at least 4", n)
		}
	})
}

// Without policies every caller is admitted and nothing is counted (no policy = allow).
func TestAuthzNoPolicyAllowsAll(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		p := twoSidecars(t, goroutines, 0, "", 0)
		if code, err := plainGet(p.calleeAddr); err != nil || code != 200 {
			t.Fatalf("plaintext without policies: %d %v", code, err)
		}
		if code, _, _ := st.Get(t, client, p.outbound, "cart", "/admin/x"); code != 200 {
			t.Fatalf("mutual TLS without policies: %d", code)
		}
		var buf bytes.Buffer
		p.callee.Proxy.WritePrometheus(&buf)
		if strings.Contains(buf.String(), "weft_authz_requests_total{") {
			t.Errorf("decisions counted without a policy:\n%s", buf.String())
		}
	})
}

// HTTP/2 over mutual TLS (ALPN h2, the goroutine path's HTTP/2 server) is judged on the
// same identity: web's certificate gets GET through, cart's gets 403 naming the policy.
func TestAuthzHTTP2OverMTLS(t *testing.T) {
	p := policedPair(t, false)
	for _, c := range []struct {
		cert     func() *tls.Config
		want     int
		contains string
	}{
		{func() *tls.Config { return p.callerID.ClientConfig([]string{"h2"}) }, 200, "cart-app"},
		{func() *tls.Config { return p.calleeID.ClientConfig([]string{"h2"}) }, http.StatusForbidden, "MeshPolicy shop/web-only"},
	} {
		tr := &http.Transport{TLSClientConfig: c.cert(), ForceAttemptHTTP2: true}
		cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		req, _ := http.NewRequest(http.MethodGet, "https://"+p.calleeAddr+"/items", nil)
		req.Host = "cart"
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatalf("HTTP/2 over mutual TLS: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		tr.CloseIdleConnections()
		if resp.Proto != "HTTP/2.0" || resp.StatusCode != c.want || !strings.Contains(string(body), c.contains) {
			t.Errorf("%s %d %q, want HTTP/2.0 %d containing %q", resp.Proto, resp.StatusCode, body, c.want, c.contains)
		}
	}
}
