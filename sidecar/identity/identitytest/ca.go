// Package identitytest is a small in-process mesh CA for the sidecar's tests: it signs
// CSRs as the manager's CA does (one SPIFFE URI SAN, a leaf for both TLS sides), can add a
// root for a rotation and can be told to fail. The sidecar may not link the manager's CA
// (internal/ca); internal/xds's tests run the identity client against that one.
package identitytest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"sync"
	"time"

	"github.com/weftmesh/weft/contract"
)

type root struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// CA signs for one workload identity. Safe for concurrent use.
type CA struct {
	mu      sync.Mutex
	roots   []root // all are in the bundle
	signing int    // index of the root that signs
	id      contract.SPIFFEID
	fail    error
	mode    string
	signed  int
	lastTTL time.Duration
}

// New returns a CA with one root that issues certificates naming id.
func New(id contract.SPIFFEID) (*CA, error) {
	c := &CA{id: id}
	return c, c.AddRoot()
}

// AddRoot adds a root to the bundle; it signs only after Activate, as the manager's CA
// trusts a new root for an overlap before it signs with it.
func (c *CA) AddRoot() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(now.UnixNano()), Subject: pkix.Name{CommonName: "identitytest root"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	cert, _ := x509.ParseCertificate(der)
	c.mu.Lock()
	c.roots = append(c.roots, root{cert: cert, key: key})
	c.mu.Unlock()
	return nil
}

// Activate makes the newest root sign.
func (c *CA) Activate() {
	c.mu.Lock()
	c.signing = len(c.roots) - 1
	c.mu.Unlock()
}

// DropOldRoots keeps only the signing root in the bundle (the end of a rotation).
func (c *CA) DropOldRoots() {
	c.mu.Lock()
	c.roots = c.roots[c.signing : c.signing+1]
	c.signing = 0
	c.mu.Unlock()
}

// SetIdentity changes whom later certificates name.
func (c *CA) SetIdentity(id contract.SPIFFEID) {
	c.mu.Lock()
	c.id = id
	c.mu.Unlock()
}

// SetMode sets the peer authentication mode answers carry.
func (c *CA) SetMode(mode string) {
	c.mu.Lock()
	c.mode = mode
	c.mu.Unlock()
}

// Fail makes Sign fail with err (nil: succeed again).
func (c *CA) Fail(err error) {
	c.mu.Lock()
	c.fail = err
	c.mu.Unlock()
}

// Signed counts certificates issued; LastTTL is the lifetime last asked for.
func (c *CA) Signed() (int, time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.signed, c.lastTTL
}

// Sign implements identity.Signer: ttl 0 is 24 h.
func (c *CA) Sign(_ context.Context, csrPEM []byte, ttl time.Duration) (*contract.SignResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fail != nil {
		return nil, c.fail
	}
	blk, _ := pem.Decode(csrPEM)
	if blk == nil {
		return nil, errors.New("identitytest: not PEM")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, err
	}
	c.lastTTL = ttl
	if ttl <= 0 {
		ttl = 24 * time.Hour
	}
	r := c.roots[c.signing]
	now := time.Now()
	// X.509 times have whole seconds: NotAfter is rounded up, or a 1 s certificate could
	// expire a few milliseconds after it was issued (a CI failure).
	notAfter := now.Add(ttl)
	if t := notAfter.Truncate(time.Second); t.Before(notAfter) {
		notAfter = t.Add(time.Second)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(now.UnixNano()), NotBefore: now.Add(-time.Minute), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true, URIs: []*url.URL{c.id.URL()}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.cert, csr.PublicKey, r.key)
	if err != nil {
		return nil, err
	}
	c.signed++
	var bundle []byte
	for _, r := range c.roots {
		bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.cert.Raw})...)
	}
	return &contract.SignResponse{CertChain: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		TrustBundle: string(bundle), MTLSMode: c.mode}, nil
}
