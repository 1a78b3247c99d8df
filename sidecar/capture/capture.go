// Package capture is the sidecar's transparent-capture data plane (issue 15). It takes the
// connections an iptables REDIRECT sent to the outbound (15001) or inbound (15006)
// listener, reads each one's original destination (SO_ORIGINAL_DST), picks the listener's
// filter chain for it as Envoy does (config.CaptureListener.Select), sniffs the first bytes
// when the port's protocol is not declared, and hands the connection to the HTTP data plane
// with the chain's route table, or proxies its bytes to the chain's cluster (tcp.go).
//
// It takes config.Config through Apply. The HTTP listeners bound at the capture
// listeners' addresses call Divert for every connection they accept; a connection that was
// not redirected (an HTTP_PROXY caller, or a call to the listener's own address) stays
// with them.
package capture

import (
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/telemetry"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// HTTPServer serves a captured connection with the HTTP listener of a chain (the HTTP data
// plane, httpproxy.Proxy). in holds the bytes already read from it (sniffed).
type HTTPServer interface {
	ServeCaptured(listener string, nc net.Conn, in []byte) bool
}

// Options configure a Capture.
type Options struct {
	Upstreams *upstream.Manager
	HTTP      HTTPServer
	Logger    *slog.Logger
	// SniffTimeout bounds the wait for a connection's first bytes on a port whose protocol
	// is not declared (contract.ProtocolSniffTimeout when zero).
	SniffTimeout time.Duration
	// Dialer dials upstream connections (tests set a socket mark through Control); nil
	// uses a net.Dialer.
	Dialer *net.Dialer
	// Telemetry counts proxied TCP connections in Istio's TCP metrics (telemetry.go); nil: none.
	Telemetry *telemetry.Mesh
	// InboundTLS, the sidecar's workload identity, terminates mutual TLS on captured
	// inbound ports and enforces its mode there (meshtls.go); nil: no identity, plaintext.
	InboundTLS InboundTLS
	// ListenAddress overrides where a listener the capture plane binds itself listens
	// (config.CaptureListener.Bind; bind.go), by name: tests bind 127.0.0.1:0.
	ListenAddress map[string]string
}

// Capture serves the captured connections of the capture listeners in force.
type Capture struct {
	opts      Options
	listeners atomic.Pointer[map[string]*listenerState]
	stats     *Stats
	// tlsCfg terminates mutual TLS on captured inbound ports (nil without InboundTLS).
	tlsCfg *tls.Config
	// The listeners the capture plane binds itself (bind.go).
	boundState
}

// listenerState is a capture listener and its connection count.
type listenerState struct {
	cfg    *config.CaptureListener
	active *atomic.Int64 // kept across config swaps: the cap applies to the listener
}

// New returns a Capture with no listeners.
func New(opts Options) *Capture {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.SniffTimeout == 0 {
		opts.SniffTimeout = contract.ProtocolSniffTimeout
	}
	if opts.Dialer == nil {
		opts.Dialer = &net.Dialer{}
	}
	c := &Capture{opts: opts, stats: newStats(), boundState: boundState{bound: map[string]*boundListener{}}}
	if opts.InboundTLS != nil {
		c.tlsCfg = serverTLS(opts.InboundTLS)
	}
	m := map[string]*listenerState{}
	c.listeners.Store(&m)
	return c
}

// Apply puts cfg's capture listeners in force for connections accepted from now on, and
// binds those with no HTTP listener to accept for them (bind.go). It returns the first
// listener that failed to bind; the others still serve.
func (c *Capture) Apply(cfg *config.Config) error {
	old := *c.listeners.Load()
	m := make(map[string]*listenerState, len(cfg.CaptureListeners))
	for _, cl := range cfg.CaptureListeners {
		st := &listenerState{cfg: cl, active: &atomic.Int64{}}
		if o, ok := old[cl.Name]; ok {
			st.active = o.active
		}
		m[cl.Name] = st
	}
	c.listeners.Store(&m)
	return c.bindListeners(cfg)
}

// Divert is called by the HTTP listener named listener for each connection it accepts,
// with its socket. It reports whether the capture plane took the connection (it then owns
// a duplicate of fd and the caller closes its own): a connection that was redirected to
// a destination whose chain is not the caller's own. It reads the original destination
// once, here.
func (c *Capture) Divert(listener string, fd int) bool {
	st := (*c.listeners.Load())[listener]
	if st == nil {
		return false
	}
	dst, ok := OriginalDst(fd)
	if !ok || dst == localAddr(fd) {
		return false // not redirected: an explicit-proxy caller or a call to the listener itself
	}
	m := st.cfg.Select(dst)
	if !m.Sniff() && m.Other != nil && m.Other.HTTP != nil && m.Other.HTTP.Listener == listener {
		return false // the caller's own HTTP chain (the inbound app port): served in place
	}
	// The caller owns fd and closes it: take a duplicate. An os.File over fd itself would
	// close it again from its finalizer, by then maybe another connection's descriptor.
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return false
	}
	f := os.NewFile(uintptr(dup), "")
	nc, err := net.FileConn(f) // its own duplicate, in Go's poller
	f.Close()
	if err != nil {
		return false
	}
	go c.serve(st, nc, dst, m)
	return true
}

