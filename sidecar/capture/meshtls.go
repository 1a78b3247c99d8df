package capture

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/connio"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// Mutual TLS on captured TCP (docs/mtls.md, "TCP"), Istio's auto-mTLS for TCP.
//
// Caller side (dial, tcp.go): a TCP chain's connection to an endpoint EDS marks meshed
// (tlsMode: weft) is mutual TLS with ALPN weft-tcp, dialed by upstream.Cluster.OriginateTCP
// with the sidecar's SVID; a failed handshake is a connect failure (the next endpoint is
// tried, then the caller's connection is closed: TCP has no 503).
//
// Callee side (inboundTLS, below): every connection captured inbound to a port other than
// the app port reaches the capture plane (the app port stays with the inbound listener,
// httpproxy/mtls.go). With a workload identity:
//   - strict: the first byte must open a TLS handshake and the client must present a mesh
//     certificate; anything else is closed;
//   - permissive: the first bytes are read for at most the sniff timeout; a TLS ClientHello
//     offering a Weft ALPN (weft-tcp, or the weft mark HTTP clients add) is a sidecar's and
//     is terminated; any other bytes, an app's own TLS included, go on as before.
// A terminated connection with ALPN weft-tcp is piped to the app at
// 127.0.0.1:<original port> (the inbound passthrough, with its byte counters and idle
// timeout); with an HTTP ALPN the decrypted connection takes the port's chain as a
// plaintext one would.

// InboundTLS is what the capture plane needs to terminate mutual TLS on captured inbound
// ports: identity.Manager's server configuration and the peer authentication mode.
type InboundTLS interface {
	ServerConfig() *tls.Config
	// Mode is contract.MTLSPermissive or contract.MTLSStrict; read for every connection.
	Mode() string
}

// tlsRecordHandshake is the first byte of a TLS ClientHello record.
const tlsRecordHandshake = 0x16

// maxHelloRecord bounds what permissive mode reads to see a ClientHello's ALPN: a record
// header and the largest plaintext record (RFC 8446 §5.1).
const maxHelloRecord = 5 + 16384

// meshHandshakeBudget bounds the TLS handshake of a captured inbound connection (and, in
// strict mode, the wait for its first byte): the inbound listener's default head timeout.
const meshHandshakeBudget = 10 * time.Second

// meshInboundIdle is the idle timeout of a weft-tcp connection to a port whose chain has
// none (Istio's tcp_proxy default).
const meshInboundIdle = time.Hour

// serverTLS is src's server configuration with weft-tcp added to the ALPN it serves.
func serverTLS(src InboundTLS) *tls.Config {
	cfg := src.ServerConfig()
	cfg.NextProtos = append(slices.Clone(cfg.NextProtos), upstream.ALPNTCP)
	return cfg
}

// EnforcesMeshTLS reports whether the capture plane terminates mutual TLS and enforces the
// peer authentication mode on the inbound ports it takes: the inbound listener then hands
// it captured connections in strict mode too (httpproxy/mtls.go).
func (c *Capture) EnforcesMeshTLS() bool { return c.tlsCfg != nil }

// inboundTLS runs the mesh TLS front of a connection captured inbound. It returns the
// connection to serve (the decrypted one after a handshake), the bytes read from it that
// the chain must see first, whether it carries weft-tcp, and false when it was closed.
func (c *Capture) inboundTLS(nc net.Conn, dst netip.AddrPort) (net.Conn, []byte, bool, bool) {
	s := c.stats
	var in []byte
	if c.opts.InboundTLS.Mode() == contract.MTLSStrict {
		_ = nc.SetReadDeadline(time.Now().Add(meshHandshakeBudget))
		in = make([]byte, 1)
		if _, err := io.ReadFull(nc, in); err != nil || in[0] != tlsRecordHandshake {
			s.inboundRefused.Add(1) // Istio's STRICT: no mesh certificate, no connection
			nc.Close()
			return nil, nil, false, false
		}
	} else {
		in = peekHello(nc, c.opts.SniffTimeout)
		if !upstream.IsMeshClientHello(alpnOffers(in)) {
			s.inboundPlaintext.Add(1)
			if len(in) == 0 {
				in = nil
			}
			return nc, in, false, true
		}
	}
	tc := tls.Server(&connio.PrefixConn{Conn: nc, Pre: in}, c.tlsCfg)
	ctx, cancel := context.WithTimeout(context.Background(), meshHandshakeBudget)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		s.inboundHandshakeErrors.Add(1)
		c.opts.Logger.Debug("inbound TLS handshake refused", "remote", nc.RemoteAddr().String(), "destination", dst.String(), "err", err)
		nc.Close()
		return nil, nil, false, false
	}
	s.inboundHandshakes.Add(1)
	_ = nc.SetReadDeadline(time.Time{})
	return &meshConn{Conn: tc, tc: tc, raw: nc}, nil, tc.ConnectionState().NegotiatedProtocol == upstream.ALPNTCP, true
}

