package redisproxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"
)

// Mutual TLS to servers behind sidecars (docs/mtls.md "TCP"). A pool's server that EDS
// marks tlsMode: weft (config.RedisServer.MeshTLS: a serviceRef endpoint whose pod's
// capture brings the Redis port to its sidecar) is dialed with mutual TLS, ALPN weft-tcp,
// and the sidecar's workload certificate, as the capture plane dials a meshed TCP
// endpoint; the server's sidecar terminates it and hands the bytes to redis-server on
// 127.0.0.1. Data connections and health probes alike, so a strict server pod works
// through the pool. Without an identity (WithMeshTLS not given) every server is dialed in
// plaintext, as HTTP does.

// MeshTLS gives the client side of sidecar-to-sidecar TLS (identity.Manager).
type MeshTLS interface {
	ClientConfig(protos []string) *tls.Config
}

// alpnTCP is upstream.ALPNTCP (the capture plane's weft-tcp), repeated: the Redis proxy
// does not import the HTTP upstreams.
const alpnTCP = "weft-tcp"

// meshHandshakeBudget is the least time a server connection's handshake gets (the HTTP
// and TCP upstreams' budget); a health probe gets its own timeout only.
const meshHandshakeBudget = 10 * time.Second

// WithMeshTLS dials servers marked MeshTLS with mutual TLS from t's certificate.
func WithMeshTLS(t MeshTLS) Option {
	return func(p *Proxy) {
		if t != nil {
			p.meshTLS.Store(t.ClientConfig([]string{alpnTCP}))
		}
	}
}

// dial connects to the server within timeout and, when it is meshed and the proxy has an
// identity, completes a mutual TLS handshake within handshake.
func (u *upstream) dial(timeout, handshake time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", u.addr, timeout)
	if err != nil || !u.meshed || u.tlsCfg == nil {
		return c, err
	}
	cfg := u.tlsCfg.Load()
	if cfg == nil {
		return c, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), handshake)
	defer cancel()
	tc := tls.Client(c, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		u.tlsFailures.Add(1)
		return nil, fmt.Errorf("mutual TLS to the server's sidecar: %w", err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != alpnTCP {
		tc.Close()
		u.tlsFailures.Add(1)
		return nil, fmt.Errorf("mutual TLS to the server's sidecar: it chose ALPN %q, not %s (is it a Weft sidecar of this version?)", p, alpnTCP)
	}
	return tc, nil
}
