// Package ca is the mesh's workload certificate authority: it takes self-signed roots (kept
// in a Secret, secret.go) and a workload's verified namespace and ServiceAccount, and produces
// X.509-SVIDs for CSRs whose key the workload keeps in memory (docs/mtls.md).
//
// Rotation with overlap. The CA holds a list of roots. A new root is added to the trust
// bundle Overlap before it signs anything: every sidecar renews within half a certificate
// lifetime and each renewal brings the current bundle, so by the time certificates signed
// by the new root appear, every peer already trusts it. The old root stays in the bundle
// until the last certificate it signed has expired (the new root's activation + MaxTTL),
// or until it expires itself. Which root signs and which roots are trusted are functions of
// the roots' own dates and now, so every manager replica reading the same Secret agrees.
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"slices"
	"sync"
	"time"

	"github.com/weftmesh/weft/contract"
)

// Defaults of Options.
const (
	DefaultRootValidity = 10 * 365 * 24 * time.Hour // Istio's self-signed root: 10 years
	DefaultTTL          = contract.DefaultSVIDTTLSeconds * time.Second
	DefaultMaxTTL       = 7 * 24 * time.Hour
	// MinTTL is the shortest certificate issued; a smaller request gets it.
	MinTTL = 10 * time.Second
	// backdate moves NotBefore back to tolerate clock skew between nodes.
	backdate = 5 * time.Minute
)

// Options configure a CA.
type Options struct {
	// TrustDomain of the SPIFFE IDs (default contract.DefaultTrustDomain).
	TrustDomain string
	// RootValidity is the lifetime of a new root (default 10 years).
	RootValidity time.Duration
	// DefaultTTL is the lifetime of a certificate when the request names none (24 h);
	// MaxTTL caps what a request may ask for (7 days).
	DefaultTTL, MaxTTL time.Duration
	// Overlap is how long a new root is trusted before it signs (default 2 × DefaultTTL:
	// every sidecar has renewed at least twice, at half life, in that time).
	Overlap time.Duration
	// RotateBefore starts a rotation when the signing root has less than this left
	// (default a fifth of RootValidity, which must exceed Overlap + MaxTTL).
	RotateBefore time.Duration
}

func (o Options) withDefaults() Options {
	if o.TrustDomain == "" {
		o.TrustDomain = contract.DefaultTrustDomain
	}
	if o.RootValidity <= 0 {
		o.RootValidity = DefaultRootValidity
	}
	if o.DefaultTTL <= 0 {
		o.DefaultTTL = DefaultTTL
	}
	if o.MaxTTL <= 0 {
		o.MaxTTL = DefaultMaxTTL
	}
	if o.DefaultTTL > o.MaxTTL {
		o.MaxTTL = o.DefaultTTL
	}
	if o.Overlap <= 0 {
		o.Overlap = 2 * o.DefaultTTL
	}
	if o.RotateBefore <= 0 {
		o.RotateBefore = o.RootValidity / 5
	}
	return o
}

// Root is one self-signed root and its key.
type Root struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// ActiveAt is when the root starts signing: its creation plus overlap (the very first root
// of a CA signs at once, see signing).
func (r *Root) ActiveAt(overlap time.Duration) time.Time {
	return r.Cert.NotBefore.Add(backdate + overlap)
}

// NewRoot makes a self-signed root for trustDomain valid from now for validity.
func NewRoot(now time.Time, trustDomain string, validity time.Duration) (*Root, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating the mesh CA key: %w", err)
	}
	sn, err := serialNumber()
	if err != nil {
		return nil, err
	}
	td := &url.URL{Scheme: "spiffe", Host: trustDomain}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{Organization: []string{"weft"}, CommonName: "weft mesh CA " + trustDomain},
		NotBefore:    now.Add(-backdate), NotAfter: now.Add(validity),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		URIs:     []*url.URL{td},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("signing the mesh CA root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &Root{Cert: cert, Key: key}, nil
}

func serialNumber() (*big.Int, error) {
	sn, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generating a serial number: %w", err)
	}
	return sn.Add(sn, big.NewInt(1)), nil
}

// CA signs workload certificates with its current roots. It is safe for concurrent use;
// SetRoots swaps the roots (the keeper does after a rotation or another replica's write).
type CA struct {
	opts  Options
	mu    sync.RWMutex
	roots []*Root // sorted by NotBefore, oldest first
}

// New returns a CA over roots.
func New(opts Options, roots []*Root) *CA {
	c := &CA{opts: opts.withDefaults()}
	c.SetRoots(roots)
	return c
}

// Options are the CA's options with defaults filled in.
func (c *CA) Options() Options { return c.opts }

// SetRoots replaces the roots.
func (c *CA) SetRoots(roots []*Root) {
	roots = slices.Clone(roots)
	sortRoots(roots)
	c.mu.Lock()
	c.roots = roots
	c.mu.Unlock()
}

// Roots returns the roots, oldest first.
func (c *CA) Roots() []*Root {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return slices.Clone(c.roots)
}

func sortRoots(roots []*Root) {
	slices.SortStableFunc(roots, func(a, b *Root) int { return a.Cert.NotBefore.Compare(b.Cert.NotBefore) })
}

// signing picks the root that signs at now: the newest one past its overlap; when none
// is (a fresh CA), the oldest one still valid.
func signing(roots []*Root, now time.Time, overlap time.Duration) *Root {
	var pick *Root
	for _, r := range roots {
		if !now.Before(r.Cert.NotAfter) {
			continue
		}
		if pick == nil || !now.Before(r.ActiveAt(overlap)) {
			pick = r
		}
	}
	return pick
}

