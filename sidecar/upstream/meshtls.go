package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/tlsrec"
)

// Mutual TLS to meshed endpoints (docs/mtls.md). An endpoint is another sidecar when its
// port is that sidecar's inbound port (contract.InboundPort): function endpoints always
// are, and a Service endpoint the snapshot points at a sidecar is too; or when EDS marks
// it (tlsMode: weft, config.Endpoint.MeshTLS): a Service endpoint podIP:targetPort whose
// pod's capture brings that port to its sidecar, which terminates TLS. Connections to
// such an endpoint originate TLS with the sidecar's workload certificate: the event loop
// (DialMeshTLS) and the goroutine path's HTTP/1.1 pool with ALPN http/1.1, the HTTP/2 pool
// (h2.go) with ALPN h2.

// MeshTLS gives the client side of sidecar-to-sidecar TLS (identity.Manager).
type MeshTLS interface {
	ClientConfig(protos []string) *tls.Config
}

// handshakeTimeout is the least time a TLS handshake to a meshed endpoint gets (Istio's
// connect timeout default).
const handshakeTimeout = 10 * time.Second

// meshTLSState is the configuration the pool dials with, built once: its callbacks read
// the current certificate and bundle at every handshake.
type meshTLSState struct {
	h1, h2 *tls.Config
	// tcp dials captured TCP to meshed endpoints: ALPN weft-tcp only (meshtcp.go).
	tcp *tls.Config
	// h2t dials HTTP/2 connections to meshed endpoints: TLS with ALPN h2 (dialH2TLS).
	h2t *h2Transports
}

// SetMeshTLS makes connections to meshed endpoints mutual TLS from now on (nil: plaintext).
// Connections already open keep what they are.
func (m *Manager) SetMeshTLS(t MeshTLS) {
	if t == nil {
		m.meshTLS.Store(nil)
		return
	}
	// No session resumption: a resumed session carries the certificates of its first
	// handshake, which short-lived SVIDs outlive (measured: resumed connections failed
	// with expired certificates while certificates were renewed every second). Connections
	// are pooled, so full handshakes are rare.
	// The HTTP offers end with ALPNMesh, which no server selects: it tells a callee in
	// permissive mode that this TLS is a sidecar's (meshtcp.go).
	st := &meshTLSState{h1: t.ClientConfig([]string{"http/1.1", ALPNMesh}), h2: t.ClientConfig([]string{"h2", ALPNMesh}),
		tcp: tcpClientConfig(t)}
	st.h2t = &h2Transports{make: func(cfg *http.HTTP2Config) *http.Transport { return newH2TLSTransport(st, cfg) }}
	m.meshTLS.Store(st)
}

// meshTLSHolder is embedded in Manager (one atomic pointer).
type meshTLSHolder struct{ meshTLS atomic.Pointer[meshTLSState] }

// Meshed reports whether h is another sidecar's inbound listener, or an app port such a
// sidecar captures and terminates mesh TLS on.
func (h *Host) Meshed() bool {
	if h.meshTLS.Load() {
		return true
	}
	_, port, err := net.SplitHostPort(h.Address)
	return err == nil && port == strconv.Itoa(contract.InboundPort)
}

// MeshTLSTo reports whether a connection of c to h is mutual TLS: h is meshed and the
// sidecar has a workload identity.
func (c *Cluster) MeshTLSTo(h *Host) bool {
	return c.mgr != nil && c.mgr.meshTLS.Load() != nil && h.Meshed()
}

// DialMeshTLS opens a mutual TLS connection to h for the event loop (MeshTLSTo must hold):
// the connect within the cluster's connect timeout, the handshake as originateTLS does it
// with ALPN http/1.1, then the TLS 1.3 record layer taken from crypto/tls (sidecar/tlsrec).
// It returns the TCP connection, whose descriptor the loop takes, and its record state.
// Every failure is a dial error (a connect failure to retry policies).
func (c *Cluster) DialMeshTLS(h *Host) (net.Conn, *tlsrec.State, error) {
	st := c.mgr.meshTLS.Load()
	if st == nil {
		return nil, nil, meshDialError(nil, h.Address, errors.New("this sidecar has no workload identity"))
	}
	connectTimeout := c.Config().ConnectTimeout
	d := net.Dialer{Timeout: connectTimeout}
	conn, err := d.Dial("tcp", h.Address)
	if err != nil {
		return nil, nil, err
	}
	var keys tlsrec.Capture
	b := &tlsrec.Boundary{Conn: conn}
	tc, err := handshake(context.Background(), b, keys.Config(st.h1), h.Address, connectTimeout, time.Time{})
	if err != nil {
		return nil, nil, err
	}
	rec, err := tlsrec.Take(tc, b, &keys, true)
	if err != nil {
		conn.Close()
		return nil, nil, meshDialError(conn.RemoteAddr(), h.Address, err)
	}
	return conn, rec, nil
}

