package ca_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/ca"
)

var t0 = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)

func newCA(t *testing.T, opts ca.Options) *ca.CA {
	t.Helper()
	r, err := ca.NewRoot(t0, "cluster.local", 365*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca.New(opts, []*ca.Root{r})
}

// csr builds a CSR for key that claims whatever the attacker likes.
func csr(t *testing.T, key crypto.Signer, uris ...string) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: "admin"}, DNSNames: []string{"kubernetes.default.svc"}}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func ecKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pool(t *testing.T, bundle []byte) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(bundle) {
		t.Fatalf("bundle does not parse: %q", bundle)
	}
	return p
}

// The SVID: the URI SAN from the verified workload only (the CSR's forged URI, DNS name and
// subject are dropped), a leaf for both TLS sides, the requested lifetime, the CSR's key,
// chaining to the bundle.
func TestSignSVIDContents(t *testing.T) {
	c := newCA(t, ca.Options{})
	key := ecKey(t)
	iss, err := c.Sign(csr(t, key, "spiffe://cluster.local/ns/kube-system/sa/admin"), ca.Workload{Namespace: "shop", ServiceAccount: "web"}, 0, t0)
	if err != nil {
		t.Fatal(err)
	}
	cert := iss.Cert
	if len(cert.URIs) != 1 || cert.URIs[0].String() != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Errorf("URIs = %v, want only spiffe://cluster.local/ns/shop/sa/web", cert.URIs)
	}
	if len(cert.DNSNames) != 0 || cert.Subject.CommonName != "" || len(cert.IPAddresses) != 0 || len(cert.EmailAddresses) != 0 {
		t.Errorf("the CSR's claims leaked into the certificate: DNS %v CN %q IP %v email %v", cert.DNSNames, cert.Subject.CommonName, cert.IPAddresses, cert.EmailAddresses)
	}
	if cert.IsCA || !cert.BasicConstraintsValid {
		t.Errorf("IsCA=%v BasicConstraintsValid=%v: a workload certificate must be a leaf", cert.IsCA, cert.BasicConstraintsValid)
	}
	if cert.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("KeyUsage = %b, want digitalSignature only for an ECDSA key", cert.KeyUsage)
	}
	if len(cert.ExtKeyUsage) != 2 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || cert.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
		t.Errorf("ExtKeyUsage = %v, want serverAuth, clientAuth", cert.ExtKeyUsage)
	}
	if got := cert.NotAfter.Sub(t0); got != 24*time.Hour {
		t.Errorf("lifetime from now = %v, want the 24h default", got)
	}
	if !cert.NotBefore.Before(t0) {
		t.Errorf("NotBefore %v is not backdated for clock skew", cert.NotBefore)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		t.Error("the certificate is not for the CSR's key")
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool(t, iss.BundlePEM), CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the SVID does not verify against the bundle: %v", err)
	}
	if blk, _ := pem.Decode(iss.ChainPEM); blk == nil || string(blk.Bytes) != string(cert.Raw) {
		t.Error("ChainPEM is not the certificate")
	}
}

func TestSignLifetime(t *testing.T) {
	c := newCA(t, ca.Options{DefaultTTL: time.Hour, MaxTTL: 2 * time.Hour})
	for _, tc := range []struct {
		ask, want time.Duration
	}{{0, time.Hour}, {30 * time.Minute, 30 * time.Minute}, {48 * time.Hour, 2 * time.Hour}, {time.Second, ca.MinTTL}} {
		iss, err := c.Sign(csr(t, ecKey(t)), ca.Workload{Namespace: "a", ServiceAccount: "b"}, tc.ask, t0)
		if err != nil {
			t.Fatal(err)
		}
		if got := iss.Cert.NotAfter.Sub(t0); got != tc.want {
			t.Errorf("asked %v: lifetime %v, want %v", tc.ask, got, tc.want)
		}
	}
	// Never past the root's own expiry.
	r, _ := ca.NewRoot(t0, "cluster.local", time.Hour)
	short := ca.New(ca.Options{}, []*ca.Root{r})
	iss, err := short.Sign(csr(t, ecKey(t)), ca.Workload{Namespace: "a", ServiceAccount: "b"}, 0, t0)
	if err != nil {
		t.Fatal(err)
	}
	if iss.Cert.NotAfter.After(r.Cert.NotAfter) {
		t.Errorf("NotAfter %v outlives the root (%v)", iss.Cert.NotAfter, r.Cert.NotAfter)
	}
}

// Forged, malformed and weak requests are refused with ErrBadCSR.
func TestSignRefusesBadCSRs(t *testing.T) {
	c := newCA(t, ca.Options{})
	w := ca.Workload{Namespace: "a", ServiceAccount: "b"}
	good := csr(t, ecKey(t))
	blk, _ := pem.Decode(good)
	tampered := append([]byte(nil), blk.Bytes...)
	tampered[len(tampered)-5] ^= 0xff // the signature no longer verifies
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	for name, in := range map[string][]byte{
		"empty":         nil,
		"not PEM":       []byte("hello"),
		"a certificate": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: blk.Bytes}),
		"garbage DER":   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{0x30, 0x03, 1, 2, 3}}),
		"bad signature": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tampered}),
		"RSA 1024":      csr(t, weak),
		"P-224":         csr(t, p224),
		"oversized":     append(good, make([]byte, 9000)...),
	} {
		if _, err := c.Sign(in, w, 0, t0); !errors.Is(err, ca.ErrBadCSR) {
			t.Errorf("%s: err = %v, want ErrBadCSR", name, err)
		}
	}
	if _, err := c.Sign(good, ca.Workload{Namespace: "a"}, 0, t0); !errors.Is(err, ca.ErrBadCSR) {
		t.Errorf("no ServiceAccount: err = %v, want ErrBadCSR", err)
	}
	if _, err := ca.New(ca.Options{}, nil).Sign(good, w, 0, t0); !errors.Is(err, ca.ErrNoRoot) {
		t.Errorf("no root: err = %v, want ErrNoRoot", err)
	}
}

