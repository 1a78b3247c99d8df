package upstream

import (
	"context"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/weftmesh/weft/sidecar/connio"
)

// h2Socket is an HTTP/2 upstream connection whose read(2) and write(2) calls skip the
// runtime's syscall bracket, as the HTTP/1.1 pool's connio.Conn does. net/http's HTTP/2
// client writes every frame it flushes with its own write(2): a gRPC unary call costs two
// (HEADERS, then DATA with END_STREAM) and a read per response. Inside the bracket, a
// loopback write that runs the receiver's TCP input inline past a monitor tick makes the
// runtime hand the sidecar's only processor (GOMAXPROCS=1) to another thread, and the
// writer's thread then parks: two thread switches the call waits on, each needing a CPU
// that on a busy node another process holds (see docs/bench-capture.md). The
// descriptor stays non-blocking, so the raw calls never park the thread.
//
// One goroutine reads (the client's read loop) and one writes at a time (the client's
// write mutex), as connio.Writer requires.
type h2Socket struct {
	net.Conn
	raw  syscall.RawConn
	w    *FlushBehind
	rp   []byte
	rn   int
	rerr syscall.Errno
	read func(fd uintptr) bool
}

// newH2Socket wraps c; a connection without a descriptor is returned as it is. For
// net/http's HTTP/2 client (forClient) its writes never wait (FlushBehind.WithoutWaiting),
// and the socket is made known to the connection's pool through ctx (h2Dial.dial), whose
// request bodies then wait for room (gatedBody); the frame relay's connections keep
// writes that wait, which is how it stops reading a caller an upstream does not keep up
// with.
func newH2Socket(ctx context.Context, c net.Conn, forClient bool) net.Conn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	s := &h2Socket{Conn: c, raw: raw}
	s.w = NewFlushBehind(c, c).WithWriteTimeout(H2WriteTimeout)
	if forClient {
		s.w.WithoutWaiting()
		if ref, ok := ctx.Value(socketRefKey{}).(*socketRef); ok {
			ref.w = s.w
		}
	}
	s.read = s.readFD
	return s
}

func (s *h2Socket) readFD(fd uintptr) bool {
	s.rn, s.rerr = connio.ReadFD(int(fd), s.rp)
	return s.rerr != syscall.EAGAIN
}

// Read reads what has arrived, waiting on the poller (and the read deadline) for more.
func (s *h2Socket) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	s.w.FlushPending() // what this read's reply may follow leaves first (FlushBehindDelay)
	s.rp, s.rn, s.rerr = p, 0, 0
	err := s.raw.Read(s.read)
	n, errno := s.rn, s.rerr
	s.rp = nil
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: s.LocalAddr(), Addr: s.RemoteAddr(), Err: os.NewSyscallError("read", errno)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write queues p for the socket (FlushBehind): the frames the client writes back to back
// leave in one write(2).
func (s *h2Socket) Write(p []byte) (int, error) { return s.w.Write(p) }

// Room reports how many bytes a Write can queue now without waiting for the socket (a
// write through crypto/tls above this socket needs a little more than its length: record
// headers and tags). The frame relay writes its mutual TLS connections inline when they fit.
func (s *h2Socket) Room() int { return s.w.Room() }

// H2WriteTimeout cuts an HTTP/2 upstream connection whose peer has taken nothing for this
// long while the sidecar had frames for it (a hung process, a receive queue that never
// drains): its streams fail and its max_connections slot comes back, instead of the
// connection staying in write(2) for good. The frame relay and the h2c server cut their
// connections, callers' and upstreams', after the same time (httpproxy.frameWriteTimeout).
const H2WriteTimeout = 10 * time.Second

// SetWriteDeadline leaves the socket's write deadline to the FlushBehind, which keeps
// H2WriteTimeout: a deadline set around one queued Write would not cover its write(2).
func (s *h2Socket) SetWriteDeadline(t time.Time) error { return s.w.SetWriteDeadline(t) }

// SetDeadline sets the read deadline, and the write deadline as SetWriteDeadline does: a
// TLS handshake's deadline bounds its reads, and the write timeout its writes.
func (s *h2Socket) SetDeadline(t time.Time) error {
	if err := s.Conn.SetReadDeadline(t); err != nil {
		return err
	}
	return s.SetWriteDeadline(t)
}

// dialH2 dials an HTTP/2 upstream for h2cTransports.
func dialH2(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return newH2Socket(ctx, c, true), nil
}