// ServeConn serves nc as if it had been redirected from dst to listener (tests, and
// environments that learn the destination another way).
func (c *Capture) ServeConn(listener string, nc net.Conn, dst netip.AddrPort) bool {
	st := (*c.listeners.Load())[listener]
	if st == nil {
		return false
	}
	go c.serve(st, nc, dst, st.cfg.Select(dst))
	return true
}

// serve runs the chain of one captured connection.
func (c *Capture) serve(st *listenerState, nc net.Conn, dst netip.AddrPort, m config.ChainMatch) {
	var in []byte
	if st.cfg.Inbound && c.tlsCfg != nil {
		var meshTCP, ok bool
		if nc, in, meshTCP, ok = c.inboundTLS(nc, dst); !ok {
			return
		} else if meshTCP {
			c.serveMeshTCP(st, nc, dst, m)
			return
		}
	}
	chain := m.Other
	blackHole := chain != nil && chain.TCP != nil && chain.TCP.Cluster == contract.BlackHoleClusterName
	if m.Sniff() || blackHole {
		var isHTTP bool
		isHTTP, in = sniff(nc, c.opts.SniffTimeout, in)
		if isHTTP && m.HTTP != nil {
			chain = m.HTTP
		} else if isHTTP && blackHole {
			c.stats.cluster(contract.BlackHoleClusterName).blocked.Add(1)
			refuseHTTP(nc, in, dst)
			return
		}
	}
	if chain == nil {
		c.stats.noChain.Add(1)
		nc.Close()
		return
	}
	cc := &capturedConn{Conn: nc, dst: net.TCPAddrFromAddrPort(dst)}
	if chain.HTTP != nil {
		if !c.opts.HTTP.ServeCaptured(chain.HTTP.Listener, cc, in) {
			nc.Close()
		}
		return
	}
	if lim := st.cfg.Limits.MaxConnections; lim > 0 && st.active.Add(1) > int64(lim) {
		st.active.Add(-1)
		c.stats.overflow.Add(1)
		nc.Close()
		return
	}
	defer st.active.Add(-1)
	c.proxyTCP(st.cfg, chain.TCP, nc, dst, in)
}

// capturedConn is a captured connection whose local address is its original destination,
// as Envoy's original_dst filter restores it: the HTTP plane's passthrough sends there.
type capturedConn struct {
	net.Conn
	dst *net.TCPAddr
}

func (c *capturedConn) LocalAddr() net.Addr { return c.dst }

// NetConn is the connection itself: the HTTP plane takes its socket into an event loop.
func (c *capturedConn) NetConn() net.Conn { return c.Conn }

// CloseWrite shuts the write side (half-close) when the connection supports it.
func (c *capturedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// OriginalDestination reports where a connection was sent before capture: the original
// destination of a captured connection, else false.
func OriginalDestination(nc net.Conn) (netip.AddrPort, bool) {
	if cc, ok := nc.(*capturedConn); ok {
		return cc.dst.AddrPort(), true
	}
	return netip.AddrPort{}, false
}

// SyscallConn exposes the socket, so the HTTP plane's socket I/O (connio) keeps its fast
// path on a captured connection.
func (c *capturedConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.New("no socket")
}
