package httpproxy

import (
	"bytes"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/httphead"
	"github.com/weftmesh/weft/sidecar/telemetry"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// The event loop's upstream side (see loop.go): attempts, pooled connections, dialling,
// and reading responses.

func (h *hloop) startAttempt(ex *exchange) {
	now := h.ev.Now()
	host := ex.c.Pick(ex.hash, ex.hasHash, ex.retry.tried)
	if host == nil {
		h.reply(ex, ex.retry.giveUp(errNoHost, now))
		return
	}
	ex.host, ex.rec.UpstreamHost = host, host.Address
	host.Start()
	ex.tryBy = 0
	if by := ex.retry.begin(host, now); !by.IsZero() {
		ex.tryBy = by.UnixNano()
	}
	if ex.tryBy != 0 {
		h.ev.Arm(ex.tryBy)
	}
	h.send(ex, now, false)
}

// send writes ex's request to its host over an idle pooled connection or, if there is
// none or fresh is set, a new one.
func (h *hloop) send(ex *exchange, now time.Time, fresh bool) {
	var u *sock
	if !fresh {
		u = h.getIdle(ex.host, now.UnixNano())
	}
	if u == nil {
		if h.reserveConn(ex) {
			h.dialFor(ex, now)
		}
		return
	}
	h.attach(ex, u)
}

// attach sends ex's request on u.
func (h *hloop) attach(ex *exchange, u *sock) {
	u.ex, ex.u = ex, u
	u.out = append(u.out[:0], ex.wire...)
	u.off, u.sealed = 0, 0
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
		u.idle = false
		u.cluster.IdleTaken(h)
		return u
	}
	h.idle[host] = idle
	return nil
}

func (h *hloop) putIdle(u *sock, cc *config.Cluster, now int64) {
	if u.closed {
		return
	}
	// The request waiting at the head of the cluster's queue for this host, on this loop,
	// takes the connection; one waiting for another host or path gets its slot instead.
	w, keep := u.cluster.ConnIdle(u.host, h)
	if w != nil {
		w.Hand(u)
		return
	}
	if !keep {
		h.closeUp(u)
		return
	}
	u.idle = true
	idle := h.idle[u.host]
	if len(idle) >= int(min(cc.Limits.MaxConnections, 1024)) {
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
	if err != nil && !errors.Is(err, unix.EINPROGRESS) {
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
	var errno syscall.Errno
	if errors.As(err, &errno) {
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
		// Function clusters never reach the loop: no answer here is a hold timeout.
		if s := ex.retry.onResponse(hd.Status, false, h.ev.Now()); h.attemptDone(ex, s) {
			// Discard this answer; the connection is kept if the whole body is here.
			if int64(len(u.in)-end) == bodyLen {
				u.in = u.in[:0]
				h.release(ex, true)
			} else {
				h.release(ex, false)
			}
			h.next(ex, s)
			return false
		}
		ex.gotHead, ex.status, ex.remaining, ex.rec.RespBytes = true, hd.Status, bodyLen, bodyLen
		l := h.l
		tel := l.proxy.opts.Telemetry
		if plain && ex.setCookie == "" && !editsResponse(ex.route, ex.wc) {
			// Nothing to change but hop-by-hop lines: copy the head as it came.
			ex.close = ex.close || h.draining.Load()
			at := len(d.out)
			d.out = appendResponseHead(d.out, u.in[:end], hd.Status, ex.close)
			if tel != nil && !l.meshInbound() {
				// The called sidecar's peer metadata names the destination; the app does not
				// see it (telemetry.go).
				if start, end, v := findPeerField(d.out[at:]); start >= 0 {
					tel.SetDestinationPeer(&ex.rec, v)
					d.out = append(d.out[:at+start], d.out[at+end:]...)
				}
			}
			if l.answerPeer(&ex.rec) {
				d.out = appendPeerField(d.out, tel.PeerValue()[0])
			}
		} else {
			full, _ := httphead.ParseResponse(u.in[:end])
			w := h.writer(ex)
			l.responsePeer(&ex.rec, full.Header)
			responseHeader(w.Header(), full.Header, ex.route, ex.wc, ex.setCookie)
			if l.answerPeer(&ex.rec) {
				w.Header()[telemetry.PeerHeader] = tel.PeerValue()
			}
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

// asciiEqualFold compares a field name (a token the scanner validated) with s, a name of
// letters and '-', ignoring case. Under the 0x20 bit a letter matches only itself in either
// case, and '-' only itself or '\r', which no token holds.
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
