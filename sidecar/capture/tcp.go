package capture

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// copyChunk is how many bytes one direction copies between refreshes of its idle
// deadline. Within a chunk the kernel splices socket to socket (io.Copy of *net.TCPConn on
// Linux), so no user-space buffer is held per connection; the pipe splice uses is the
// runtime's, pooled.
const copyChunk = 4 << 20

// proxyTCP connects to the chain's cluster and copies bytes both ways until both sides
// have closed, propagating half-closes (a FIN from one side is a CloseWrite on the other)
// and closing both on an error or after the idle timeout with no byte either way.
func (c *Capture) proxyTCP(cl *config.CaptureListener, tp *config.TCPProxy, down net.Conn, dst netip.AddrPort, first []byte) {
	defer down.Close()
	defer c.reportTCP(cl.Inbound, tp.Cluster, down)() // before the close: it reads the socket's counts (telemetry.go)
	cs := c.stats.cluster(tp.Cluster)
	cs.connections.Add(1)
	up, host, ok := c.dial(cl, tp.Cluster, dst, cs)
	if !ok {
		return
	}
	defer up.Close()
	cs.active.Add(1)
	defer cs.active.Add(-1)
	if len(first) > 0 {
		if sni := serverName(first); sni != "" {
			c.stats.tls(tp.Cluster, sni)
		}
		n, err := up.Write(first)
		cs.sent.Add(uint64(n))
		if err != nil {
			c.report(tp.Cluster, host, upstream.LocalOriginFailure)
			return
		}
	}
	p := &pipe{a: down, b: up, idle: tp.IdleTimeout, timeouts: &cs.idleTimeouts}
	p.touch()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if first == nil && cl.TLSInspector {
			// Look at the caller's first bytes as they pass: a TLS ClientHello's SNI is
			// recorded. Nothing waits for them; a server-first protocol flows at once.
			buf := make([]byte, 4096)
			n, err := down.Read(buf)
			if n > 0 {
				if sni := serverName(buf[:n]); sni != "" {
					c.stats.tls(tp.Cluster, sni)
				}
				w, werr := up.Write(buf[:n])
				cs.sent.Add(uint64(w))
				p.touch()
				if werr != nil {
					err = werr
				}
			}
			if err != nil {
				if errors.Is(err, io.EOF) {
					closeWrite(up)
				} else {
					up.Close()
					down.Close()
				}
				return
			}
		}
		p.copy(up, down, &cs.sent)
	}()
	p.copy(down, up, &cs.received)
	<-done
	c.report(tp.Cluster, host, upstream.Success)
}

// dial connects to the chain's cluster: the original destination for the passthrough
// cluster, 127.0.0.1:<original port> for the inbound passthrough, nothing for the black
// hole, else an endpoint the cluster's load balancer picks (trying up to three).
func (c *Capture) dial(cl *config.CaptureListener, cluster string, dst netip.AddrPort, cs *clusterStats) (net.Conn, *upstream.Host, bool) {
	switch cluster {
	case contract.BlackHoleClusterName:
		cs.blocked.Add(1)
		return nil, nil, false
	case contract.PassthroughClusterName, contract.InboundPassthroughClusterName:
		addr := dst.String()
		if cl.Inbound {
			addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(int(dst.Port())))
		}
		timeout := 10 * time.Second
		if uc := c.opts.Upstreams.Get(cluster); uc != nil {
			timeout = uc.Config().ConnectTimeout
		}
		up, err := c.connect(addr, timeout)
		if err != nil {
			cs.connectFailures.Add(1)
			return nil, nil, false
		}
		return up, nil, true
	}
	uc := c.opts.Upstreams.Get(cluster)
	if uc == nil {
		cs.connectFailures.Add(1)
		return nil, nil, false
	}
	var tried []*upstream.Host
	// One handshake budget for every attempt (upstream.HandshakeBudget).
	ctx, cancel := context.WithTimeout(context.Background(), upstream.HandshakeBudget(uc.Config().ConnectTimeout))
	defer cancel()
	for range 3 {
		h := uc.Pick(0, false, tried)
		if h == nil {
			break
		}
		h.Start()
		up, err := c.connect(h.Address, uc.Config().ConnectTimeout)
		if err == nil {
			var meshed bool
			if up, meshed, err = uc.OriginateTCP(ctx, up, h); err == nil {
				if meshed {
					cs.mtls.Add(1)
				}
				return up, h, true
			}
			cs.mtlsFailures.Add(1)
			c.opts.Logger.Debug("mutual TLS to a meshed endpoint failed", "cluster", cluster, "endpoint", h.Address, "err", err)
		}
		uc.Report(h, upstream.LocalOriginFailure)
		tried = append(tried, h)
	}
	cs.connectFailures.Add(1)
	return nil, nil, false
}

