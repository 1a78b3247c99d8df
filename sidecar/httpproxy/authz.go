package httpproxy

import (
	"net/http"

	"github.com/weftmesh/weft/sidecar/authz"
	"github.com/weftmesh/weft/sidecar/identity"
)

// authorize applies the listener's MeshPolicies (config.HTTPListener.Authz) to r on the
// goroutine path: the principal is the mutual-TLS peer the handshake verified
// (identity.PeerFrom), never anything the request carries.
func (l *Listener) authorize(r *http.Request) (body string) {
	hl := l.hl.Load()
	if hl == nil || hl.Authz == nil {
		return ""
	}
	var principal string
	if id, ok := identity.PeerFrom(r.Context()); ok {
		principal = id.String()
	}
	return l.authorizeAs(r, principal)
}

// authorizeAs applies the listener's MeshPolicies to r from principal (the verified peer's
// SPIFFE ID; "" for plaintext). It counts the decision and returns the 403 body for a
// refused request ("" when allowed).
func (l *Listener) authorizeAs(r *http.Request, principal string) (body string) {
	hl := l.hl.Load()
	if hl == nil || hl.Authz == nil {
		return ""
	}
	d := authz.Check(hl.Authz, authz.Request{Principal: principal, Authority: r.Host, Method: r.Method, Path: requestPath(r)})
	l.proxy.authz.Count(d.Allowed, d.Policy)
	if d.Allowed {
		return ""
	}
	return d.Body(principal)
}

// requestPath is the request target's path as the caller sent it: the event loop's
// requests carry it in RawPath (httphead), net/http's in RawPath when its escaping differs
// from the default and else in Path.
func requestPath(r *http.Request) string {
	if r.URL.RawPath != "" {
		return r.URL.RawPath
	}
	return r.URL.EscapedPath()
}
