package httpproxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftmesh/weft/sidecar/config"
)

// Transparent capture's side of the HTTP plane (issue 15; sidecar/capture). The listener
// bound at a capture listener's address (outbound 15001, inbound 15006) offers every
// connection it accepts to the Diverter, which takes those that were redirected to a
// destination served by another chain; it keeps the others (HTTP_PROXY callers, calls to
// its own address, and on the inbound listener the app port). Each HTTP chain's
// connections are served by an unbound listener with that chain's route table
// (ServeCaptured), on its event loops unless the loop is off (loopcapture.go). On the explicit-proxy listener each request
// picks its route table by its Host's port (routesFor). Routes to the passthrough and
// black-hole clusters are answered here (passthrough).

// Diverter takes over accepted connections that belong to another filter chain.
type Diverter interface {
	// Divert is offered each connection the named listener accepts, with its socket; it
	// reports whether it took the connection (it then holds its own duplicate of fd, and
	// the caller closes fd).
	Divert(listener string, fd int) bool
}

// capturing reports whether the listener is a capture listener's bound one.
func (l *Listener) capturing() bool {
	hl := l.hl.Load()
	return hl != nil && hl.Fallback != nil && l.proxy.opts.Diverter != nil
}

// divert offers an accepted socket of the event loop to the Diverter.
func (l *Listener) divert(fd int) bool {
	return l.capturing() && l.proxy.opts.Diverter.Divert(l.Name, fd)
}

// divertConn offers an accepted connection of the goroutine path to the Diverter.
func (l *Listener) divertConn(nc net.Conn) bool {
	if !l.capturing() {
		return false
	}
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return false
	}
	taken := false
	_ = rc.Control(func(fd uintptr) { taken = l.proxy.opts.Diverter.Divert(l.Name, int(fd)) })
	return taken
}

// routesFor is the route table of a request to host: by the host's port on an
// explicit-proxy listener, else the listener's one table.
func (l *Listener) routesFor(host string) *config.RouteTable {
	if hl := l.hl.Load(); hl != nil && hl.RoutesByPort != nil {
		return hl.RoutesFor(host)
	}
	return l.routes.Load()
}

// startUnbound makes the listener of one capture chain: it binds nothing, and serves the
// connections ServeCaptured hands it.
func (p *Proxy) startUnbound(hl *config.HTTPListener) *Listener {
	ln := &unboundListener{done: make(chan struct{})}
	l := &Listener{Name: hl.Name, proxy: p, addr: ln.Addr(), cfgAddr: hl.Address, ln: ln, conns: map[net.Conn]*connState{}, unbound: true}
	l.idleCond = sync.NewCond(&l.mu)
	l.setLimits(hl.Limits)
	l.h2 = newH2Server(l, ln.Addr(), l.lim)
	return l
}

// ServeCaptured serves a captured connection on the named listener's event loops (or its
// goroutine path, with the loop off), with in (bytes already read from it) first; nc's
// LocalAddr is its original destination. Once on a loop, nc itself is closed: the loop
// holds a duplicate of its socket (NetConn unwraps nc to reach it). It reports false, leaving nc to the caller, when
// there is no such listener or it is at its connection cap.
func (p *Proxy) ServeCaptured(listener string, nc net.Conn, in []byte) bool {
	l := p.Listener(listener)
	if l == nil {
		return false
	}
	l.connections.Add(1)
	if !l.admitConn() {
		return false
	}
	if l.serveOnLoop(nc, in) { // loopcapture.go
		return true
	}
	go l.serveConn(nc, in, nil)
	return true
}

// unboundListener stands in for the socket of a listener that binds none.
type unboundListener struct {
	done chan struct{}
	once atomic.Bool
}

func (u *unboundListener) Accept() (net.Conn, error) { <-u.done; return nil, net.ErrClosed }
func (u *unboundListener) Close() error {
	if u.once.CompareAndSwap(false, true) {
		close(u.done)
	}
	return nil
}
func (u *unboundListener) Addr() net.Addr { return &net.TCPAddr{} }

// Passthrough counters (weft_passthrough_requests_total, weft_blocked_requests_total).
var passStats struct{ requests, blocked, failed atomic.Uint64 }

