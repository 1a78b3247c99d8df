package httpproxy

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/evloop"
	"github.com/weftmesh/weft/sidecar/httphead"
	"github.com/weftmesh/weft/sidecar/telemetry"
	"github.com/weftmesh/weft/sidecar/tlsrec"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// The HTTP/1.1 event loop. A listener's connections (outbound and inbound) are served
// from one goroutine per worker thread (sidecar/evloop) rather than one goroutine each: the loop accepts, reads
// whole requests, routes them, writes them to pooled upstream connections, and copies
// the responses back, all with non-blocking socket calls. It takes the common case —
// a request that arrives whole with its Content-Length body (at most loopMaxRequest
// bytes), a route that forwards to clusters of ordinary endpoints, a response framed by
// Content-Length — and uses the same code as the goroutine path for everything that
// decides what is sent: route matching, header edits, load balancing, circuit breakers,
// outlier detection, retries and their back-off, timeouts and stats.
//
// Everything else is handed to the goroutine path with what has been read so far, so its
// behaviour stays in one place: a connection whose next request the loop does not take
// (h2c, chunked or large bodies, Expect, Upgrade, routes config does not find LoopSafe:
// fault injection, mirrors, redirects, direct responses; function clusters that may
// hold, unknown clusters) is
// detached from the loop and served by serveConn from then on; a response the loop
// cannot frame (chunked, read-until-close, 1xx) is finished by a goroutine, which then
// serves the connection.

const (
	loopMaxRequest = 64 << 10 // a request's head and body must fit this for the loop
	loopReadSize   = 4096     // smallest free space a read asks for
	loopMaxOut     = 64 << 10 // downstream bytes queued before the upstream read pauses
)

// sock is one connection in the loop: downstream (a caller) or upstream (to a host).
type sock struct {
	fd        int
	up        bool
	in        []byte // read, not yet used
	out       []byte // to write: out[off:]
	off       int
	readable  bool // edge-triggered: input may be waiting
	writable  bool
	eof       bool
	closed    bool
	serving   bool      // downstream: serveNext is on the stack
	ex        *exchange // the request in flight on this connection
	deadline  int64     // downstream: idle, head or linger deadline (unix nanos)
	remote    string
	dst       net.Addr // downstream: a captured connection's original destination (loopcapture.go)
	closeNext bool     // downstream: close once the queued output is written
	dirty     bool     // output queued for the end of the batch
	inHead    bool     // downstream: a head is under way and deadline is its end
	linger    bool     // downstream: a refusal was sent; drop input a while before closing
	shut      bool     // downstream: lingering, the write side is shut
	lingerFor int      // downstream: bytes lingering may still drop
	reserved  int      // downstream: bytes of in's capacity reserved from headBudget

	// upstream
	host       *upstream.Host
	cluster    *upstream.Cluster // whose max_connections slot the connection holds
	idle       bool              // in the loop's idle pool (counted idle by the cluster)
	connecting bool
	connectBy  int64
	used       uint32
	idleAt     int64
	idleFor    int64
	reused     bool
	reusable   bool
	hungUp     bool // the host closed its side: never pooled again

	// mutual TLS (looptls.go): the record layer, a partial record read, records sealed
	// from out[:sealed] and not yet all written (enc[encOff:]), the verified peer
	tls    *tlsrec.State
	raw    []byte
	enc    []byte
	encOff int
	sealed int
	peerID contract.SPIFFEID
	peer   string // peerID as a principal; "" for plaintext

	exv     exchange         // downstream: storage for ex, reused request after request
	scratch httphead.Scratch // downstream: the parsed request's memory, likewise
}

// exchange is one downstream request and its upstream attempts.
type exchange struct {
	d, u      *sock
	r         *http.Request
	route     *config.Route
	wc        *config.WeightedCluster
	c         *upstream.Cluster
	wire      []byte // the upstream request, as sent on every attempt
	start     time.Time
	retry     retryState // attempts, retries and the route timeout (retrystate.go)
	tryBy     int64      // this attempt's deadline (unix nanos; 0: none)
	wakeAt    int64      // retry back-off ends
	host      *upstream.Host
	hash      uint64
	hasHash   bool
	setCookie string
	stale     bool // a reused connection was found closed and redialled once
	gotHead   bool
	status    int
	remaining int64                // response body bytes still to copy
	close     bool                 // the downstream connection closes after this response
	breaker   *breaker             // inbound: the containerConcurrency slot this request holds
	wait      *loopWait            // waiting for a connection (loopconnlimit.go)
	slowSeen  bool                 // logged as slow (loopslow.go)
	rec       telemetry.HTTPRecord // what telemetry is told as it ends (telemetry.go)
	hb        telemetry.HeaderBuf  // the header values telemetry adds, reused
}