// trusted lists the roots peers verify with at now: every root not expired and not
// retired. A root retires when a newer one has signed for longer than maxTTL, since every
// certificate it signed has expired by then.
func trusted(roots []*Root, now time.Time, overlap, maxTTL time.Duration) []*Root {
	var out []*Root
	for i, r := range roots {
		if !now.Before(r.Cert.NotAfter) {
			continue
		}
		retired := false
		for _, newer := range roots[i+1:] {
			if newer.Cert.NotBefore.After(r.Cert.NotBefore) && !now.Before(newer.ActiveAt(overlap).Add(maxTTL)) {
				retired = true
				break
			}
		}
		if !retired {
			out = append(out, r)
		}
	}
	return out
}

// Bundle is the trust bundle at now, PEM, oldest root first.
func (c *CA) Bundle(now time.Time) []byte {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var b []byte
	for _, r := range trusted(c.roots, now, c.opts.Overlap, c.opts.MaxTTL) {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Cert.Raw})...)
	}
	return b
}

// Plan is the pure rotation step: the roots to keep at now (expired and retired ones
// dropped) and whether a new root must be added because none is valid or the newest one
// expires within RotateBefore.
func Plan(roots []*Root, now time.Time, opts Options) (keep []*Root, rotate bool) {
	opts = opts.withDefaults()
	keep = trusted(roots, now, opts.Overlap, opts.MaxTTL)
	if len(keep) == 0 {
		return keep, true
	}
	newest := keep[len(keep)-1]
	return keep, newest.Cert.NotAfter.Sub(now) < opts.RotateBefore
}

// Errors a CSR is refused with; the certificate service answers InvalidArgument.
var (
	ErrBadCSR = errors.New("bad certificate signing request")
	ErrNoRoot = errors.New("the mesh CA has no valid root")
)

// Workload is the verified identity a certificate is issued to: it comes from the
// caller's verified ServiceAccount token, never from the CSR.
type Workload struct {
	Namespace, ServiceAccount string
}

// Issued is a signed certificate with what peers verify it with.
type Issued struct {
	Cert *x509.Certificate
	// ChainPEM is the leaf (no intermediates); BundlePEM the trust bundle.
	ChainPEM, BundlePEM []byte
}

// Sign issues an X.509-SVID for the key of csrPEM to w, valid for ttl (0: DefaultTTL;
// capped at MaxTTL and at the signing root's expiry). The CSR's signature must verify
// (proof that the caller holds the key); its subject, SANs and extensions are ignored.
func (c *CA) Sign(csrPEM []byte, w Workload, ttl time.Duration, now time.Time) (*Issued, error) {
	if w.Namespace == "" || w.ServiceAccount == "" {
		return nil, fmt.Errorf("%w: no verified namespace and ServiceAccount", ErrBadCSR)
	}
	csr, err := parseCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	switch ttl = min(ttl, c.opts.MaxTTL); {
	case ttl <= 0:
		ttl = c.opts.DefaultTTL
	case ttl < MinTTL:
		ttl = MinTTL
	}
	c.mu.RLock()
	root := signing(c.roots, now, c.opts.Overlap)
	roots := c.roots
	c.mu.RUnlock()
	if root == nil {
		return nil, ErrNoRoot
	}
	notAfter := now.Add(ttl)
	if notAfter.After(root.Cert.NotAfter) {
		notAfter = root.Cert.NotAfter
	}
	sn, err := serialNumber()
	if err != nil {
		return nil, err
	}
	ku := x509.KeyUsageDigitalSignature
	if _, ok := csr.PublicKey.(*rsa.PublicKey); ok {
		ku |= x509.KeyUsageKeyEncipherment
	}
	id := contract.SPIFFEID{TrustDomain: c.opts.TrustDomain, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount}
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		// The subject stays empty, as SPIFFE recommends: the URI SAN is the identity (Go
		// then marks the SAN extension critical).
		NotBefore: now.Add(-backdate), NotAfter: notAfter,
		KeyUsage:              ku,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{id.URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.Cert, csr.PublicKey, root.Key)
	if err != nil {
		return nil, fmt.Errorf("signing the certificate of %s: %w", id, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	var bundle []byte
	for _, r := range trusted(roots, now, c.opts.Overlap, c.opts.MaxTTL) {
		bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Cert.Raw})...)
	}
	return &Issued{Cert: cert, ChainPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), BundlePEM: bundle}, nil
}

// parseCSR reads one PEM CSR, checks its self-signature and that its key is one a
// sidecar would make (ECDSA P-256/P-384, RSA of 2048 bits or more, Ed25519).
func parseCSR(csrPEM []byte) (*x509.CertificateRequest, error) {
	if len(csrPEM) > contract.MaxCSRBytes {
		return nil, fmt.Errorf("%w: %d bytes, more than the %d allowed", ErrBadCSR, len(csrPEM), contract.MaxCSRBytes)
	}
	blk, _ := pem.Decode(csrPEM)
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("%w: not a PEM CERTIFICATE REQUEST", ErrBadCSR)
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: its signature does not verify (the request must be signed by the key it carries): %w", ErrBadCSR, err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("%w: ECDSA curve %s; use P-256 or P-384", ErrBadCSR, k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("%w: RSA key of %d bits; use 2048 or more", ErrBadCSR, k.N.BitLen())
		}
	case ed25519.PublicKey:
	default:
		return nil, fmt.Errorf("%w: key type %T; use ECDSA P-256", ErrBadCSR, k)
	}
	return csr, nil
}
