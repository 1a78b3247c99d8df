package httpproxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/connio"
	"github.com/weftmesh/weft/sidecar/evloop"
	"github.com/weftmesh/weft/sidecar/httphead"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// The HTTP/1.1 event loop. An outbound listener's connections are served from one
// goroutine (sidecar/evloop) rather than one goroutine each: the loop accepts, reads
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
// (h2c, chunked or large bodies, Expect, Upgrade, routes with fault injection, mirrors,
// redirects or direct responses, function clusters that may hold, unknown clusters) is
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
	deadline  int64     // downstream: idle or header deadline (unix nanos)
	remote    string
	closeNext bool // downstream: close once the queued output is written
	dirty     bool // output queued for the end of the batch

	// upstream
	host       *upstream.Host
	connecting bool
	connectBy  int64
	used       uint32
	idleAt     int64
	idleFor    int64
	reused     bool
	reusable   bool

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
	deadline  int64 // route timeout (unix nanos; 0: none)
	tryBy     int64 // this attempt's deadline
	wakeAt    int64 // retry back-off ends
	attempt   int
	attempts  int
	rp        *config.RetryPolicy
	host      *upstream.Host
	triedBuf  [4]*upstream.Host
	tried     []*upstream.Host
	hash      uint64
	hasHash   bool
	setCookie string
	stale     bool // a reused connection was found closed and redialled once
	gotHead   bool
	status    int
	remaining int64    // response body bytes still to copy
	close     bool     // the downstream connection closes after this response
	breaker   *breaker // inbound: the containerConcurrency slot this request holds
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