// serveMeshTCP pipes a terminated weft-tcp connection to the app at 127.0.0.1:<original
// port>, under the listener's connection cap, with the idle timeout of the port's TCP
// chain (meshInboundIdle without one).
func (c *Capture) serveMeshTCP(st *listenerState, nc net.Conn, dst netip.AddrPort, m config.ChainMatch) {
	idle := meshInboundIdle
	if m.Other != nil && m.Other.TCP != nil {
		idle = m.Other.TCP.IdleTimeout
	}
	if lim := st.cfg.Limits.MaxConnections; lim > 0 && st.active.Add(1) > int64(lim) {
		st.active.Add(-1)
		c.stats.overflow.Add(1)
		nc.Close()
		return
	}
	defer st.active.Add(-1)
	c.proxyTCP(st.cfg, &config.TCPProxy{StatPrefix: contract.InboundPassthroughClusterName, Cluster: contract.InboundPassthroughClusterName, IdleTimeout: idle}, nc, dst, nil)
}

// ServeMeshTCP serves a connection the named bound listener terminated itself with ALPN
// weft-tcp: a caller's TCP chain to the pod's app port, whose captured connections stay
// with the inbound listener (httpproxy/mtls.go). raw is the accepted socket, for its
// original destination; the bytes go to 127.0.0.1:<that port>. It returns when the
// connection ends; false (nc left to the caller) when raw was not redirected.
func (c *Capture) ServeMeshTCP(listener string, nc, raw net.Conn) bool {
	st := (*c.listeners.Load())[listener]
	sc, ok := raw.(syscall.Conn)
	if st == nil || !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var dst netip.AddrPort
	_ = rc.Control(func(fd uintptr) { dst, ok = OriginalDst(int(fd)) })
	if !ok {
		return false
	}
	if tc, ok := nc.(*tls.Conn); ok {
		nc = &meshConn{Conn: tc, tc: tc, raw: raw} // the socket's counts for telemetry
	}
	c.serveMeshTCP(st, nc, dst, st.cfg.Select(dst))
	return true
}

// peekHello reads a connection's first bytes for at most timeout: a whole TLS record when
// they start one (up to maxHelloRecord bytes), else what the first read brought. Nothing
// within timeout (a server-first protocol) returns nothing.
func peekHello(nc net.Conn, timeout time.Duration) []byte {
	_ = nc.SetReadDeadline(time.Now().Add(timeout))
	defer func() { _ = nc.SetReadDeadline(time.Time{}) }()
	buf := make([]byte, 0, 1024)
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, min(cap(buf), maxHelloRecord-len(buf)))
		}
		n, err := nc.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if len(buf) == 0 || buf[0] != tlsRecordHandshake {
			return buf
		}
		if len(buf) >= 5 && len(buf) >= 5+int(binary.BigEndian.Uint16(buf[3:5])) || len(buf) >= maxHelloRecord || err != nil {
			return buf
		}
	}
}

// meshConn is a terminated mutual TLS connection. It embeds only net.Conn, so nothing
// unwraps it to the socket (an event loop or connio must never read the TLS records);
// raw is the socket, for the kernel's byte counts (telemetry.go).
type meshConn struct {
	net.Conn
	tc  *tls.Conn
	raw net.Conn
}

// CloseWrite sends close_notify: the peer reads the end of the stream (the half-close of
// a proxied TCP connection).
func (c *meshConn) CloseWrite() error { return c.tc.CloseWrite() }

func (c *meshConn) socket() net.Conn { return c.raw }

// ConnectionState is the TLS state, with the verified peer certificates (identity.PeerID).
func (c *meshConn) ConnectionState() tls.ConnectionState { return c.tc.ConnectionState() }
