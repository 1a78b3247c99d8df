package upstream

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/weftmesh/weft/contract"
)

// Mutual TLS to meshed endpoints (docs/mtls.md). An endpoint is another sidecar when its
// port is that sidecar's inbound port (contract.InboundPort): function endpoints always
// are, and a Service endpoint the snapshot points at a sidecar is too. Connections to
// such an endpoint on the goroutine path's HTTP/1.1 pool originate TLS with the sidecar's
// workload certificate (ALPN http/1.1); the event loop hands requests for clusters with
// meshed endpoints to the goroutine path, since it does no TLS.

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
	h1 *tls.Config
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
	m.meshTLS.Store(&meshTLSState{h1: t.ClientConfig([]string{"http/1.1"})})
}

// meshTLSHolder is embedded in Manager (one atomic pointer).
type meshTLSHolder struct{ meshTLS atomic.Pointer[meshTLSState] }

// Meshed reports whether h is another sidecar's inbound listener.
func (h *Host) Meshed() bool {
	_, port, err := net.SplitHostPort(h.Address)
	return err == nil && port == strconv.Itoa(contract.InboundPort)
}

// OriginatesTLS reports whether requests of c may go over mutual TLS: the sidecar has a
// workload identity and one of c's endpoints is meshed. The event loop hands such
// requests to the goroutine path.
func (c *Cluster) OriginatesTLS() bool {
	return c.meshed.Load() && c.mgr != nil && c.mgr.meshTLS.Load() != nil
}

// anyMeshed reports whether one of hosts is meshed; computed when EDS changes, so the
// event loop's check per request is two atomic loads.
func anyMeshed(hosts []*Host) bool {
	for _, h := range hosts {
		if h.Meshed() {
			return true
		}
	}
	return false
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
	// The handshake gets its own budget: the connect timeout guards the TCP connect (500 ms
	// by default), too short for the handshakes of a burst released at once onto a pod
	// that has just started on a busy node.
	budget := max(connectTimeout, handshakeTimeout)
	if d := time.Now().Add(budget); deadline.IsZero() || d.Before(deadline) {
		deadline = d
	}
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	tc := tls.Client(conn, st.h1)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		// A connection whose handshake failed was never established: it is a connect
		// failure, as in Envoy, so connect-failure retries take another host.
		return nil, &net.OpError{Op: "dial", Net: "tcp", Addr: conn.RemoteAddr(),
			Err: fmt.Errorf("mutual TLS to %s: %w", h.Address, err)}
	}
	return tc, nil
}
