package httpproxy

import (
	"net"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/tlsrec"
)

// Captured connections on the event loop (issue 15). A capture chain's listener binds
// nothing (capture.go): the capture plane reads the original destination, sniffs, and
// hands each connection to ServeCaptured with the bytes it read. When the loop is on, the
// chain's listener starts its own event loops on the first such connection (a mesh has a
// route configuration, so an unbound listener, per Service port; most are never used)
// and each connection's descriptor joins one of them with its sniffed bytes as its first
// input. From there it is served as an accepted connection is: what the loop does not
// take (passthrough and REGISTRY_ONLY routes, h2c, Upgrade, chunked bodies, ...) is handed
// to the goroutine path, whose net.Conn then reports the original destination as its
// local address (origDstConn), as capture's own wrapper does for passthrough.

// loopCount is how many event loops serve a listener: the sidecar's --concurrency.
func loopCount() int { return max(runtime.GOMAXPROCS(0), 1) }

// adoption is a captured connection on its way to a loop.
type adoption struct {
	fd     int
	in     []byte // sniffed, not yet parsed
	remote string
	dst    net.Addr // the original destination (nil: none known)
	// a mutual TLS connection's record layer and verified peer (looptls.go)
	tls    *tlsrec.State
	peerID contract.SPIFFEID
	peer   string
}

// eventLoops is the listener's loops now (a capture chain's may start later).
func (l *Listener) eventLoops() []*hloop {
	l.loopMu.Lock()
	defer l.loopMu.Unlock()
	return l.loops
}

// stopLoops makes eventLoops final (shutdown): no loop starts after it.
func (l *Listener) stopLoops() []*hloop {
	l.loopMu.Lock()
	defer l.loopMu.Unlock()
	l.loopsStopped = true
	return l.loops
}

// captureLoop is the loop a captured connection joins: one of the listener's loops, taken
// in turn (a capture chain's loops start on its first connection, GOMAXPROCS of them as a
// bound listener has). Nil when the loop is off, failed to start, or the listener is
// shutting down.
func (l *Listener) captureLoop() *hloop {
	if l.proxy.opts.GoroutinePerConnection {
		return nil
	}
	l.loopMu.Lock()
	defer l.loopMu.Unlock()
	if l.loopsStopped || l.loopsFailed || l.loops == nil && !l.unbound {
		return nil // a bound listener's loops start with it, or never
	}
	if l.loops == nil {
		if err := l.startLoops(nil, loopCount()); err != nil {
			l.loopsFailed = true
			l.proxy.opts.Logger.Warn("HTTP event loop unavailable for captured connections; serving a goroutine per connection",
				"listener", l.Name, "error", err)
			return nil
		}
	}
	l.nextLoop++
	return l.loops[l.nextLoop%uint32(len(l.loops))]
}

// serveOnLoop hands nc, with in read from it already, to one of the listener's event
// loops; false leaves nc to the caller (the loop is off, or nc has no socket).
func (l *Listener) serveOnLoop(nc net.Conn, in []byte) bool {
	return l.serveAdoption(nc, adoption{in: in})
}

// serveAdoption hands nc to one of the listener's event loops as a (its descriptor and
// addresses filled in here); false leaves nc to the caller.
func (l *Listener) serveAdoption(nc net.Conn, a adoption) bool {
	h := l.captureLoop()
	if h == nil {
		return false
	}
	inner := nc
	if u, ok := nc.(interface{ NetConn() net.Conn }); ok {
		inner = u.NetConn()
	}
	dup, err := dupFD(inner)
	if err != nil {
		return false
	}
	a.fd, a.remote = dup, nc.RemoteAddr().String()
	if dst := nc.LocalAddr(); dst != inner.LocalAddr() {
		a.dst = dst
	}
	if !h.adopt(a) {
		unix.Close(dup)
		return false
	}
	// The loop owns the duplicate; Go's copy leaves its poller and closes (the socket stays
	// open: the duplicate refers to it).
	_ = inner.Close()
	return true
}

