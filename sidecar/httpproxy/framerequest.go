package httpproxy

import (
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"

	"github.com/weftmesh/weft/sidecar/config"
)

// The frame relay's view of a caller's request (frames.go): the http.Request its HEADERS
// make, and whether the relay serves it.

// request builds the http.Request of a caller's HEADERS, as net/http's server would
// (RFC 9113 §8.3.1); ok is false for a malformed one (a stream error).
func (f *fconn) request(fr *http2.MetaHeadersFrame) (r *http.Request, te, ok bool) {
	if fr.Truncated || len(fr.Fields) > f.lim.MaxHeaders+5 {
		return nil, false, false
	}
	var method, path, scheme, authority string
	hdr := make(http.Header, len(fr.Fields))
	// One array holds every field's value (as net/http's server does): a name seen once
	// takes a one-element slice of it, capped so a repeated name's append copies out.
	vals := make([]string, len(fr.Fields))
	for i, hf := range fr.Fields {
		if hf.IsPseudo() {
			switch hf.Name {
			case ":method":
				method = hf.Value
			case ":path":
				path = hf.Value
			case ":scheme":
				scheme = hf.Value
			case ":authority":
				authority = hf.Value
			default:
				return nil, false, false
			}
			continue
		}
		switch hf.Name {
		case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade":
			return nil, false, false
		case "te":
			if hf.Value != "trailers" {
				return nil, false, false
			}
			te = true
			continue
		}
		k := canonicalName(hf.Name)
		if vv, ok := hdr[k]; ok {
			hdr[k] = append(vv, hf.Value)
		} else {
			vals[i] = hf.Value
			hdr[k] = vals[i : i+1 : i+1]
		}
	}
	if method == "" || method == http.MethodConnect || scheme == "" || path == "" || path[0] != '/' {
		return nil, false, false
	}
	if authority == "" {
		authority = hdr.Get("Host")
	}
	delete(hdr, "Host")
	u, ok := parsePath(path)
	if !ok {
		return nil, false, false
	}
	cl := int64(-1)
	if v := hdr["Content-Length"]; len(v) > 0 {
		n, err := strconv.ParseInt(v[0], 10, 64)
		if err != nil || n < 0 || len(v) > 1 {
			return nil, false, false
		}
		cl = n
	}
	if fr.StreamEnded() {
		cl = 0
	}
	r = &http.Request{Method: method, URL: u, Proto: "HTTP/2.0", ProtoMajor: 2, Header: hdr, Host: authority,
		RequestURI: path, ContentLength: cl, RemoteAddr: f.remote, Body: http.NoBody}
	return r, te, true
}

// parsePath is url.ParseRequestURI for an HTTP/2 :path (it starts with "/"), without its
// work for the common path: one whose path part has only characters a path never escapes
// is the URL's Path as it stands (RawPath empty), and what follows "?" is RawQuery, which
// is what url.ParseRequestURI makes of it. Anything else (escapes, other characters,
// control bytes) goes to url.ParseRequestURI.
func parsePath(path string) (*url.URL, bool) {
	p, q, hasQuery := strings.Cut(path, "?")
	plain := true
	for i := 0; i < len(p) && plain; i++ {
		plain = pathPlain[p[i]]
	}
	for i := 0; i < len(q) && plain; i++ {
		plain = q[i] > 0x20 && q[i] < 0x7f
	}
	if !plain {
		u, err := url.ParseRequestURI(path)
		return u, err == nil
	}
	u := &url.URL{Path: p, RawQuery: q, ForceQuery: hasQuery && q == ""}
	return u, true
}

// pathPlain marks the bytes url.URL keeps unescaped in a path: letters, digits and
// "-._~/$&+,:;=@".
var pathPlain = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "-._~/$&+,:;=@" {
		t[c] = true
	}
	return t
}()

// frameable returns r's route if the relay serves it, else nil: a forwarding route the
// event loop implements (config.Route.LoopSafe) to resolved clusters of ordinary endpoints
// that speak HTTP/2, and, inbound, an app that has answered and no containerConcurrency
// gate. What it does not serve, net/http does. The route is looked up once: the request
// goes by the one judged here whatever a config update does meanwhile.
func (l *Listener) frameable(r *http.Request) *config.Route {
	if l.inbound && (!l.appSeen.Load() || l.proxy.breaker.Load() != nil) {
		return nil
	}
	if !httpguts.ValidHostHeader(r.Host) || strings.Contains(r.Host, "\x00") {
		return nil
	}
	vh := l.routesFor(r.Host).VirtualHostFor(r.Host)
	if vh == nil {
		return nil
	}
	route := vh.RouteFor(r)
	if route == nil || !route.LoopSafe || route.Kind != config.ActionForward {
		return nil
	}
	for i := range route.Clusters {
		c := l.proxy.opts.Upstreams.Get(route.Clusters[i].Name)
		if c == nil {
			return nil
		}
		cc := c.Config()
		if cc.Unresolved != "" || cc.Function != nil || cc.Protocol.ForCaller(true) != config.UpstreamHTTP2 {
			return nil
		}
	}
	return route
}

// frameRoom reports whether a new caller connection may open upstream connections for
// route: the relay's pools are per caller connection, so once a cluster's max_connections
// are all open a new connection is left to net/http's path, whose pool per endpoint is
// shared by every caller connection (upstream.OpenH2Conn).
func (l *Listener) frameRoom(route *config.Route) bool {
	for i := range route.Clusters {
		if c := l.proxy.opts.Upstreams.Get(route.Clusters[i].Name); c == nil || !c.ConnRoom() {
			return false
		}
	}
	return true
}

// probeApp, on an inbound listener whose app has not answered yet, connects to the app
// the request goes to: if it accepts, the app has started (appSeen) and the relay may
// serve the connection; if not, net/http's path serves it and waits for the app to start
// (waitForApp). Once per sidecar, until the app is up.
func (l *Listener) probeApp(r *http.Request) {
	vh := l.routesFor(r.Host).VirtualHostFor(r.Host)
	if vh == nil {
		return
	}
	route := vh.RouteFor(r)
	if route == nil || len(route.Clusters) == 0 {
		return
	}
	c := l.proxy.opts.Upstreams.Get(route.Clusters[0].Name)
	if c == nil {
		return
	}
	h := c.Pick(0, false, nil)
	if h == nil {
		return
	}
	conn, err := net.DialTimeout("tcp", h.Address, appStartPoll)
	if err != nil {
		return
	}
	conn.Close()
	l.appSeen.Store(true)
}