// done gives back what the request held on its listener: its in-flight count and its
// containerConcurrency slot.
func (ex *exchange) done(l *Listener) {
	l.inflight.Add(-1)
	if ex.breaker != nil {
		ex.breaker.release()
		ex.breaker = nil
	}
}

// end accounts for an admitted exchange that is over, however it ended: stats, and every
// slot it held (cluster admission, retry, listener).
func (ex *exchange) end(l *Listener, elapsed time.Duration) {
	ex.c.Stats.Observe(ex.status, elapsed)
	l.recordLoop(ex, elapsed)
	ex.retry.release()
	ex.c.Done()
	ex.done(l)
}

// hloop serves one listener's HTTP/1.1 connections.
type hloop struct {
	l     *Listener
	ev    *evloop.Loop
	lfd   int             // the listening socket; -1: none (a capture chain's loop)
	lrc   syscall.RawConn // nil with lfd -1
	socks []*sock         // by descriptor
	idle  map[*upstream.Host][]*sock
	addrs map[*upstream.Host]unix.Sockaddr
	down  int // downstream connections in the loop
	dirty []*sock
	spare []*sock
	bw    *bufio.Writer
	sw    sockWriter
	w     h1Writer

	draining atomic.Bool
	drained  bool
	done     chan struct{}
	sweepAt  int64 // next look for hosts that left their clusters

	slow    atomic.Pointer[slowSnapshot] // slow exchanges at the last sweep (loopslow.go)
	pending loopGrants                   // connection grants and idle reclaims from other goroutines

	backoff  acceptBackoff
	paused   bool  // accepting paused after a failed accept; the listener is out of the set
	acceptAt int64 // when accepting resumes
	discard  [4096]byte
	tlsIn    []byte // ciphertext read buffer, shared by the loop's TLS connections (looptls.go)
}

// hostSweep is how often a loop drops its idle connections and cached addresses for
// hosts that left their clusters (a pod that is gone usually closes its connections
// itself; a host removed from EDS while its pod lives on does not).
var hostSweep = 5 * time.Second

// sockWriter appends to a socket's output queue (the loop's bufio.Writer writes here).
type sockWriter struct{ s *sock }

func (w *sockWriter) Write(p []byte) (int, error) {
	w.s.out = append(w.s.out, p...)
	return len(p), nil
}

// startLoops serves ln with n event loops (the sidecar's --concurrency), which share
// the listening socket: the kernel wakes one loop per new connection (EPOLLEXCLUSIVE).
// With ln nil (a capture chain's listener) the loops accept nothing: they serve the
// connections ServeCaptured hands them (loopcapture.go).
func (l *Listener) startLoops(ln net.Listener, n int) error {
	var lrc syscall.RawConn
	if ln != nil {
		tl, ok := ln.(*net.TCPListener)
		if !ok {
			return errors.New("not a TCP listener")
		}
		var err error
		if lrc, err = tl.SyscallConn(); err != nil {
			return err
		}
	}
	loops := make([]*hloop, 0, n)
	for range n {
		h, err := newHloop(l, lrc)
		if err != nil {
			for _, h := range loops {
				h.ev.Stop()
			}
			return err
		}
		loops = append(loops, h)
	}
	l.loops = loops
	for _, h := range loops {
		go func() {
			err := h.ev.Run()
			h.closeAll()
			if err != nil {
				l.proxy.opts.Logger.Error("HTTP event loop stopped", "listener", l.Name, "error", err)
			}
		}()
	}
	return nil
}

func newHloop(l *Listener, lrc syscall.RawConn) (*hloop, error) {
	h := &hloop{l: l, lrc: lrc, lfd: -1, idle: map[*upstream.Host][]*sock{}, addrs: map[*upstream.Host]unix.Sockaddr{}, done: make(chan struct{})}
	var err error
	if h.ev, err = evloop.New(h); err != nil {
		return nil, err
	}
	h.bw = bufio.NewWriterSize(&h.sw, 4096)
	h.w.bw = h.bw
	if lrc == nil {
		return h, nil // no listening socket: connections come through adopt
	}
	var addErr error
	if err := lrc.Control(func(fd uintptr) { h.lfd = int(fd); addErr = h.ev.AddListener(int(fd)) }); err != nil {
		addErr = err
	}
	if addErr != nil {
		go func() { _ = h.ev.Run() }() // closes the epoll instance
		h.ev.Stop()
		return nil, addErr
	}
	return h, nil
}