// dupFD duplicates the descriptor of a connection with one (a TCP connection).
func dupFD(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1, syscall.EINVAL
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	dup, derr := -1, error(syscall.EBADF)
	if err := rc.Control(func(fd uintptr) { dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	return dup, derr
}

// adopt queues a for the loop's goroutine; false if the loop has stopped.
func (h *hloop) adopt(a adoption) bool {
	return h.enqueue(func() { h.pending.adopts = append(h.pending.adopts, a) }) // loopconnlimit.go
}

// takeAdoptions makes the queued captured connections the loop's own and serves what
// they brought; once draining, they go to the goroutine path, which answers them with
// Connection: close.
func (h *hloop) takeAdoptions() {
	h.pending.mu.Lock()
	list := h.pending.adopts
	h.pending.adopts = nil
	h.pending.mu.Unlock()
	for _, a := range list {
		if h.draining.Load() {
			h.adoptedToGoroutine(a)
			continue
		}
		if err := h.ev.Add(a.fd); err != nil {
			h.adoptedToGoroutine(a)
			continue
		}
		d := &sock{fd: a.fd, remote: a.remote, writable: true, readable: true, in: a.in, dst: a.dst,
			tls: a.tls, peerID: a.peerID, peer: a.peer}
		if a.tls != nil {
			h.l.loopTLSConns.Add(1)
		} else {
			h.l.capturedLoop.Add(1)
		}
		h.track(d)
		h.down++
		d.inHead = true
		if d.deadline = deadlineNanos(h.ev.Now(), h.l.lim().HeadTimeout); d.deadline != 0 {
			h.ev.Arm(d.deadline)
		}
		h.serveNext(d)
	}
}

// adoptedToGoroutine serves a queued captured connection on the goroutine path instead.
func (h *hloop) adoptedToGoroutine(a adoption) {
	nc := fdConn(a.fd, a.dst)
	if nc == nil && a.peer != "" && h.l.mtls != nil {
		h.l.mtls.peers.Delete(a.remote)
	}
	if nc != nil && a.tls != nil {
		nc = tlsrec.NewConn(nc, a.tls, nil, nil) // nothing read or sealed yet
		if a.peer != "" && h.l.mtls != nil {
			nc = &mtlsConn{Conn: nc, f: h.l.mtls, key: a.remote}
		}
	}
	if nc == nil {
		h.l.connClosed()
		return
	}
	go h.l.serveConn(nc, a.in, nil)
}

// dropAdoptions closes the captured connections queued on a loop that stopped.
func (h *hloop) dropAdoptions() {
	h.pending.mu.Lock()
	list := h.pending.adopts
	h.pending.adopts = nil
	h.pending.mu.Unlock()
	for _, a := range list {
		unix.Close(a.fd)
		if a.peer != "" && h.l.mtls != nil {
			h.l.mtls.peers.Delete(a.remote)
		}
		h.l.connClosed()
	}
}

// fdConn makes a net.Conn of fd (closing fd: the net.Conn holds a duplicate) that reports
// dst, when known, as its local address.
func fdConn(fd int, dst net.Addr) net.Conn {
	f := os.NewFile(uintptr(fd), "")
	nc, err := net.FileConn(f) // a duplicate descriptor in Go's poller
	f.Close()
	if err != nil {
		return nil
	}
	if dst != nil {
		return &origDstConn{Conn: nc, dst: dst}
	}
	return nc
}

// origDstConn is a captured connection on the goroutine path after the loop: its local
// address is its original destination (passthrough sends there).
type origDstConn struct {
	net.Conn
	dst net.Addr
}

func (c *origDstConn) LocalAddr() net.Addr { return c.dst }

// NetConn is the connection itself.
func (c *origDstConn) NetConn() net.Conn { return c.Conn }

// SyscallConn gives connio the socket, for its direct reads and writes.
func (c *origDstConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, syscall.EINVAL
}

// CloseWrite shuts the write side (half-close).
func (c *origDstConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// CloseRead shuts the read side (the drain of an idle connection).
func (c *origDstConn) CloseRead() error {
	if cr, ok := c.Conn.(interface{ CloseRead() error }); ok {
		return cr.CloseRead()
	}
	return c.Conn.Close()
}
