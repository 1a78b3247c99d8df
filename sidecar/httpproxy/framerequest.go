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
	for _, hf := range fr.Fields {
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
		hdr[k] = append(hdr[k], hf.Value)
	}
	if method == "" || method == http.MethodConnect || scheme == "" || path == "" || path[0] != '/' {
		return nil, false, false
	}
	if authority == "" {
		authority = hdr.Get("Host")
	}
	delete(hdr, "Host")
	u, err := url.ParseRequestURI(path)
	if err != nil {
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
		RequestURI: path, ContentLength: cl, RemoteAddr: f.nc.RemoteAddr().String(), Body: http.NoBody}
	return r, te, true
}

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