// passTransport carries passthrough requests: at most passMaxConnsPerHost connections per
// destination, passMaxIdlePerHost of them kept idle for 90 s.
var passTransport = &http.Transport{
	Proxy:               nil,
	DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
	MaxIdleConnsPerHost: passMaxIdlePerHost,
	MaxConnsPerHost:     passMaxConnsPerHost,
	IdleConnTimeout:     90 * time.Second,
	DisableCompression:  true,
}

const (
	passMaxIdlePerHost  = 16
	passMaxConnsPerHost = 1024
)

var passProxy = &httputil.ReverseProxy{
	Rewrite: func(pr *httputil.ProxyRequest) {
		pr.Out.URL.Scheme = "http"
		pr.Out.URL.Host = pr.In.Context().Value(passTargetKey{}).(string)
		pr.Out.Host = pr.In.Host
	},
	Transport:     passTransport,
	FlushInterval: -1,
	ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
		passStats.failed.Add(1)
		localReply(w, http.StatusBadGateway, "passthrough to "+r.Host+" failed: "+err.Error()+"\n")
	},
}

type passTargetKey struct{}

// passthrough answers a request routed to the passthrough cluster (ALLOW_ANY: sent
// unchanged to where the caller sent it — the original destination of a captured
// connection, the Host (port 80 by default) of an explicit-proxy request) or to the black
// hole (REGISTRY_ONLY: 502 saying so).
func (l *Listener) passthrough(w http.ResponseWriter, r *http.Request, route *config.Route) {
	if route.Kind == config.ActionBlocked {
		passStats.blocked.Add(1)
		localReply(w, http.StatusBadGateway, "blocked by REGISTRY_ONLY: "+r.Host+
			" is not a Service of the mesh; create a Service or MeshRoute for it, or run the manager with --outbound-traffic-policy=ALLOW_ANY\n")
		return
	}
	target := ""
	if l.unbound {
		if a, ok := originalDst(w, r); ok {
			target = a.String()
		}
	}
	if target == "" {
		host, port := r.Host, strconv.Itoa(int(config.HostPort(r.Host)))
		if h, _, err := net.SplitHostPort(r.Host); err == nil {
			host = h
		}
		target = net.JoinHostPort(host, port)
	}
	if target == l.addr.String() || target == l.cfgAddr {
		localReply(w, http.StatusLoopDetected, "passthrough to "+target+" would reach this sidecar again\n")
		return
	}
	passStats.requests.Add(1)
	ctx := r.Context()
	r = r.WithContext(context.WithValue(ctx, passTargetKey{}, target))
	passProxy.ServeHTTP(w, r)
}

// originalDst is the local address of the request's connection, which for a captured
// connection is its original destination.
func originalDst(w http.ResponseWriter, r *http.Request) (netip.AddrPort, bool) {
	var a net.Addr
	if hw, ok := w.(*h1Writer); ok && hw.conn != nil {
		a = hw.conn.LocalAddr()
	} else if v, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		a = v
	}
	if ta, ok := a.(*net.TCPAddr); ok && ta.Port != 0 {
		return ta.AddrPort(), true
	}
	return netip.AddrPort{}, false
}

// WriteCaptureStats writes the HTTP passthrough counters (admin.StatsWriter).
func (p *Proxy) WriteCaptureStats(w io.Writer) {
	fmt.Fprintf(w, "# HELP weft_passthrough_requests_total HTTP requests to destinations that are no Service, passed through (ALLOW_ANY).\n# TYPE weft_passthrough_requests_total counter\nweft_passthrough_requests_total %d\n", passStats.requests.Load())
	fmt.Fprintf(w, "# HELP weft_passthrough_request_failures_total Passthrough requests answered 502: the destination could not be reached.\n# TYPE weft_passthrough_request_failures_total counter\nweft_passthrough_request_failures_total %d\n", passStats.failed.Load())
	fmt.Fprintf(w, "# HELP weft_blocked_requests_total HTTP requests refused by REGISTRY_ONLY (BlackHoleCluster).\n# TYPE weft_blocked_requests_total counter\nweft_blocked_requests_total %d\n", passStats.blocked.Load())
}