// Event implements evloop.Handler.
func (h *hloop) Event(fd int, events uint32) {
	if fd == h.lfd {
		h.accept()
		return
	}
	if fd >= len(h.socks) || h.socks[fd] == nil {
		return
	}
	s := h.socks[fd]
	if !s.up && s.ex != nil && events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		h.callerLeft(s)
		return
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.readable = true
	}
	// A FIN that came with the last bytes of an answer raises no event of its own: remember
	// it, or the connection goes back to the pool and the next request waits for ever.
	s.hungUp = s.hungUp || (s.up && events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0)
	if events&(unix.EPOLLOUT|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.writable = true
	}
	if s.up {
		h.upstreamReady(s)
	} else {
		h.downstreamReady(s)
	}
}

func (h *hloop) track(s *sock) {
	for s.fd >= len(h.socks) {
		h.socks = append(h.socks, make([]*sock, len(h.socks)+64)...)
	}
	h.socks[s.fd] = s
}

func sockaddrString(sa unix.Sockaddr) string {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)).String()
	}
	return ""
}

func (h *hloop) downstreamReady(d *sock) {
	if d.writable && d.off < len(d.out) && !h.write(d) {
		return
	}
	if ex := d.ex; ex != nil {
		// A response is streaming: the upstream read resumes once the output drains.
		if u := ex.u; u != nil && ex.gotHead && u.readable && len(d.out)-d.off < loopMaxOut {
			h.upstreamReady(u)
		}
		return
	}
	h.serveNext(d)
}

const (
	dispatched = iota // the request is answered or on its way upstream
	needMore          // its body has not all arrived
	gone              // the connection left the loop
)

// serveNext takes the requests buffered on d, one at a time, reading as needed.
func (h *hloop) serveNext(d *sock) {
	if d.serving {
		return // the caller up the stack goes on
	}
	d.serving = true
	defer func() { d.serving = false }()
	for !d.closed && d.ex == nil {
		if d.closeNext {
			if d.off == len(d.out) {
				h.endDown(d)
			}
			return
		}
		if len(d.in) >= len(h2Preface) && bytes.Equal(d.in[:len(h2Preface)], h2Preface) {
			h.handoff(d)
			return
		}
		lim := h.l.lim()
		state := needMore
		end, p := httphead.CheckRequest(d.in, headLimits(lim))
		switch {
		case p != nil:
			h.refuse(d, p)
			continue
		case end > 0:
			state = h.dispatch(d, end)
		case len(d.in) >= loopMaxRequest:
			h.handoff(d) // a head limit above what the loop buffers: the goroutine path reads it
			return
		}
		switch state {
		case dispatched:
			d.inHead = false
			continue
		case gone:
			return
		}
		if d.readable && len(d.in) < loopMaxRequest {
			if !h.reserveHead(d) {
				h.refuse(d, errHeadBudget)
				continue
			}
			h.fill(d)
			continue
		}
		if d.eof {
			d.closeNext = true // a partial request at EOF is dropped, as net/http does
			continue
		}
		switch {
		case d.inHead:
			// The head's deadline stands, however its bytes trickle in.
		case len(d.in) > 0:
			// The first bytes of a head: the whole head must follow within the timeout.
			d.inHead = true
			d.deadline = deadlineNanos(h.ev.Now(), lim.HeadTimeout)
		default:
			d.deadline = deadlineNanos(h.ev.Now(), lim.IdleTimeout)
		}
		if d.deadline != 0 {
			h.ev.Arm(d.deadline)
		}
		return
	}
}