// originateTLS wraps a fresh connection to h in TLS when h is meshed, completing the
// handshake by deadline (zero: the connect timeout); conn is returned as it is otherwise.
func (c *Cluster) originateTLS(ctx context.Context, conn net.Conn, h *Host, connectTimeout time.Duration, deadline time.Time) (net.Conn, error) {
	if c.mgr == nil || !h.Meshed() {
		return conn, nil
	}
	st := c.mgr.meshTLS.Load()
	if st == nil {
		return conn, nil
	}
	// Plain net.Conn under TLS, not connio.Conn: with connio.Conn under both ends a burst
	// of handshakes onto a new pod saw some stall for the whole 10 s budget (twice, in
	// TestFunction1BurstFromZeroAllSucceed and make demo); without it, none.
	tc, err := handshake(ctx, conn, st.h1, h.Address, connectTimeout, deadline)
	if err != nil {
		return nil, err
	}
	return tc, nil
}

// handshake runs the client side of a mutual TLS handshake on conn with cfg, by deadline
// (zero: none) and within its own budget; a failure closes conn and is a dial error.
func handshake(ctx context.Context, conn net.Conn, cfg *tls.Config, addr string, connectTimeout time.Duration, deadline time.Time) (*tls.Conn, error) {
	// The handshake gets its own budget: the connect timeout guards the TCP connect (500 ms
	// by default), too short for the handshakes of a burst released at once onto a pod
	// that has just started on a busy node.
	budget := max(connectTimeout, handshakeTimeout)
	if d := time.Now().Add(budget); deadline.IsZero() || d.Before(deadline) {
		deadline = d
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, meshDialError(conn.RemoteAddr(), addr, err)
	}
	return tc, nil
}

// meshDialError makes a failed handshake a connect failure, as in Envoy: the connection was
// never established, so connect-failure retries take another host.
func meshDialError(remote net.Addr, addr string, err error) error {
	return &net.OpError{Op: "dial", Net: "tcp", Addr: remote, Err: fmt.Errorf("mutual TLS to %s: %w", addr, err)}
}

// dialTimeoutKey carries the cluster's connect timeout to dialH2TLS through the context
// net/http hands its DialTLSContext.
type dialTimeoutKey struct{}

// newH2TLSTransport is h2cTransports' transport for meshed endpoints: HTTP/2 over mutual TLS, negotiated
// with ALPN h2. Its DialTLSContext returns a *tls.Conn whose handshake is done, so
// net/http reads the negotiated protocol from it and runs its HTTP/2 client on it.
func newH2TLSTransport(st *meshTLSState, cfg *http.HTTP2Config) *http.Transport {
	var p http.Protocols
	p.SetHTTP2(true)
	return &http.Transport{Protocols: &p, Proxy: nil, ForceAttemptHTTP2: true,
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialH2TLS(ctx, st.h2, network, addr, true)
		},
		HTTP2: cfg}
}

// dialH2TLS dials addr within the connect timeout the context carries, then completes a
// mutual TLS handshake offering only h2 within handshakeTimeout. The TLS records go over
// an h2Socket, so the frames net/http writes back to back leave in one write(2) as on h2c.
func dialH2TLS(ctx context.Context, cfg *tls.Config, network, addr string, forClient bool) (net.Conn, error) {
	connectTimeout, _ := ctx.Value(dialTimeoutKey{}).(time.Duration)
	d := net.Dialer{Timeout: connectTimeout}
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	tc, err := handshake(ctx, newH2Socket(ctx, c, forClient), cfg, addr, connectTimeout, time.Time{})
	if err != nil {
		return nil, err
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		tc.Close()
		return nil, meshDialError(c.RemoteAddr(), addr, fmt.Errorf("the peer chose ALPN %q, not h2", p))
	}
	return tc, nil
}

// DialH2 opens one HTTP/2 connection to h for the sidecar's frame relay (httpproxy's
// frames.go), which speaks the protocol itself: cleartext (prior knowledge), or mutual TLS
// with ALPN h2 when h is meshed and the sidecar has a workload identity. The connect
// keeps the cluster's connect timeout and the handshake its own budget, as on net/http's
// HTTP/2 connections (dialH2TLS).
func (c *Cluster) DialH2(ctx context.Context, h *Host) (net.Conn, error) {
	connectTimeout := c.Config().ConnectTimeout
	if c.mgr != nil && h.Meshed() {
		if st := c.mgr.meshTLS.Load(); st != nil {
			return dialH2TLS(context.WithValue(ctx, dialTimeoutKey{}, connectTimeout), st.h2, "tcp", h.Address, false)
		}
	}
	d := net.Dialer{Timeout: connectTimeout}
	return d.DialContext(ctx, "tcp", h.Address)
}