// Rotation: Plan adds a root when the newest expires within RotateBefore; the new root is
// in the bundle at once but signs only after Overlap; certificates of both roots verify
// against the bundle during the overlap; the old root leaves the bundle once the last
// certificate it signed has expired (activation + MaxTTL).
func TestRotationBundleOverlap(t *testing.T) {
	opts := ca.Options{DefaultTTL: time.Hour, MaxTTL: 2 * time.Hour, Overlap: 4 * time.Hour, RootValidity: 100 * time.Hour, RotateBefore: 20 * time.Hour}
	old, err := ca.NewRoot(t0, "cluster.local", opts.RootValidity)
	if err != nil {
		t.Fatal(err)
	}
	if keep, rotate := ca.Plan([]*ca.Root{old}, t0.Add(79*time.Hour), opts); rotate || len(keep) != 1 {
		t.Fatalf("at 79h of 100h: rotate=%v keep=%d, want no rotation yet", rotate, len(keep))
	}
	tr := t0.Add(81 * time.Hour)
	keep, rotate := ca.Plan([]*ca.Root{old}, tr, opts)
	if !rotate || len(keep) != 1 {
		t.Fatalf("at 81h of 100h: rotate=%v keep=%d, want a rotation keeping the old root", rotate, len(keep))
	}
	nr, err := ca.NewRoot(tr, "cluster.local", opts.RootValidity)
	if err != nil {
		t.Fatal(err)
	}
	c := ca.New(opts, append(keep, nr))
	w := ca.Workload{Namespace: "a", ServiceAccount: "b"}
	sign := func(at time.Time) *ca.Issued {
		t.Helper()
		iss, err := c.Sign(csr(t, ecKey(t)), w, 2*time.Hour, at)
		if err != nil {
			t.Fatal(err)
		}
		return iss
	}
	during := sign(tr.Add(3 * time.Hour))
	if !issuedBy(during, old) {
		t.Error("during the overlap the new root already signs: peers holding the old bundle would refuse it")
	}
	if n := strings.Count(string(during.BundlePEM), "BEGIN CERTIFICATE"); n != 2 {
		t.Errorf("bundle during the overlap has %d roots, want old + new", n)
	}
	after := sign(tr.Add(4*time.Hour + 10*time.Minute))
	if !issuedBy(after, nr) {
		t.Error("after the overlap the old root still signs")
	}
	// A peer renewed during the overlap holds during.BundlePEM: it trusts after's cert, and
	// after's bundle trusts during's cert.
	at := tr.Add(4*time.Hour + 30*time.Minute)
	if _, err := after.Cert.Verify(x509.VerifyOptions{Roots: pool(t, during.BundlePEM), CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("new-root certificate vs the overlap bundle: %v", err)
	}
	if _, err := during.Cert.Verify(x509.VerifyOptions{Roots: pool(t, after.BundlePEM), CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("old-root certificate vs the new bundle: %v", err)
	}
	// Retirement: activation (tr+4h) + MaxTTL 2h, when during's certificate has expired.
	if n := strings.Count(string(c.Bundle(tr.Add(6*time.Hour-time.Minute))), "BEGIN CERTIFICATE"); n != 2 {
		t.Errorf("at activation+MaxTTL-1m: %d roots, want the old one still trusted", n)
	}
	if n := strings.Count(string(c.Bundle(tr.Add(6*time.Hour))), "BEGIN CERTIFICATE"); n != 1 {
		t.Errorf("after activation+MaxTTL: %d roots, want the old one retired", n)
	}
	keep, rotate = ca.Plan(c.Roots(), tr.Add(7*time.Hour), opts)
	if rotate || len(keep) != 1 || keep[0] != nr {
		t.Errorf("Plan after retirement keeps %d roots (rotate=%v), want only the new one", len(keep), rotate)
	}
}

func issuedBy(iss *ca.Issued, r *ca.Root) bool { return iss.Cert.CheckSignatureFrom(r.Cert) == nil }

// The Secret's encoding round-trips and refuses a key of another certificate.
func TestRootsEncoding(t *testing.T) {
	a, _ := ca.NewRoot(t0, "cluster.local", time.Hour)
	b, _ := ca.NewRoot(t0.Add(time.Minute), "cluster.local", time.Hour)
	data, err := ca.EncodeRoots([]*ca.Root{b, a})
	if err != nil {
		t.Fatal(err)
	}
	got, err := ca.DecodeRoots(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got[0].Cert.Equal(a.Cert) || !got[1].Cert.Equal(b.Cert) {
		t.Errorf("decoded %d roots, want a then b", len(got))
	}
	ka, _ := x509.MarshalPKCS8PrivateKey(a.Key)
	mixed := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: b.Cert.Raw}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ka})...)
	if _, err := ca.DecodeRoots(mixed); err == nil {
		t.Error("a root whose key belongs to another certificate was accepted")
	}
}
