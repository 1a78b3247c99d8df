package upstream

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"time"
)

// Mutual TLS for captured TCP (docs/mtls.md, "TCP"). Istio's auto-mTLS for TCP: the
// caller's sidecar originates TLS to a meshed endpoint on the endpoint's own port, the
// callee's sidecar (capturing that port inbound) terminates it and hands the bytes to its
// app on the same port. Istio's client offers ALPN "istio-peer-exchange"/"istio" for TCP;
// Weft's offers ALPNTCP alone, and its HTTP clients add ALPNMesh after their HTTP protocol,
// so a callee in permissive mode can tell a sidecar's TLS from an app's own TLS by the
// ClientHello, as Istio's inbound filter chains match on its "istio*" ALPNs.

// ALPNTCP is the ALPN of mutual TLS that carries the bytes of a captured TCP connection.
const ALPNTCP = "weft-tcp"

// ALPNMesh marks a ClientHello as a Weft sidecar's: HTTP clients offer it after their HTTP
// protocol. No server selects it (it is in no server's NextProtos); it is only read.
const ALPNMesh = "weft"

// IsMeshClientHello reports whether the ALPN protocols a ClientHello offers are a Weft
// sidecar's (ALPNTCP or ALPNMesh among them).
func IsMeshClientHello(offered []string) bool {
	return slices.Contains(offered, ALPNTCP) || slices.Contains(offered, ALPNMesh)
}

// OriginateTCP wraps conn, freshly dialed to h, in mutual TLS with ALPN weft-tcp when h is
// meshed and the sidecar has a workload identity; tlsUsed reports it. Otherwise conn is
// returned as it is. The handshake is bounded as HTTP's (handshake: the larger of the
// connect timeout and 10 s, and ctx); a failure closes conn and is a dial error, as is a
// callee that did not choose weft-tcp (an older sidecar, or a server that is no sidecar):
// TCP bytes never go in plaintext to an endpoint marked meshed.
func (c *Cluster) OriginateTCP(ctx context.Context, conn net.Conn, h *Host) (out net.Conn, tlsUsed bool, err error) {
	if c.mgr == nil || !h.Meshed() {
		return conn, false, nil
	}
	st := c.mgr.meshTLS.Load()
	if st == nil {
		return conn, false, nil
	}
	tc, err := handshake(ctx, conn, st.tcp, h.Address, c.Config().ConnectTimeout, time.Time{})
	if err != nil {
		return nil, true, err
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != ALPNTCP {
		tc.Close()
		return nil, true, meshDialError(conn.RemoteAddr(), h.Address, fmt.Errorf("the peer chose ALPN %q, not %s", p, ALPNTCP))
	}
	return tc, true, nil
}

// HandshakeBudget is how long mutual TLS handshakes to a cluster's endpoints may take: the
// larger of its connect timeout and 10 s. A TCP proxy gives all of one connection's
// attempts this budget together, so a callee that accepts and never answers holds the
// caller no longer than one handshake.
func HandshakeBudget(connectTimeout time.Duration) time.Duration {
	return max(connectTimeout, handshakeTimeout)
}

// tcpClientConfig is the TCP client configuration of t.
func tcpClientConfig(t MeshTLS) *tls.Config { return t.ClientConfig([]string{ALPNTCP}) }