// hloop serves one listener's HTTP/1.1 connections.
type hloop struct {
	l     *Listener
	ev    *evloop.Loop
	lfd   int
	lrc   syscall.RawConn
	socks []*sock // by descriptor
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
func (l *Listener) startLoops(ln net.Listener, n int) error {
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		return errors.New("not a TCP listener")
	}
	lrc, err := tl.SyscallConn()
	if err != nil {
		return err
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
	h := &hloop{l: l, lrc: lrc, idle: map[*upstream.Host][]*sock{}, addrs: map[*upstream.Host]unix.Sockaddr{}, done: make(chan struct{})}
	var err error
	if h.ev, err = evloop.New(h); err != nil {
		return nil, err
	}
	h.bw = bufio.NewWriterSize(&h.sw, 4096)
	h.w.bw = h.bw
	var addErr error
	if err := lrc.Control(func(fd uintptr) { h.lfd = int(fd); addErr = h.ev.AddListener(int(fd)) }); err != nil {
		addErr = err
	}
	if addErr != nil {
		go h.ev.Run() // closes the epoll instance
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
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		s.readable = true
	}
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

func (h *hloop) accept() {
	if h.draining.Load() {
		return
	}
	_ = h.lrc.Control(func(lfd uintptr) {
		for range 64 {
			fd, sa, err := unix.Accept4(int(lfd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			if err != nil {
				return // EAGAIN, or a transient error (EMFILE): level-triggered, so it comes back
			}
			_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
			d := &sock{fd: fd, remote: sockaddrString(sa), writable: true}
			if err := h.ev.Add(fd); err != nil {
				unix.Close(fd)
				continue
			}
			h.track(d)
			h.down++
			h.l.connections.Add(1)
			d.deadline = h.ev.Now().Add(readHeaderTimeout).UnixNano()
			h.ev.Arm(d.deadline)
		}
	})
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

// fill reads once into s.in, making room first; a short read means the socket is
// drained (edge-triggered: the next arrival raises a new event).
func (h *hloop) fill(s *sock) bool {
	if cap(s.in)-len(s.in) < loopReadSize {
		grown := make([]byte, len(s.in), max(2*cap(s.in), len(s.in)+loopReadSize))
		copy(grown, s.in)
		s.in = grown
	}
	space := s.in[len(s.in):cap(s.in)]
	n, e := connio.ReadFD(s.fd, space)
	switch {
	case e == unix.EAGAIN:
		s.readable = false
		return false
	case e != 0 || n == 0:
		s.readable, s.eof = false, true
		return false
	}
	if n < len(space) {
		s.readable = false
	}
	s.in = s.in[:len(s.in)+n]
	return true
}

// consume drops the first n bytes of s.in.
func consume(s *sock, n int) {
	s.in = s.in[:copy(s.in, s.in[n:])]
	if len(s.in) == 0 && cap(s.in) > keepBuffer {
		s.in = nil
	}
}

// keepBuffer is the largest buffer a connection keeps between messages.
const keepBuffer = 16 << 10

// flush marks s's queued output for writing at the end of the batch (Flush).
func (h *hloop) flush(s *sock) bool {
	if !s.dirty && !s.closed {
		s.dirty = true
		h.dirty = append(h.dirty, s)
	}
	return true
}

// Flush implements evloop.Handler: it writes the output queued during the batch. A
// write that drains a downstream connection may resume the upstream read it paused,
// which queues more; that is written in the same call.
func (h *hloop) Flush() {
	for len(h.dirty) > 0 {
		batch := h.dirty
		h.dirty = h.spare[:0]
		for i, s := range batch {
			batch[i] = nil
			s.dirty = false
			if s.closed || !s.writable && !s.connecting && s.off < len(s.out) {
				continue // EPOLLOUT brings it back
			}
			if s.connecting || !h.write(s) || s.up {
				continue
			}
			if ex := s.ex; ex != nil && ex.gotHead && ex.u != nil && ex.u.readable && len(s.out)-s.off < loopMaxOut {
				h.upstreamReady(ex.u)
			}
		}
		h.spare = batch[:0]
	}
}

// write writes s's queued output now; false if the connection failed (it is then
// dealt with).
func (h *hloop) write(s *sock) bool {
	if s.off == len(s.out) {
		if s.closeNext && !s.up {
			h.closeDown(s)
			return false
		}
		return true
	}
	rest, e := connio.WriteFD(s.fd, s.out[s.off:])
	switch e {
	case 0:
		s.out, s.off = s.out[:0], 0
		if cap(s.out) > keepBuffer {
			s.out = nil // a large response passed: do not keep its buffer per connection
		}
		if s.closeNext {
			h.closeDown(s)
			return false
		}
		return true
	case unix.EAGAIN:
		s.off = len(s.out) - len(rest)
		s.writable = false
		return true
	}
	if s.up {
		s.eof = true
		h.upstreamEOF(s, s.ex)
	} else {
		h.abort(s)
	}
	return false
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
				h.closeDown(d)
			}
			return
		}
		if len(d.in) >= len(h2Preface) && bytes.Equal(d.in[:len(h2Preface)], h2Preface) {
			h.handoff(d)
			return
		}
		state := needMore
		if end := httphead.End(d.in); end > 0 {
			state = h.dispatch(d, end)
		} else if len(d.in) >= loopMaxRequest {
			h.handoff(d) // net/http answers an oversized head
			return
		}
		switch state {
		case dispatched:
			continue
		case gone:
			return
		}
		if d.readable && len(d.in) < loopMaxRequest {
			h.fill(d)
			continue
		}
		if d.eof {
			d.closeNext = true // a partial request at EOF is dropped, as net/http does
			continue
		}
		timeout := idleTimeout
		if len(d.in) > 0 {
			timeout = readHeaderTimeout
		}
		d.deadline = h.ev.Now().Add(timeout).UnixNano()
		h.ev.Arm(d.deadline)
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
	rt := l.routes.Load()
	vh := rt.VirtualHostFor(r.Host)
	if vh == nil {
		h.handoff(d)
		return gone
	}
	route := vh.RouteFor(r)
	if route == nil || route.Kind != config.ActionForward || route.Fault != nil || len(route.Mirrors) > 0 {
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
	if cc.Unresolved != "" || cc.Function != nil {
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
	*ex = exchange{d: d, r: r, route: route, wc: wc, c: c, wire: ex.wire[:0], start: h.ev.Now(), attempts: 1,
		close: r.Close || h.draining.Load(), breaker: br}
	if _, ok := c.Admit(); !ok {
		c.Stats.Observe(http.StatusServiceUnavailable, 0)
		h.reply(ex, http.StatusServiceUnavailable, "upstream cluster "+wc.Name+" is overloaded (circuit breaker open); retry later\n", true)
		consume(d, end+int(cl))
		ex.done(l)
		h.afterResponse(d, ex.close)
		return dispatched
	}
	d.ex = ex
	d.deadline = 0
	if route.Timeout > 0 {
		ex.deadline = ex.start.Add(route.Timeout).UnixNano()
	}
	var body []byte
	if cl > 0 {
		body = d.in[end : end+int(cl)]
	}
	out := outboundRequest(r, route, wc, body)
	ex.hash, ex.hasHash, ex.setCookie = requestHash(r, route, cc)
	ex.wire = upstream.AppendRequest(ex.wire, &out)
	consume(d, end+int(cl))
	if route.Retry != nil {
		ex.rp = route.Retry
		ex.attempts += ex.rp.NumRetries
	}
	ex.tried = ex.triedBuf[:0]
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

// reply answers ex with a local response.
func (h *hloop) reply(ex *exchange, status int, body string, overloaded bool) {
	w := h.writer(ex)
	if overloaded {
		w.Header().Set("X-Weft-Overloaded", "true")
	}
	localReply(w, status, body)
	w.finish()
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

func (h *hloop) startAttempt(ex *exchange) {
	now := h.ev.Now()
	host := ex.c.Pick(ex.hash, ex.hasHash, ex.tried)
	if host == nil {
		h.finishError(ex, errNoHost)
		return
	}
	ex.host = host
	host.Start()
	ex.tryBy = ex.deadline
	if ex.rp != nil && ex.rp.PerTryTimeout > 0 {
		if t := now.Add(ex.rp.PerTryTimeout).UnixNano(); ex.tryBy == 0 || t < ex.tryBy {
			ex.tryBy = t
		}
	}
	if ex.tryBy != 0 {
		h.ev.Arm(ex.tryBy)
	}
	h.send(ex, now, false)
}

// send writes ex's request to its host over an idle pooled connection or, if there is
// none or fresh is set, a new one.
func (h *hloop) send(ex *exchange, now time.Time, fresh bool) {
	cc := ex.c.Config()
	var u *sock
	if !fresh {
		u = h.getIdle(ex.host, now.UnixNano())
	}
	if u == nil {
		var err error
		if u, err = h.dial(ex.host, cc, now); err != nil {
			h.attemptFailed(ex, err)
			return
		}
	}
	u.ex, ex.u = ex, u
	u.out = append(u.out[:0], ex.wire...)
	u.off = 0
	if !u.connecting && !h.flush(u) {
		return
	}
	if u.readable {
		h.upstreamReady(u)
	}
}

func (h *hloop) getIdle(host *upstream.Host, now int64) *sock {
	idle := h.idle[host]
	for n := len(idle); n > 0; n = len(idle) {
		u := idle[n-1]
		idle[n-1] = nil
		idle = idle[:n-1]
		if u.idleFor > 0 && now-u.idleAt > u.idleFor {
			h.closeUp(u)
			continue
		}
		h.idle[host] = idle
		u.reused = true
		return u
	}
	h.idle[host] = idle
	return nil
}

func (h *hloop) putIdle(u *sock, cc *config.Cluster, now int64) {
	idle := h.idle[u.host]
	if len(idle) >= int(min(cc.Limits.MaxConnections, 1024)) || u.closed {
		h.closeUp(u)
		return
	}
	u.idleAt, u.idleFor = now, int64(cc.IdleTimeout)
	h.idle[u.host] = append(idle, u)
	if u.idleFor > 0 {
		h.ev.Arm(now + u.idleFor)
	}
}

// dropIdle closes an idle pooled connection the server closed (or wrote to unasked).
func (h *hloop) dropIdle(u *sock) {
	idle := h.idle[u.host]
	for i, x := range idle {
		if x == u {
			idle = append(idle[:i], idle[i+1:]...)
			break
		}
	}
	h.idle[u.host] = idle
	h.closeUp(u)
}

func (h *hloop) sockaddr(host *upstream.Host) (unix.Sockaddr, error) {
	if sa, ok := h.addrs[host]; ok {
		return sa, nil
	}
	ap, err := netip.ParseAddrPort(host.Address)
	if err != nil {
		// EDS endpoints are addresses; a name (static configs) is resolved once, here.
		ta, rerr := net.ResolveTCPAddr("tcp", host.Address)
		if rerr != nil {
			return nil, &net.OpError{Op: "dial", Net: "tcp", Err: rerr}
		}
		ap = ta.AddrPort()
	}
	var sa unix.Sockaddr
	if a := ap.Addr().Unmap(); a.Is4() {
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}
	} else {
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16()}
	}
	h.addrs[host] = sa
	if h.sweepAt == 0 {
		h.sweepAt = h.ev.Now().Add(hostSweep).UnixNano()
		h.ev.Arm(h.sweepAt)
	}
	return sa, nil
}

func (h *hloop) dial(host *upstream.Host, cc *config.Cluster, now time.Time) (*sock, error) {
	sa, err := h.sockaddr(host)
	if err != nil {
		return nil, err
	}
	family := unix.AF_INET
	if _, ok := sa.(*unix.SockaddrInet6); ok {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, dialError(host, err)
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	// TCP keep-alive as Go's dialer sets it: probes after 30 s idle, every 30 s.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 30)
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 30)
	err = unix.Connect(fd, sa)
	if err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return nil, dialError(host, err)
	}
	if aerr := h.ev.Add(fd); aerr != nil {
		unix.Close(fd)
		return nil, dialError(host, aerr)
	}
	u := &sock{fd: fd, up: true, host: host, connecting: err != nil, in: make([]byte, 0, loopReadSize)}
	if u.connecting {
		u.connectBy = now.Add(cc.ConnectTimeout).UnixNano()
		h.ev.Arm(u.connectBy)
	} else {
		u.writable = true
	}
	h.track(u)
	return u, nil
}

func dialError(host *upstream.Host, err error) error {
	if errno, ok := err.(syscall.Errno); ok {
		err = os.NewSyscallError("connect", errno)
	}
	return &net.OpError{Op: "dial", Net: "tcp", Addr: hostAddr(host.Address), Err: err}
}

type hostAddr string

func (a hostAddr) Network() string { return "tcp" }
func (a hostAddr) String() string  { return string(a) }

var (
	errUpstreamReset = errors.New("upstream connection closed before the response was complete")
	errTryTimeout    = &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	errConnTimeout   = &net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded}
)

func (h *hloop) upstreamReady(u *sock) {
	ex := u.ex
	if u.connecting {
		if !u.writable {
			return
		}
		if errno, err := unix.GetsockoptInt(u.fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil || errno != 0 {
			if err == nil {
				err = syscall.Errno(errno)
			}
			h.attemptFailed(ex, dialError(u.host, err))
			return
		}
		// The event may be stale: one for an earlier socket with the same descriptor
		// number, closed earlier in this batch. Only a connected socket has a peer.
		if _, err := unix.Getpeername(u.fd); err != nil {
			u.writable = false
			return
		}
		u.connecting = false
	}
	if ex == nil {
		if u.readable {
			h.dropIdle(u) // a pooled connection the server closed
		}
		return
	}
	if u.off < len(u.out) {
		if !u.writable || !h.write(u) {
			return
		}
	}
	for u.readable && u.ex == ex && !u.closed {
		if ex.gotHead && len(ex.d.out)-ex.d.off >= loopMaxOut {
			return // the caller reads slower than the host writes: wait for the output to drain
		}
		if !h.fill(u) {
			break
		}
		if !h.response(u, ex) {
			return
		}
	}
	if u.eof && u.ex == ex && !u.closed {
		h.upstreamEOF(u, ex)
	}
}

// response handles what has arrived of ex's response on u; false once u is no longer
// ex's (the exchange finished, failed or left the loop).
func (h *hloop) response(u *sock, ex *exchange) bool {
	d := ex.d
	if !ex.gotHead {
		end := httphead.End(u.in)
		if end < 0 {
			if len(u.in) >= loopMaxRequest {
				h.slowResponse(ex) // net/http reads a head this large, or refuses it
				return false
			}
			return true
		}
		hd, plain, ok := httphead.ScanResponse(u.in[:end])
		if !ok {
			h.slowResponse(ex) // chunked, read until close, 1xx, or unusual
			return false
		}
		bodyLen := max(hd.ContentLength, 0)
		if ex.r.Method == http.MethodHead {
			bodyLen = 0
		}
		u.used++
		cc := ex.c.Config()
		u.reusable = !hd.Close && (cc.MaxRequestsPerConn == 0 || u.used < cc.MaxRequestsPerConn)
		h.attemptDone(ex, statusOutcome(hd.Status))
		if ex.rp != nil && ex.attempt+1 < ex.attempts && !h.expired(ex.deadline) && retryOnStatus(ex.rp, hd.Status) &&
			ex.c.AdmitRetry() {
			// Discard this answer; the connection is kept if the whole body is here.
			if int64(len(u.in)-end) == bodyLen {
				u.in = u.in[:0]
				h.release(ex, true)
			} else {
				h.release(ex, false)
			}
			h.retry(ex)
			return false
		}
		ex.gotHead, ex.status, ex.remaining = true, hd.Status, bodyLen
		if plain && ex.setCookie == "" && !editsResponse(ex.route, ex.wc) {
			// Nothing to change but hop-by-hop lines: copy the head as it came.
			ex.close = ex.close || h.draining.Load()
			d.out = appendResponseHead(d.out, u.in[:end], hd.Status, ex.close)
		} else {
			full, _ := httphead.ParseResponse(u.in[:end])
			w := h.writer(ex)
			responseHeader(w.Header(), full.Header, ex.route, ex.wc, ex.setCookie)
			w.WriteHeader(hd.Status)
			h.endHead(ex)
		}
		consume(u, end)
	}
	if n := min(ex.remaining, int64(len(u.in))); n > 0 {
		d.out = append(d.out, u.in[:n]...)
		consume(u, int(n))
		ex.remaining -= n
	}
	if ex.remaining == 0 {
		if len(u.in) > 0 {
			u.reusable = false // bytes past the response: the connection is out of step
		}
		h.finish(ex)
		return false
	}
	return h.flush(d)
}

// editsResponse reports whether the route or the picked destination edits response
// headers.
func editsResponse(route *config.Route, wc *config.WeightedCluster) bool {
	return len(route.ResponseHeadersToAdd)+len(route.ResponseHeadersToRemove)+
		len(wc.ResponseHeadersToAdd)+len(wc.ResponseHeadersToRemove) > 0
}

// appendResponseHead appends the downstream form of an upstream response head that
// httphead.ScanResponse found plain: the status line in the proxy's own words, then
// every field line as received except Connection, Proxy-Connection and Keep-Alive (the
// scanner refused heads with other hop-by-hop fields), and Connection: close if the
// downstream connection ends after this response. It is what responseHeader and
// h1Writer produce from the parsed head, field order and spelling aside
// (FuzzResponseHeadForms holds it to that).
func appendResponseHead(dst, head []byte, status int, close bool) []byte {
	dst = append(dst, "HTTP/1.1 "...)
	dst = strconv.AppendInt(dst, int64(status), 10)
	dst = append(dst, ' ')
	dst = append(dst, http.StatusText(status)...)
	dst = append(dst, "\r\n"...)
	fields := head[bytes.Index(head, crlf)+2 : len(head)-2]
	for len(fields) > 0 {
		n := bytes.Index(fields, crlf) + 2
		line := fields[:n]
		fields = fields[n:]
		name := line[:bytes.IndexByte(line, ':')]
		if hopByHopField(name) {
			continue
		}
		dst = append(dst, line...)
	}
	if close {
		dst = append(dst, "Connection: close\r\n"...)
	}
	return append(dst, "\r\n"...)
}

var crlf = []byte("\r\n")

func hopByHopField(name []byte) bool {
	switch len(name) {
	case len("Connection"):
		return asciiEqualFold(name, "Connection") || asciiEqualFold(name, "Keep-Alive")
	case len("Proxy-Connection"):
		return asciiEqualFold(name, "Proxy-Connection")
	}
	return false
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		if b[i]|0x20 != s[i]|0x20 {
			return false
		}
	}
	return true
}

func statusOutcome(code int) upstream.Outcome {
	switch {
	case code == 502 || code == 503 || code == 504:
		return upstream.GatewayError
	case code >= 500:
		return upstream.ServerError
	}
	return upstream.Success
}

// expired reports whether deadline (unix nanos; 0: none) has passed.
func (h *hloop) expired(deadline int64) bool {
	return deadline != 0 && h.ev.Now().UnixNano() >= deadline
}

// attemptDone reports the attempt's outcome for its host (outlier detection, least
// request) and releases a retry slot.
func (h *hloop) attemptDone(ex *exchange, o upstream.Outcome) {
	if ex.host == nil {
		return
	}
	ex.c.Report(ex.host, o)
	ex.tried = append(ex.tried, ex.host)
	ex.host = nil
	if ex.attempt > 0 {
		ex.c.RetryDone()
	}
}

// release detaches ex's upstream connection, pooling it if it can carry another request.
func (h *hloop) release(ex *exchange, reuse bool) {
	u := ex.u
	if u == nil {
		return
	}
	ex.u, u.ex = nil, nil
	u.out, u.off = u.out[:0], 0
	if reuse && u.reusable && !u.eof && !u.closed {
		h.putIdle(u, ex.c.Config(), h.ev.Now().UnixNano())
		return
	}
	h.closeUp(u)
}

func (h *hloop) upstreamEOF(u *sock, ex *exchange) {
	if ex.gotHead {
		h.abort(ex.d) // the body was cut short: the caller cannot be told otherwise
		return
	}
	if len(u.in) == 0 && u.reused && !ex.stale {
		// A pooled connection the server had closed: send once more on a new one, as
		// net/http's transport does, without counting an attempt. Not on another pooled
		// one: a server that closed one has likely closed them all (it restarted).
		ex.stale = true
		h.release(ex, false)
		h.send(ex, h.ev.Now(), true)
		return
	}
	h.attemptFailed(ex, errUpstreamReset)
}

// attemptFailed ends an attempt that got no response and retries or answers.
func (h *hloop) attemptFailed(ex *exchange, err error) {
	if ex == nil {
		return
	}
	h.release(ex, false)
	if ex.gotHead {
		h.abort(ex.d)
		return
	}
	o := upstream.GatewayError
	if h.expired(ex.deadline) {
		o = upstream.Success // the route timed out: not the host's fault
	}
	h.attemptDone(ex, o)
	if ex.rp != nil && ex.attempt+1 < ex.attempts && !h.expired(ex.deadline) && retryOnError(ex.rp, err) && ex.c.AdmitRetry() {
		h.retry(ex)
		return
	}
	h.finishError(ex, err)
}

// retry starts the next attempt, admitted by the max_retries circuit breaker, after
// Envoy's jittered back-off, or answers 504 if the back-off would outlast the route
// timeout.
func (h *hloop) retry(ex *exchange) {
	ex.attempt++
	backoff := retryBackoff(ex.rp, ex.attempt)
	now := h.ev.Now()
	if ex.deadline != 0 && now.Add(backoff).UnixNano() > ex.deadline {
		ex.c.RetryDone()
		h.finishError(ex, errRouteTimeout)
		return
	}
	if backoff <= 0 {
		h.startAttempt(ex)
		return
	}
	ex.wakeAt = now.Add(backoff).UnixNano()
	h.ev.Arm(ex.wakeAt)
}

// finishError answers ex with the error Envoy would give for err.
func (h *hloop) finishError(ex *exchange, err error) {
	res := attemptResult{err: err}
	var deadline time.Time
	if ex.deadline != 0 {
		deadline = time.Unix(0, ex.deadline)
	}
	status, msg := res.errorReply(deadline)
	ex.status = status
	h.reply(ex, status, msg, false)
	h.finish(ex)
}

// finish ends ex: stats, circuit breaker, the upstream connection back to the pool, and
// the downstream connection on to its next request.
func (h *hloop) finish(ex *exchange) {
	d := ex.d
	ex.c.Stats.Observe(ex.status, h.ev.Now().Sub(ex.start))
	ex.c.Done()
	ex.done(h.l)
	h.release(ex, true)
	d.ex = nil
	ex.r, ex.route, ex.wc, ex.c = nil, nil, nil, nil
	h.afterResponse(d, ex.close)
}

// abort ends d's exchange (if any) without an answer and closes d.
func (h *hloop) abort(d *sock) {
	if ex := d.ex; ex != nil {
		d.ex = nil
		if ex.host != nil {
			ex.c.Report(ex.host, upstream.Success) // the caller left: not the host's fault
			if ex.attempt > 0 {
				ex.c.RetryDone()
			}
			ex.host = nil
		} else if ex.wakeAt != 0 {
			ex.c.RetryDone() // admitted, waiting out its back-off
		}
		h.release(ex, false)
		if ex.status == 0 {
			ex.status = http.StatusServiceUnavailable
		}
		ex.c.Stats.Observe(ex.status, h.ev.Now().Sub(ex.start))
		ex.c.Done()
		ex.done(h.l)
	}
	h.closeDown(d)
}

func (h *hloop) closeDown(d *sock) {
	if d.closed {
		return
	}
	if d.ex != nil {
		h.abort(d)
		return
	}
	d.closed = true
	h.socks[d.fd] = nil
	unix.Close(d.fd)
	h.down--
	h.checkDrained()
}

func (h *hloop) closeUp(u *sock) {
	if u.closed {
		return
	}
	u.closed = true
	h.socks[u.fd] = nil
	unix.Close(u.fd)
}

// detach takes s out of the loop as a net.Conn.
func (h *hloop) detach(s *sock) net.Conn {
	h.ev.Remove(s.fd)
	h.socks[s.fd] = nil
	s.closed = true
	if !s.up {
		h.down--
	}
	f := os.NewFile(uintptr(s.fd), "")
	nc, err := net.FileConn(f) // a duplicate descriptor in Go's poller
	f.Close()
	if err != nil {
		return nil
	}
	return nc
}

// handoff moves d, with what it has buffered, to the goroutine path.
func (h *hloop) handoff(d *sock) {
	h.l.handoffs.Add(1)
	in := d.in
	out := d.out[d.off:]
	nc := h.detach(d)
	h.checkDrained()
	if nc == nil {
		return
	}
	go h.l.serveConn(nc, in, out)
}

// slowResponse moves ex — its downstream and upstream connections and what each has
// buffered — to a goroutine that reads the response with net/http, sends it, and then
// serves the downstream connection on the goroutine path.
func (h *hloop) slowResponse(ex *exchange) {
	h.l.handoffs.Add(1)
	d, u := ex.d, ex.u
	d.ex, u.ex, ex.u = nil, nil, nil
	x := *ex // the goroutine's own copy: d.exv is reused by the loop
	din, dout, uin := d.in, d.out[d.off:], u.in
	dnc, unc := h.detach(d), h.detach(u)
	h.checkDrained()
	go h.l.finishSlow(&x, dnc, din, dout, unc, uin)
}

// Tick implements evloop.Handler: deadlines.
func (h *hloop) Tick(now time.Time) {
	t := now.UnixNano()
	var next int64
	later := func(d int64) {
		if d != 0 && (next == 0 || d < next) {
			next = d
		}
	}
	for _, s := range h.socks {
		switch {
		case s == nil || s.closed:
		case s.up && s.ex == nil:
			if s.idleFor > 0 {
				if t-s.idleAt > s.idleFor {
					h.dropIdle(s)
				} else {
					later(s.idleAt + s.idleFor)
				}
			}
		case s.up:
			ex := s.ex
			switch {
			case s.connecting && t >= s.connectBy:
				h.attemptFailed(ex, errConnTimeout)
			case ex.tryBy != 0 && t >= ex.tryBy:
				h.attemptFailed(ex, errTryTimeout)
			default:
				if s.connecting {
					later(s.connectBy)
				}
				later(ex.tryBy)
			}
		case s.ex != nil:
			if ex := s.ex; ex.wakeAt != 0 {
				if t >= ex.wakeAt {
					ex.wakeAt = 0
					h.startAttempt(ex)
				} else {
					later(ex.wakeAt)
				}
			}
		case s.deadline != 0:
			if t >= s.deadline {
				h.closeDown(s)
			} else {
				later(s.deadline)
			}
		}
	}
	if len(h.addrs) > 0 {
		if t >= h.sweepAt {
			h.sweepHosts()
			h.sweepAt = t + int64(hostSweep)
		}
		later(h.sweepAt)
	}
	if next != 0 {
		h.ev.Arm(next)
	}
}

// sweepHosts closes idle connections to, and forgets the addresses of, hosts that left
// their clusters.
func (h *hloop) sweepHosts() {
	for host, idle := range h.idle {
		if host.Removed() || len(idle) == 0 {
			for _, u := range idle {
				h.closeUp(u)
			}
			delete(h.idle, host)
		}
	}
	for host := range h.addrs {
		if host.Removed() {
			delete(h.addrs, host)
		}
	}
}

// Wake implements evloop.Handler: shutdown has begun.
func (h *hloop) Wake() {
	if !h.draining.Load() || h.drained {
		return
	}
	h.drained = true
	_ = h.lrc.Control(func(fd uintptr) { h.ev.Remove(int(fd)) })
	for _, s := range h.socks {
		if s == nil || s.up || s.closed {
			continue
		}
		if s.ex == nil && s.off == len(s.out) {
			h.closeDown(s)
		} else {
			s.closeNext = true // after the response in flight (sent with Connection: close)
		}
	}
	h.checkDrained()
}

func (h *hloop) checkDrained() {
	if h.drained && h.down == 0 {
		select {
		case <-h.done:
		default:
			close(h.done)
			h.ev.Stop()
		}
	}
}

// drain stops accepting and lets each connection finish its request; done closes when
// none is left.
func (h *hloop) drain() {
	h.draining.Store(true)
	h.ev.Wake()
}

// closeAll closes what is left once the loop has stopped.
func (h *hloop) closeAll() {
	for _, s := range h.socks {
		if s != nil && !s.closed {
			if s.up {
				h.closeUp(s)
			} else {
				h.abort(s)
			}
		}
	}
	select {
	case <-h.done:
	default:
		close(h.done)
	}
}

// finishSlow completes, on its own goroutine, an exchange whose response the loop
// cannot frame, then serves the downstream connection on the goroutine path.
func (l *Listener) finishSlow(ex *exchange, dnc net.Conn, din, dout []byte, unc net.Conn, uin []byte) {
	c := ex.c
	status := http.StatusServiceUnavailable
	defer func() {
		c.Stats.Observe(status, time.Since(ex.start))
		c.Done()
		ex.done(l)
	}()
	if dnc == nil {
		if unc != nil {
			unc.Close()
		}
		return
	}
	conn := connio.NewConn(dnc)
	bw := bufio.NewWriter(conn)
	w := &h1Writer{conn: conn, bw: bw}
	w.reset(ex.r, ex.close || l.draining.Load())
	var resp *http.Response
	err := errUpstreamReset
	if unc != nil {
		defer unc.Close()
		if ex.tryBy != 0 {
			_ = unc.SetDeadline(time.Unix(0, ex.tryBy))
		}
		br := bufio.NewReader(io.MultiReader(bytes.NewReader(uin), unc))
		for {
			if resp, err = http.ReadResponse(br, ex.r); err != nil || resp.StatusCode >= 200 {
				break
			}
		}
	}
	if err != nil {
		if ex.host != nil {
			c.Report(ex.host, upstream.GatewayError)
		}
		_, _ = bw.Write(dout)
		msg := "upstream connect error or disconnect/reset before headers. reset reason: connection termination\n"
		if isTimeout(err) {
			status, msg = http.StatusGatewayTimeout, "upstream request timeout\n"
		}
		localReply(w, status, msg)
		w.finish()
		_ = bw.Flush()
		dnc.Close()
		return
	}
	if ex.host != nil {
		c.Report(ex.host, statusOutcome(resp.StatusCode))
	}
	if ex.attempt > 0 {
		c.RetryDone()
	}
	status = resp.StatusCode
	_, _ = bw.Write(dout)
	responseHeader(w.Header(), resp.Header, ex.route, ex.wc, ex.setCookie)
	w.WriteHeader(resp.StatusCode)
	copyBody(w, resp)
	w.finish()
	resp.Body.Close()
	if err := bw.Flush(); err != nil || w.close {
		dnc.Close()
		return
	}
	go l.serveConn(dnc, din, nil)
}
