package httpproxy

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/connio"
	"github.com/weftmesh/weft/sidecar/identity"
	"github.com/weftmesh/weft/sidecar/tlsrec"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// Mutual TLS on the inbound listener (docs/mtls.md). The listener's own accept loop reads
// the first byte of every connection: 0x16 (a TLS handshake record, which no HTTP request
// starts with) is mutual TLS from another sidecar, whose handshake crypto/tls does here, on
// the connection's goroutine; anything else is plaintext, served on the event loop in
// permissive mode and closed in strict mode. After the handshake an HTTP/1.1 connection
// over TLS 1.3 joins an event loop, which carries its records itself (looptls.go); HTTP/2
// (ALPN h2), TLS 1.2, and every connection when the loop is off are served by the
// goroutine path through crypto/tls.

// InboundTLS is what the inbound listener needs for mutual TLS: identity.Manager's server
// configuration and the peer authentication mode in force.
type InboundTLS interface {
	ServerConfig() *tls.Config
	// Mode is contract.MTLSPermissive or contract.MTLSStrict; read for every connection.
	Mode() string
}

// tlsRecordHandshake is the first byte of a TLS ClientHello record.
const tlsRecordHandshake = 0x16

// mtlsFront is the TLS side of one inbound listener.
type mtlsFront struct {
	src InboundTLS
	cfg *tls.Config
	// peers maps the remote address of each open TLS connection to its verified SPIFFE ID.
	// One entry per open connection: bounded by the listener's connection limit.
	peers sync.Map
	// tcp serves connections whose ALPN is weft-tcp (nil: not offered).
	tcp meshTCPServer
	// Counters for /stats.
	handshakes, handshakeErrors, plaintext, refusedPlaintext atomic.Uint64
}

// startMTLS serves l's socket with the sniffing accept loop; plaintext connections go to
// event loops started without a listening socket (as a capture chain's), or to the
// goroutine path when loops are off or unavailable.
func (p *Proxy) startMTLS(l *Listener, ln net.Listener) string {
	l.mtls = &mtlsFront{src: p.opts.InboundTLS, cfg: p.opts.InboundTLS.ServerConfig()}
	if t, ok := p.opts.Diverter.(meshTCPServer); ok {
		// A caller's TCP chain to the app port originates weft-tcp: served by the capture
		// plane's inbound passthrough once terminated here.
		l.mtls.tcp = t
		l.mtls.cfg.NextProtos = append(slices.Clone(l.mtls.cfg.NextProtos), upstream.ALPNTCP)
	}
	mode := "mutual TLS and plaintext on the goroutine path"
	if !p.opts.GoroutinePerConnection {
		l.loopMu.Lock()
		err := l.startLoops(nil, loopCount())
		l.loopMu.Unlock()
		if err != nil {
			p.opts.Logger.Warn("HTTP event loop unavailable; serving a goroutine per connection", "listener", l.Name, "error", err)
		} else {
			mode = "mutual TLS (handshake on a goroutine; HTTP/1.1 records on the event loop) and plaintext on the event loop"
		}
	}
	go l.serveMTLS(ln)
	return mode
}

// serveMTLS accepts connections and sniffs each on its own goroutine, so a slow client
// never holds up the accept loop.
func (l *Listener) serveMTLS(ln net.Listener) {
	var backoff acceptBackoff
	for {
		conn, ok := l.accept(ln, &backoff)
		if !ok {
			return
		}
		// Captured for another filter chain (capture.go): it goes there when the capture
		// plane terminates mesh TLS and enforces the mode on its ports itself
		// (sidecar/capture/meshtls.go: TCP ports over weft-tcp), or in permissive mode;
		// else, in strict mode, nothing passes the front in plaintext, so every captured
		// connection is sniffed here.
		if (l.mtls.src.Mode() != contract.MTLSStrict || l.diverterEnforcesTLS()) && l.divertConn(conn) {
			conn.Close()
			continue
		}
		l.connections.Add(1)
		if !l.admitConn() {
			conn.Close()
			continue
		}
		go l.sniff(conn)
	}
}

// diverterEnforcesTLS reports whether the capture plane terminates mutual TLS and
// enforces the peer authentication mode on the connections it takes.
func (l *Listener) diverterEnforcesTLS() bool {
	e, ok := l.proxy.opts.Diverter.(interface{ EnforcesMeshTLS() bool })
	return ok && e.EnforcesMeshTLS()
}

