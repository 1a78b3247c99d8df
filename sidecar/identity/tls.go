package identity

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/weftmesh/weft/contract"
)

// ALPN protocols of sidecar-to-sidecar TLS, preferred first: the inbound side serves both,
// and a caller offers only what it means to speak on the connection.
var ALPN = []string{"h2", "http/1.1"}

// errNoSVID fails a handshake before the first certificate.
var errNoSVID = errors.New("this sidecar has no workload certificate yet")

// ServerConfig is the inbound side: it presents the current SVID, requires a client
// certificate, verifies it against the current bundle and the trust domain, and offers
// ALPN h2 and http/1.1. Each handshake reads the current SVID, so a renewal takes effect on
// the next connection.
func (m *Manager) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: ALPN,
		ClientAuth: tls.RequireAnyClientCert, // verified in VerifyConnection, against the bundle of the moment
		// A resumed session would carry the client certificate of its first handshake,
		// which a short-lived SVID outlives.
		SessionTicketsDisabled: true,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			s := m.cur.Load()
			if s == nil {
				return nil, errNoSVID
			}
			return s.Cert, nil
		},
		VerifyConnection: m.verifyPeer,
	}
}

// ClientConfig is the outbound side towards a meshed endpoint, offering protos as ALPN
// (nil: ALPN). The server certificate is verified as a SPIFFE ID of the trust domain; which
// workload it is does not matter here (a later authorization step may check it).
func (m *Manager) ClientConfig(protos []string) *tls.Config {
	if protos == nil {
		protos = ALPN
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: protos,
		// The standard verification checks a host name; a SPIFFE SVID has none, so the
		// chain is verified in VerifyConnection instead (it runs on every handshake,
		// resumed ones included).
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			s := m.cur.Load()
			if s == nil {
				return nil, errNoSVID
			}
			return s.Cert, nil
		},
		VerifyConnection: m.verifyPeer,
	}
}

// verifyPeer checks the peer's chain against the current bundle, at the manager's clock,
// and that its SPIFFE ID is of our trust domain.
func (m *Manager) verifyPeer(cs tls.ConnectionState) error {
	s := m.cur.Load()
	if s == nil {
		return errNoSVID
	}
	chain := make([][]byte, len(cs.PeerCertificates))
	for i, c := range cs.PeerCertificates {
		chain[i] = c.Raw
	}
	id, err := verifyChain(chain, s.Roots, m.opts.Clock.Now())
	if err != nil {
		return fmt.Errorf("peer: %w", err)
	}
	if id.TrustDomain != s.ID.TrustDomain {
		return fmt.Errorf("peer %s is not of trust domain %s", id, s.ID.TrustDomain)
	}
	return nil
}

// PeerID reads the SPIFFE ID of a connection verified by ServerConfig or ClientConfig.
func PeerID(cs *tls.ConnectionState) (contract.SPIFFEID, bool) {
	if cs == nil || !cs.HandshakeComplete || len(cs.PeerCertificates) == 0 || len(cs.PeerCertificates[0].URIs) != 1 {
		return contract.SPIFFEID{}, false
	}
	id, err := contract.ParseSPIFFEID(cs.PeerCertificates[0].URIs[0])
	return id, err == nil
}

type peerKey struct{}

// WithPeer returns ctx carrying the verified SPIFFE ID of the downstream peer. The inbound
// listener sets it on every request that arrived over mutual TLS; authorization reads it
// with PeerFrom.
func WithPeer(ctx context.Context, id contract.SPIFFEID) context.Context {
	return context.WithValue(ctx, peerKey{}, id)
}

// PeerFrom returns the verified SPIFFE ID of the request's downstream peer; false when
// the request did not come over mutual TLS (plaintext in permissive mode, or outbound).
func PeerFrom(ctx context.Context) (contract.SPIFFEID, bool) {
	id, ok := ctx.Value(peerKey{}).(contract.SPIFFEID)
	return id, ok
}
