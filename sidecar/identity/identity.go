// Package identity holds the sidecar's workload identity: it takes a Signer (the manager's
// certificate service over the authenticated xDS connection) and produces the current
// X.509-SVID, its trust bundle, and the TLS configurations both sides of sidecar-to-sidecar
// mutual TLS use (docs/mtls.md).
//
// The private key is generated in memory for every certificate and never written anywhere.
// The certificate is renewed at half its lifetime (Istio's rule); when renewal fails the
// sidecar keeps serving with the certificate it has until that expires, retrying with
// back-off, and says so in Status (which /ready reports). A renewal swaps the certificate
// for new handshakes only: connections already open keep theirs and finish undisturbed.
package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"k8s.io/utils/clock"

	"github.com/weftmesh/weft/contract"
)

func init() { encoding.RegisterCodec(contract.SignalCodec{}) }

// Signer turns a CSR into a certificate chain and a trust bundle (both PEM), with the
// workload's peer authentication mode.
type Signer interface {
	Sign(ctx context.Context, csrPEM []byte, ttl time.Duration) (*contract.SignResponse, error)
}

// SignerFunc adapts a function to Signer.
type SignerFunc func(ctx context.Context, csrPEM []byte, ttl time.Duration) (*contract.SignResponse, error)

// Sign calls f.
func (f SignerFunc) Sign(ctx context.Context, csrPEM []byte, ttl time.Duration) (*contract.SignResponse, error) {
	return f(ctx, csrPEM, ttl)
}

// GRPCSigner asks the manager's certificate service (contract.SignMethod) on conn, the
// connection the xDS client's credentials authenticate: the manager names the certificate
// after the token, so nothing the sidecar claims matters.
type GRPCSigner struct{ Conn grpc.ClientConnInterface }

// Sign implements Signer.
func (s GRPCSigner) Sign(ctx context.Context, csrPEM []byte, ttl time.Duration) (*contract.SignResponse, error) {
	out := &contract.SignResponse{}
	in := &contract.SignRequest{CSR: string(csrPEM), TTLSeconds: int64(ttl / time.Second)}
	if err := s.Conn.Invoke(ctx, contract.SignMethod, in, out, grpc.CallContentSubtype(contract.SignalCodecName)); err != nil {
		return nil, fmt.Errorf("asking the control plane for a workload certificate: %w", err)
	}
	return out, nil
}

// Options configure a Manager.
type Options struct {
	Signer Signer
	// TTL is the lifetime asked for (0: the CA's default, 24 h); --workload-cert-ttl
	// shortens it for tests.
	TTL   time.Duration
	Clock clock.WithTicker
	Log   *slog.Logger
	// RetryMin and RetryMax bound the back-off between failed requests (1 s, 30 s).
	RetryMin, RetryMax time.Duration
	// RequestTimeout bounds one request (10 s).
	RequestTimeout time.Duration
	// Mode, when set, overrides the peer authentication mode the control plane sends
	// (--mtls-mode).
	Mode string
}

// SVID is one issued certificate with its key and the bundle that came with it.
// Immutable once published.
type SVID struct {
	// Mode is the peer authentication mode that came with it.
	Mode   string
	Cert   *tls.Certificate
	Leaf   *x509.Certificate
	ID     contract.SPIFFEID
	Roots  *x509.CertPool
	Bundle []byte
	// Obtained is when it arrived.
	Obtained time.Time
}

// Manager keeps the sidecar's current SVID. Its zero value is not usable; use New.
type Manager struct {
	opts    Options
	cur     atomic.Pointer[SVID]
	mu      sync.Mutex
	lastErr error
	errAt   time.Time
	renewed chan struct{} // closed and replaced on every new SVID (tests wait on it)
}

// New returns a Manager; call Run to obtain and renew certificates.
func New(opts Options) *Manager {
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.RetryMin <= 0 {
		opts.RetryMin = time.Second
	}
	if opts.RetryMax <= 0 {
		opts.RetryMax = 30 * time.Second
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 10 * time.Second
	}
	return &Manager{opts: opts, renewed: make(chan struct{})}
}

// Current is the SVID in force, nil before the first one. An expired one is still
// returned (the TLS handshake then fails, as it must); Status says why.
func (m *Manager) Current() *SVID { return m.cur.Load() }

// Mode is the inbound peer authentication mode in force: the override, else what came
// with the current certificate, else permissive.
func (m *Manager) Mode() string {
	if m.opts.Mode != "" {
		return m.opts.Mode
	}
	if s := m.cur.Load(); s != nil {
		return s.Mode
	}
	return contract.MTLSPermissive
}

// Renewed returns a channel closed at the next new SVID.
func (m *Manager) Renewed() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.renewed
}