func (c *Capture) connect(addr string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	up, err := c.opts.Dialer.DialContext(ctx, "tcp", addr)
	if err == nil {
		if tc, ok := up.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
	}
	return up, err
}

func (c *Capture) report(cluster string, h *upstream.Host, o upstream.Outcome) {
	if h == nil {
		return
	}
	if uc := c.opts.Upstreams.Get(cluster); uc != nil {
		uc.Report(h, o)
	}
}

// pipe is the state both directions of one proxied connection share: the two
// connections, when a byte last moved either way as far as the copy loops know (for
// connections without TCP_INFO), and whether the idle timeout ended it.
type pipe struct {
	a, b     net.Conn
	idle     time.Duration
	last     atomic.Int64 // unix nanos
	timedOut atomic.Bool
	timeouts *atomic.Uint64 // the cluster's idle timeout counter
}

// timeOut counts the idle timeout that ends the pipe, once, before either connection is
// closed: whoever sees a connection end by it finds it counted.
func (p *pipe) timeOut() {
	if p.timedOut.CompareAndSwap(false, true) {
		p.timeouts.Add(1)
	}
}

func (p *pipe) touch() { p.last.Store(time.Now().UnixNano()) }

// quiet is how long neither side has sent a byte. The copy loops splice whole chunks
// without returning, so they cannot see a trickle as it passes; the kernel can: TCP_INFO's
// tcpi_last_data_recv is the time since the socket last received data.
func (p *pipe) quiet() time.Duration {
	q := time.Since(time.Unix(0, p.last.Load()))
	for _, c := range []net.Conn{p.a, p.b} {
		if d, ok := sinceLastRecv(c); ok && d < q {
			q = d
		}
	}
	return q
}

func sinceLastRecv(c net.Conn) (time.Duration, bool) {
	switch m := c.(type) {
	case *meshConn:
		c = m.raw
	case *tls.Conn:
		c = m.NetConn()
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return 0, false
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var d time.Duration
	ok = false
	_ = rc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			d, ok = time.Duration(info.Last_data_recv)*time.Millisecond, true
		}
	})
	return d, ok
}

// copy moves bytes from src to dst until src ends. At src's EOF dst's write side is shut,
// so the peer sees the half-close; on any other error both connections are closed so the
// other direction ends too. src's read deadline is the idle timeout; when it passes while
// either side sent a byte within the timeout, the deadline moves to the timeout after that
// byte.
func (p *pipe) copy(dst, src net.Conn, counter *atomic.Uint64) {
	if p.idle > 0 {
		_ = src.SetReadDeadline(time.Now().Add(p.idle))
	}
	if s := newSplicer(dst, src); s != nil {
		defer s.close()
		p.splice(s, dst, src, counter)
		return
	}
	for {
		n, err := io.Copy(dst, &io.LimitedReader{R: src, N: copyChunk})
		if n > 0 {
			counter.Add(uint64(n))
			p.touch()
		}
		switch {
		case err == nil && n == copyChunk:
			continue // the chunk is done; the stream goes on
		case err == nil:
			closeWrite(dst) // EOF from src
			return
		case errors.Is(err, os.ErrDeadlineExceeded) && p.idle > 0:
			if q := p.quiet(); q < p.idle {
				_ = src.SetReadDeadline(time.Now().Add(p.idle - q))
				continue
			}
			p.timeOut()
		}
		dst.Close()
		src.Close()
		return
	}
}

// splice is copy's loop on two TCP sockets (splicer): the same ends, the idle deadline
// moved the same way, the counter and the activity time updated as each step's bytes
// leave.
func (p *pipe) splice(s *splicer, dst, src net.Conn, counter *atomic.Uint64) {
	for {
		n, eof, err := s.step()
		if n > 0 {
			counter.Add(uint64(n))
			p.touch()
		}
		switch {
		case eof:
			closeWrite(dst)
			return
		case err == nil:
			continue
		case errors.Is(err, os.ErrDeadlineExceeded) && p.idle > 0:
			if q := p.quiet(); q < p.idle {
				_ = src.SetReadDeadline(time.Now().Add(p.idle - q))
				continue
			}
			p.timeOut()
		}
		dst.Close()
		src.Close()
		return
	}
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
		return
	}
	c.Close()
}