// dispatch starts the request whose head is d.in[:end].
func (h *hloop) dispatch(d *sock, end int) int {
	hd, ok := httphead.ParseRequestInto(d.in[:end], &d.scratch)
	if !ok {
		h.handoff(d)
		return gone
	}
	cl := max(hd.ContentLength, 0)
	if int64(end)+cl > loopMaxRequest {
		h.handoff(d)
		return gone
	}
	if int64(len(d.in)) < int64(end)+cl {
		return needMore
	}
	l := h.l
	r := hd.RequestIn(&d.scratch, nil)
	r.RemoteAddr = d.remote
	rt := l.routesFor(r.Host)
	vh := rt.VirtualHostFor(r.Host)
	if vh == nil {
		h.handoff(d)
		return gone
	}
	route := vh.RouteFor(r)
	// The decoder allows a route on the loop only if the loop implements every feature it
	// uses (config.Route.LoopSafe).
	if route == nil || !route.LoopSafe {
		h.handoff(d)
		return gone
	}
	wc := pickWeighted(route)
	c := l.proxy.opts.Upstreams.Get(wc.Name)
	if c == nil {
		h.handoff(d)
		return gone
	}
	cc := c.Config()
	// HTTP/2 upstreams are the goroutine path's (upstream/h2.go); mutual TLS to meshed
	// endpoints is the loop's (looptls.go).
	if cc.Unresolved != "" || cc.Function != nil || cc.Protocol == config.UpstreamHTTP2 {
		h.handoff(d)
		return gone
	}
	var br *breaker
	if l.inbound {
		// Until the app has answered once, a refused connection is waited out (waitForApp);
		// a request that must queue for containerConcurrency waits on the goroutine path.
		if !l.appSeen.Load() {
			h.handoff(d)
			return gone
		}
		if br = l.proxy.breaker.Load(); br != nil && !br.tryAcquire() {
			h.handoff(d)
			return gone
		}
	}
	l.inflight.Add(1)
	l.requests.Add(1)
	ex := &d.exv
	// The fast parser takes HTTP/1.1 only, where only Connection: close ends a connection.
	*ex = exchange{d: d, r: r, route: route, wc: wc, c: c, wire: ex.wire[:0], start: h.ev.Now(),
		close: r.Close || h.draining.Load(), breaker: br}
	if l.proxy.opts.Telemetry != nil {
		l.beginRecord(&ex.rec, r, ex.start, &ex.hb) // telemetry.go
		ex.rec.Cluster = wc.Name
	} else if l.meshInbound() {
		delete(r.Header, telemetry.PeerHeader)
	}
	if body := l.authorizeAs(r, d.peer); body != "" { // MeshPolicy (authz.go), on the mutual TLS peer
		ex.status = http.StatusForbidden
		l.recordLoop(ex, 0)
		localReply(h.writer(ex), http.StatusForbidden, body)
		h.endReply(ex)
		consume(d, end+int(cl))
		ex.done(l)
		h.afterResponse(d, ex.close)
		return dispatched
	}
	if _, ok := c.Admit(); !ok {
		c.Stats.Observe(http.StatusServiceUnavailable, 0)
		ex.status, ex.rec.Flags = http.StatusServiceUnavailable, "UO"
		l.recordLoop(ex, 0)
		overloadedReply(h.writer(ex), wc.Name)
		h.endReply(ex)
		consume(d, end+int(cl))
		ex.done(l)
		h.afterResponse(d, ex.close)
		return dispatched
	}
	d.ex = ex
	d.deadline = 0
	ex.retry.init(route, true, c, ex.start) // the whole body is here: it can be sent again
	var body []byte
	if cl > 0 {
		body = d.in[end : end+int(cl)]
	}
	out := outboundRequest(r, route, wc, body)
	l.markOutbound(&ex.rec, out.Header, wc.Name)
	ex.hash, ex.hasHash, ex.setCookie = requestHash(r, route, cc, l.proxy.opts.PodIP)
	ex.wire = upstream.AppendRequest(ex.wire, &out)
	consume(d, end+int(cl))
	h.startAttempt(ex)
	return dispatched
}

// writer readies the loop's response writer for ex: its output goes to ex.d's queue.
func (h *hloop) writer(ex *exchange) *h1Writer {
	h.sw.s = ex.d
	h.bw.Reset(&h.sw)
	h.w.reset(ex.r, ex.close || h.draining.Load())
	return &h.w
}

// endHead queues what the writer holds and notes whether the connection closes after it.
func (h *hloop) endHead(ex *exchange) {
	ex.close = h.w.close
	_ = h.bw.Flush()
	h.w.req, h.sw.s = nil, nil
}

// endReply queues a local answer written with h.writer(ex).
func (h *hloop) endReply(ex *exchange) {
	h.w.finish()
	h.endHead(ex)
}

// afterResponse flushes d and moves on to its next request.
func (h *hloop) afterResponse(d *sock, closeAfter bool) {
	if closeAfter || h.draining.Load() {
		d.closeNext = true
	}
	if !h.flush(d) {
		return
	}
	h.serveNext(d)
}