// sniff reads the first byte (within the head timeout) and serves the connection as TLS
// or plaintext.
func (l *Listener) sniff(nc net.Conn) {
	f := l.mtls
	lim := l.lim()
	_ = nc.SetReadDeadline(deadlineAfter(time.Now(), lim.HeadTimeout))
	var first [1]byte
	if _, err := io.ReadFull(nc, first[:]); err != nil {
		nc.Close()
		l.connClosed()
		return
	}
	if first[0] != tlsRecordHandshake {
		if f.src.Mode() == contract.MTLSStrict {
			f.refusedPlaintext.Add(1)
			nc.Close() // Istio's STRICT: plaintext gets a closed connection, nothing to parse
			l.connClosed()
			return
		}
		f.plaintext.Add(1)
		_ = nc.SetReadDeadline(time.Time{})
		if !l.serveOnLoop(nc, first[:]) {
			l.serveConn(nc, first[:], nil)
		}
		return
	}
	// Plain net.Conn under TLS, not connio.Conn: with connio.Conn under both ends a burst
	// of handshakes onto a new pod saw some stall for the whole 10 s budget (twice, in
	// TestFunction1BurstFromZeroAllSucceed and make demo); without it, none.
	var under net.Conn = &connio.PrefixConn{Conn: nc, Pre: first[:]}
	cfg := f.cfg
	// With the event loop on, the handshake is readied for the loop to take the
	// connection over after it (looptls.go): its secrets logged, its reads kept to whole
	// records.
	var keys *tlsrec.Capture
	var bound *tlsrec.Boundary
	if !l.proxy.opts.GoroutinePerConnection {
		keys, bound = &tlsrec.Capture{}, &tlsrec.Boundary{Conn: under}
		under, cfg = bound, keys.Config(cfg)
	}
	tc := tls.Server(under, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout(lim.HeadTimeout))
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		f.handshakeErrors.Add(1)
		l.proxy.opts.Logger.Debug("inbound TLS handshake refused", "remote", nc.RemoteAddr().String(), "err", err)
		nc.Close()
		l.connClosed()
		return
	}
	f.handshakes.Add(1)
	_ = nc.SetReadDeadline(time.Time{})
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol == upstream.ALPNTCP {
		if !f.tcp.ServeMeshTCP(l.Name, tc, nc) {
			tc.Close()
		}
		l.connClosed()
		return
	}
	id, hasPeer := identity.PeerID(&cs)
	if keys != nil && cs.NegotiatedProtocol != "h2" {
		// HTTP/1.1 over TLS 1.3 joins an event loop; anything else (TLS 1.2, or no loop to
		// join) stays with crypto/tls, which Take left untouched.
		if rec, err := tlsrec.Take(tc, bound, keys, false); err == nil && l.serveTLSOnLoop(nc, rec, id, hasPeer) {
			return
		}
	}
	key := nc.RemoteAddr().String()
	if hasPeer {
		f.peers.Store(key, id)
	}
	l.serveConn(&mtlsConn{Conn: tc, f: f, key: key}, nil, nil)
}

// meshTCPServer serves terminated weft-tcp connections (the capture plane's ServeMeshTCP).
type meshTCPServer interface {
	ServeMeshTCP(listener string, nc, raw net.Conn) bool
}

// handshakeTimeout bounds a TLS handshake: the head timeout, or 10 s without one.
func handshakeTimeout(head time.Duration) time.Duration {
	if head <= 0 {
		return 10 * time.Second
	}
	return head
}

// withPeer puts the verified SPIFFE ID of r's connection on its context
// (identity.PeerFrom reads it); plaintext requests are returned as they are.
func (f *mtlsFront) withPeer(r *http.Request) *http.Request {
	v, ok := f.peers.Load(r.RemoteAddr)
	if !ok {
		return r
	}
	return r.WithContext(identity.WithPeer(r.Context(), v.(contract.SPIFFEID)))
}

// mtlsConn is a terminated TLS connection as the goroutine path serves it. It embeds
// only net.Conn, so nothing unwraps it to the raw socket (an event loop must never read
// the TLS bytes), and closing it forgets its peer.
type mtlsConn struct {
	net.Conn
	f    *mtlsFront
	key  string
	once sync.Once
}

func (c *mtlsConn) Close() error {
	c.once.Do(func() { c.f.peers.Delete(c.key) })
	return c.Conn.Close()
}

// WriteMTLSStats appends the inbound listener's mutual TLS counters to /stats.
func (p *Proxy) WriteMTLSStats(w io.Writer) {
	l := p.Listener(contract.InboundListenerName)
	if l == nil || l.mtls == nil {
		return
	}
	f := l.mtls
	writeCounter(w, "weft_inbound_tls_handshakes_total", "Inbound mutual TLS handshakes completed.", f.handshakes.Load())
	writeCounter(w, "weft_inbound_tls_handshake_errors_total", "Inbound TLS handshakes refused (no or untrusted client certificate, timeout, garbage).", f.handshakeErrors.Load())
	writeCounter(w, "weft_inbound_plaintext_connections_total", "Inbound plaintext connections accepted (permissive mode).", f.plaintext.Load())
	writeCounter(w, "weft_inbound_plaintext_refused_total", "Inbound plaintext connections closed (strict mode).", f.refusedPlaintext.Load())
}

func writeCounter(w io.Writer, name, help string, v uint64) {
	_, _ = io.WriteString(w, "# HELP "+name+" "+help+"\n# TYPE "+name+" counter\n"+name+" "+itoa(v)+"\n")
}

func itoa(v uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(b[i:])
		}
	}
}
