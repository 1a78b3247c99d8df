package httpproxy

import (
	"net"

	"golang.org/x/sys/unix"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/tlsrec"
)

// Mutual TLS on the event loop (docs/mtls.md). crypto/tls does each handshake on a
// goroutine of its own — the inbound listener's sniffing goroutine (mtls.go), or one the
// loop starts to dial a meshed endpoint — and the connection then joins the loop with its
// TLS 1.3 record layer (sidecar/tlsrec): the loop reads and writes the socket itself,
// decrypting what fill reads into the connection's input and encrypting its queued output
// when Flush writes it, so an HTTP/1.1 exchange over mutual TLS costs what a plaintext one
// does plus the AEAD. Everything the loop hands to the goroutine path keeps its TLS state
// (tlsrec.Conn). HTTP/2 (ALPN h2) and TLS 1.2 connections stay with crypto/tls on the
// goroutine path.
//
// Bounds: a TLS connection holds at most one partial record of input (16 KiB + 261 bytes)
// besides what a plaintext one holds; the loop's one read buffer is shared by its
// connections.

// tlsReadSize is the loop's ciphertext read buffer: four full records.
const tlsReadSize = 4 * tlsrec.MaxRecord

// fillTLS reads ciphertext once and decrypts the whole records it completes into s.in.
// A record the peer must not send, its close_notify, or an end of stream ends the input
// as an EOF does; a partial record at EOF is dropped.
func (h *hloop) fillTLS(s *sock) bool {
	if h.tlsIn == nil {
		h.tlsIn = make([]byte, tlsReadSize)
	}
	buf := h.tlsIn
	k := copy(buf, s.raw)
	n, ok := readSock(s, buf[k:]) // loopio.go
	if !ok {
		return false
	}
	in, used, err := s.tls.Open(s.in, buf[:k+n])
	s.in = in
	s.raw = append(s.raw[:0], buf[used:k+n]...)
	if len(s.raw) == 0 && cap(s.raw) > loopReadSize {
		s.raw = nil
	}
	if err != nil {
		s.raw = nil
		s.readable, s.eof = false, true
	}
	return true
}

// queued is what s has to write and has not: its output not yet encrypted, and for TLS
// the records sealed but not yet written.
func queued(s *sock) (plain, sealed []byte) {
	if s.tls == nil {
		return s.out[s.off:], nil
	}
	return s.out[s.sealed:], s.enc[s.encOff:]
}

// tlsConn is s's socket as the goroutine path takes it (detach): for a TLS connection,
// its record layer carries on with what s had read and sealed.
func tlsConn(nc net.Conn, s *sock) net.Conn {
	if s.tls == nil || nc == nil {
		return nc
	}
	_, sealed := queued(s)
	return tlsrec.NewConn(nc, s.tls, s.raw, sealed)
}

// tlsDial is the outcome of a mutual TLS dial the loop started (dialTLS).
type tlsDial struct {
	u    *sock
	conn net.Conn
	rec  *tlsrec.State
	err  error
}

// dialTLS opens a mutual TLS connection for ex's attempt with the slot it holds: a
// goroutine dials and does the handshake while the request waits on a placeholder
// upstream socket (no descriptor yet), which joins the loop when the dial comes back
// (takeDials). The route's per-try and overall timeouts bound the wait (Tick); the dial's
// own connect timeout and handshake budget bound the goroutine.
func (h *hloop) dialTLS(ex *exchange) {
	u := &sock{fd: -1, up: true, host: ex.host, cluster: ex.c, connecting: true}
	h.attach(ex, u)
	c, host := ex.c, ex.host
	h.l.loopTLSDials.Add(1)
	go func() {
		conn, rec, err := c.DialMeshTLS(host)
		h.postDial(tlsDial{u: u, conn: conn, rec: rec, err: err})
	}()
}

// postDial hands a dial's outcome to the loop; a stopped loop's placeholder gives its
// slot back here.
func (h *hloop) postDial(d tlsDial) {
	if h.enqueue(func() { h.pending.dials = append(h.pending.dials, d) }) {
		return
	}
	if d.conn != nil {
		d.conn.Close()
	}
	if !d.u.closed {
		d.u.closed = true
		d.u.cluster.ConnClosed(h, false)
	}
}

// takeDials (Wake) puts the connections dialled for placeholders into the loop and sends
// the requests waiting on them; a failed dial fails its attempt (a connect failure, as in
// the goroutine path), and one whose attempt ended meanwhile is closed.
func (h *hloop) takeDials() {
	h.pending.mu.Lock()
	list := h.pending.dials
	h.pending.dials = nil
	h.pending.mu.Unlock()
	for _, d := range list {
		u := d.u
		if u.closed { // the attempt timed out or its caller left; closeUp gave the slot back
			if d.conn != nil {
				d.conn.Close()
			}
			continue
		}
		if d.err != nil {
			h.l.loopTLSDialErrors.Add(1)
			h.attemptFailed(u.ex, d.err)
			continue
		}
		fd, err := dupFD(d.conn)
		d.conn.Close() // the duplicate keeps the socket
		if err == nil {
			if err = h.ev.Add(fd); err != nil {
				unix.Close(fd)
			}
		}
		if err != nil {
			h.attemptFailed(u.ex, dialError(u.host, err))
			continue
		}
		u.fd, u.tls, u.connecting = fd, d.rec, false
		u.writable, u.readable = true, true
		h.track(u)
		h.flush(u)
		h.upstreamReady(u)
	}
}

// handshakeTick fails the attempt waiting on a dial that has not come back by the
// attempt's deadline (per-try or route timeout).
func (h *hloop) handshakeTick(ex *exchange, t int64, later func(int64)) {
	switch {
	case ex.tryBy == 0:
	case t >= ex.tryBy:
		h.attemptFailed(ex, errTryTimeout)
	default:
		later(ex.tryBy)
	}
}

// serveTLSOnLoop hands a terminated TLS connection whose record layer was taken over
// (mtls.go) to one of the listener's event loops; false leaves nc and its TLS with the
// caller (the loop is off or stopping). The verified peer is listed with the front's
// peers, as the goroutine path lists it, until the loop closes the connection.
func (l *Listener) serveTLSOnLoop(nc net.Conn, rec *tlsrec.State, peer contract.SPIFFEID, hasPeer bool) bool {
	a := adoption{tls: rec}
	if hasPeer {
		a.peerID, a.peer = peer, peer.String()
		l.mtls.peers.Store(nc.RemoteAddr().String(), peer)
	}
	return l.serveAdoption(nc, a)
}

// forgetPeer drops a closing TLS connection's peer from the front's list.
func (h *hloop) forgetPeer(d *sock) {
	if d.peer != "" && h.l.mtls != nil {
		h.l.mtls.peers.Delete(d.remote)
	}
}
