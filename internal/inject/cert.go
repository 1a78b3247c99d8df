package inject

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Validity of the self-managed certificates, and how early they are renewed.
const (
	caValidity      = 10 * 365 * 24 * time.Hour
	servingValidity = 365 * 24 * time.Hour
	renewBefore     = 30 * 24 * time.Hour
)

// Keys of the certificate Secret.
const (
	keyCACert = "ca.crt"
	keyCert   = corev1.TLSCertKey
	keyKey    = corev1.TLSPrivateKeyKey
)

// Bundle is the webhook's CA and serving certificate, PEM-encoded. The CA's key is not kept:
// renewal makes a new CA, and the caBundle keeper publishes it.
type Bundle struct {
	CACert, Cert, Key []byte
}

// Generate makes a fresh CA and a serving certificate for hosts (DNS names or IPs), valid
// from now.
func Generate(now time.Time, hosts []string) (*Bundle, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating webhook CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: serial(now), Subject: pkix.Name{CommonName: "weft-webhook-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(caValidity),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("signing webhook CA: %w", err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating webhook serving key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(now.Add(time.Nanosecond)), Subject: pkix.Name{CommonName: hosts[0]},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(servingValidity),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("signing webhook serving certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding webhook serving key: %w", err)
	}
	return &Bundle{
		CACert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		Cert:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		Key:    pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

func serial(now time.Time) *big.Int { return big.NewInt(now.UnixNano()) }

// Usable reports why b cannot serve hosts at now (nil if it can): it must parse, chain to
// its CA, cover every host and not expire within the renewal margin.
func (b *Bundle) Usable(now time.Time, hosts []string) error {
	pair, err := tls.X509KeyPair(b.Cert, b.Key)
	if err != nil {
		return fmt.Errorf("key pair does not parse: %w", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return fmt.Errorf("certificate does not parse: %w", err)
	}
	if now.Add(renewBefore).After(leaf.NotAfter) {
		return fmt.Errorf("certificate expires at %s", leaf.NotAfter.Format(time.RFC3339))
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b.CACert) {
		return errors.New("CA certificate does not parse")
	}
	for _, h := range hosts {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: h, Roots: pool, CurrentTime: now}); err != nil {
			return fmt.Errorf("certificate does not serve %s: %w", h, err)
		}
	}
	return nil
}

// TLSCertificate is b's serving pair for a tls.Config.
func (b *Bundle) TLSCertificate() (*tls.Certificate, error) {
	pair, err := tls.X509KeyPair(b.Cert, b.Key)
	if err != nil {
		return nil, fmt.Errorf("loading webhook serving certificate: %w", err)
	}
	return &pair, nil
}

// EnsureSecret returns the bundle stored in Secret key, replacing it with a fresh one when it
// is missing, unusable for hosts or close to expiry. Storing it (rather than generating one
// per process) lets every manager replica serve the same CA the caBundle names; a create race
// between replicas is settled by reading the winner's Secret.
func EnsureSecret(ctx context.Context, c client.Client, key types.NamespacedName, hosts []string, now time.Time) (*Bundle, error) {
	for range 3 {
		sec := &corev1.Secret{}
		err := c.Get(ctx, key, sec)
		if err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("reading webhook certificate Secret %s: %w", key, err)
		}
		if err == nil {
			b := &Bundle{CACert: sec.Data[keyCACert], Cert: sec.Data[keyCert], Key: sec.Data[keyKey]}
			if b.Usable(now, hosts) == nil {
				return b, nil
			}
		}
		b, gerr := Generate(now, hosts)
		if gerr != nil {
			return nil, gerr
		}
		data := map[string][]byte{keyCACert: b.CACert, keyCert: b.Cert, keyKey: b.Key}
		if apierrors.IsNotFound(err) {
			sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: key.Namespace,
				Labels: map[string]string{"app.kubernetes.io/managed-by": "weft-manager"}},
				Type: corev1.SecretTypeTLS, Data: data}
			err = c.Create(ctx, sec)
		} else {
			sec.Type, sec.Data = corev1.SecretTypeTLS, data
			err = c.Update(ctx, sec)
		}
		switch {
		case err == nil:
			return b, nil
		case apierrors.IsAlreadyExists(err) || apierrors.IsConflict(err):
			continue // another replica wrote it first: use theirs
		default:
			return nil, fmt.Errorf("storing webhook certificate Secret %s: %w", key, err)
		}
	}
	return nil, fmt.Errorf("storing webhook certificate Secret %s: kept losing races with other writers; restart the manager", key)
}

// sameBundle reports whether a caBundle already names ca, so the keeper skips no-op writes.
func sameBundle(have, ca []byte) bool { return bytes.Equal(bytes.TrimSpace(have), bytes.TrimSpace(ca)) }