// Status is what /ready reports: ready is false when the sidecar holds no valid
// certificate; note, when not empty, says what is wrong (a failing renewal while the last
// certificate is still valid leaves the sidecar ready).
func (m *Manager) Status() (ready bool, note string) {
	now := m.opts.Clock.Now()
	cur := m.cur.Load()
	m.mu.Lock()
	err, at := m.lastErr, m.errAt
	m.mu.Unlock()
	switch {
	case cur == nil && err != nil:
		return false, fmt.Sprintf("no workload certificate yet: %v", err)
	case cur == nil:
		return false, "no workload certificate yet: the first request to the control plane is pending"
	case !now.Before(cur.Leaf.NotAfter):
		return false, fmt.Sprintf("workload certificate %s expired at %s; renewal: %v", cur.ID, cur.Leaf.NotAfter.UTC().Format(time.RFC3339), err)
	case err != nil:
		return true, fmt.Sprintf("workload certificate renewal failing since %s (%v); serving with %s valid until %s",
			at.UTC().Format(time.RFC3339), err, cur.ID, cur.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return true, ""
}

// Run obtains a certificate at once, then renews it at half its lifetime until ctx ends.
func (m *Manager) Run(ctx context.Context) {
	backoff := m.opts.RetryMin
	for {
		var wait time.Duration
		if err := m.renew(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			m.mu.Lock()
			if m.lastErr == nil {
				m.errAt = m.opts.Clock.Now()
			}
			m.lastErr = err
			m.mu.Unlock()
			m.opts.Log.Warn("workload certificate request failed", "err", err, "retryIn", backoff)
			wait, backoff = backoff, min(2*backoff, m.opts.RetryMax)
		} else {
			backoff = m.opts.RetryMin
			wait = m.renewAt().Sub(m.opts.Clock.Now())
		}
		t := m.opts.Clock.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
	}
}

// renewAt is halfway from when the current certificate arrived to its expiry. Counting
// from NotBefore instead would renew early by half the CA's backdating (5 minutes), and
// at once for certificates of a few seconds, whose NotAfter X.509 also truncates to the
// second.
func (m *Manager) renewAt() time.Time {
	cur := m.cur.Load()
	return cur.Obtained.Add(cur.Leaf.NotAfter.Sub(cur.Obtained) / 2)
}

// renew makes a fresh key, asks for a certificate and publishes it.
func (m *Manager) renew(ctx context.Context) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generating a key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return fmt.Errorf("building the CSR: %w", err)
	}
	rctx, cancel := context.WithTimeout(ctx, m.opts.RequestTimeout)
	defer cancel()
	resp, err := m.opts.Signer.Sign(rctx, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), m.opts.TTL)
	if err != nil {
		return err
	}
	now := m.opts.Clock.Now()
	svid, err := newSVID([]byte(resp.CertChain), []byte(resp.TrustBundle), key, now)
	if err != nil {
		return fmt.Errorf("the control plane's answer: %w", err)
	}
	svid.Obtained = now
	if svid.Mode, err = contract.ParseMTLSMode(resp.MTLSMode); err != nil {
		return fmt.Errorf("the control plane's answer: %w", err)
	}
	m.cur.Store(svid)
	m.mu.Lock()
	m.lastErr = nil
	close(m.renewed)
	m.renewed = make(chan struct{})
	m.mu.Unlock()
	m.opts.Log.Info("workload certificate", "id", svid.ID.String(), "notAfter", svid.Leaf.NotAfter, "serial", svid.Leaf.SerialNumber.Text(16))
	return nil
}

// newSVID checks what the CA sent: the leaf is for key, carries one SPIFFE ID, and chains
// to the bundle at now. A broken answer never replaces a working certificate.
func newSVID(chainPEM, bundlePEM []byte, key *ecdsa.PrivateKey, now time.Time) (*SVID, error) {
	var chain [][]byte
	for rest := chainPEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			chain = append(chain, b.Bytes)
		}
	}
	if len(chain) == 0 {
		return nil, errors.New("no certificate in the chain")
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, fmt.Errorf("leaf: %w", err)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return nil, errors.New("the certificate is not for the key the CSR carried")
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundlePEM) {
		return nil, errors.New("no certificate in the trust bundle")
	}
	id, err := verifyChain(chain, roots, now)
	if err != nil {
		return nil, err
	}
	return &SVID{Cert: &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, Leaf: leaf, ID: id, Roots: roots, Bundle: bundlePEM}, nil
}

// verifyChain verifies a peer's (or our own) chain against roots and returns its one
// SPIFFE ID. The usual host-name checks do not apply: the SPIFFE ID is the identity.
func verifyChain(chain [][]byte, roots *x509.CertPool, now time.Time) (contract.SPIFFEID, error) {
	if len(chain) == 0 {
		return contract.SPIFFEID{}, errors.New("no certificate")
	}
	certs := make([]*x509.Certificate, len(chain))
	for i, der := range chain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return contract.SPIFFEID{}, fmt.Errorf("certificate %d: %w", i, err)
		}
		certs[i] = c
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return contract.SPIFFEID{}, fmt.Errorf("certificate does not verify against the mesh trust bundle: %w", err)
	}
	if len(certs[0].URIs) != 1 {
		return contract.SPIFFEID{}, fmt.Errorf("certificate has %d URI SANs, want one SPIFFE ID", len(certs[0].URIs))
	}
	return contract.ParseSPIFFEID(certs[0].URIs[0])
}
