package httpproxy

import (
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/telemetry"
)

// ServeHTTP routes one downstream request: virtual host, first matching route, fault
// filter, then the route's action.
func (l *Listener) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if l.mtls != nil {
		r = l.mtls.withPeer(r) // the verified peer's SPIFFE ID on the context (mtls.go)
	}
	l.inflight.Add(1)
	l.requests.Add(1)
	defer l.inflight.Add(-1)
	if r.ProtoMajor == 2 {
		hw := &h2Writer{ResponseWriter: w, grpc: isGRPC(r)}
		defer hw.end()
		w = hw
	}
	if l.proxy.opts.Telemetry != nil {
		l.serveRecorded(w, r) // telemetry.go
		return
	}
	l.serve1(w, r)
}

// serve1 is ServeHTTP past the listener's counters: concurrency, routing, the action.
func (l *Listener) serve1(w http.ResponseWriter, r *http.Request) {
	if l.meshInbound() {
		delete(r.Header, telemetry.PeerHeader) // for the sidecar only (telemetry.go)
	}
	if body := l.authorize(r); body != "" { // MeshPolicy (authz.go), before anything reaches the app
		localReply(w, http.StatusForbidden, body)
		return
	}
	if l.inbound {
		if b := l.proxy.breaker.Load(); b != nil {
			if !b.acquire(r.Context()) {
				w.Header().Set(overloadedHeader, "true")
				localReply(w, http.StatusServiceUnavailable, "pending request queue full: this pod already runs and queues "+
					strconv.Itoa(int(b.limit))+" requests (containerConcurrency × 11); retry, or raise the function's max scale\n")
				return
			}
			defer b.release()
		}
	}
	rt := l.routesFor(r.Host)
	vh := rt.VirtualHostFor(r.Host)
	if vh == nil {
		if rec := l.recordOf(w); rec != nil {
			rec.Flags = "NR"
		}
		localReply(w, http.StatusNotFound, "no virtual host for "+r.Host+"; check the MeshRoute hosts\n")
		return
	}
	route := vh.RouteFor(r)
	if route == nil {
		if rec := l.recordOf(w); rec != nil {
			rec.Flags = "NR"
		}
		localReply(w, http.StatusNotFound, "no route matches "+r.Method+" "+r.URL.Path+" on "+r.Host+"\n")
		return
	}
	if f := route.Fault; f != nil {
		if f.DelayPerMillion > 0 && chance(f.DelayPerMillion) {
			t := l.proxy.opts.Clock.NewTimer(f.Delay)
			select {
			case <-t.C():
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
		if f.AbortStatus != 0 && chance(f.AbortPerMillion) {
			localReply(w, f.AbortStatus, "fault filter abort\n")
			return
		}
	}
	switch route.Kind {
	case config.ActionDirect:
		applyResponseHeaders(w.Header(), route)
		if route.Direct.Body != "" {
			w.Header().Set("Content-Type", "text/plain")
			w.Header().Set("Content-Length", strconv.Itoa(len(route.Direct.Body)))
		}
		w.WriteHeader(route.Direct.Status)
		_, _ = w.Write([]byte(route.Direct.Body))
	case config.ActionPassthrough, config.ActionBlocked:
		l.passthrough(w, r, route) // capture.go
	case config.ActionRedirect:
		applyResponseHeaders(w.Header(), route)
		w.Header().Set("Location", redirectLocation(r, route))
		w.WriteHeader(route.Redirect.Code)
	default:
		l.forward(w, r, route)
	}
}

// chance is true with probability perMillion/1e6.
func chance(perMillion uint32) bool {
	return perMillion >= 1_000_000 || rand.Uint32N(1_000_000) < perMillion
}

// localReply answers the request here; a gRPC call gets its answer as gRPC (grpcReply).
func localReply(w http.ResponseWriter, status int, body string) {
	if g, ok := w.(*h2Writer); ok && g.grpc {
		grpcReply(w, status, body)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

func redirectLocation(r *http.Request, route *config.Route) string {
	rd := route.Redirect
	scheme := rd.Scheme
	if scheme == "" {
		scheme = "http"
	}
	host := r.Host
	if rd.Host != "" {
		host = rd.Host
	}
	if rd.Port != 0 {
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		host = net.JoinHostPort(host, strconv.Itoa(int(rd.Port)))
	}
	path := r.URL.EscapedPath()
	switch {
	case rd.Path != "":
		path = rd.Path
	case rd.PrefixRewrite != "":
		path = route.Match.RewritePath(path, rd.PrefixRewrite)
	}
	loc := scheme + "://" + host + path
	if r.URL.RawQuery != "" && !rd.StripQuery && !strings.Contains(path, "?") {
		loc += "?" + r.URL.RawQuery
	}
	return loc
}

func applyHeaderOptions(h http.Header, opts []config.HeaderOption) {
	for _, o := range opts {
		switch o.Action {
		case config.AppendOrAdd:
			h.Add(o.Name, o.Value)
		case config.AddIfAbsent:
			if _, ok := h[o.Name]; !ok {
				h[o.Name] = []string{o.Value}
			}
		case config.OverwriteOrAdd:
			h[o.Name] = []string{o.Value}
		case config.OverwriteIfExists:
			if _, ok := h[o.Name]; ok {
				h[o.Name] = []string{o.Value}
			}
		}
	}
}

func applyResponseHeaders(h http.Header, route *config.Route) {
	applyHeaderEdits(h, route.ResponseHeadersToRemove, route.ResponseHeadersToAdd)
}

// applyHeaderEdits removes, then adds or sets, headers.
func applyHeaderEdits(h http.Header, remove []string, add []config.HeaderOption) {
	for _, n := range remove {
		delete(h, n)
	}
	applyHeaderOptions(h, add)
}
