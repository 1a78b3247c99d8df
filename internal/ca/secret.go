package ca

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Keys of the CA Secret (default weft-system/weft-ca).
const (
	// KeyRoots holds every root with its key: PEM CERTIFICATE then PRIVATE KEY (PKCS #8),
	// per root, oldest first. It is the only private part.
	KeyRoots = "roots.pem"
	// KeyBundle is the trust bundle when the Secret was written (public, for humans and
	// tools; the manager recomputes it from KeyRoots).
	KeyBundle = "ca.crt"
)

// EncodeRoots writes roots as KeyRoots holds them.
func EncodeRoots(roots []*Root) ([]byte, error) {
	var out []byte
	for _, r := range roots {
		key, err := x509.MarshalPKCS8PrivateKey(r.Key)
		if err != nil {
			return nil, fmt.Errorf("encoding the key of root %s: %w", r.Cert.SerialNumber, err)
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Cert.Raw})...)
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key})...)
	}
	return out, nil
}

// DecodeRoots reads KeyRoots, checking that each key belongs to its certificate.
func DecodeRoots(data []byte) ([]*Root, error) {
	var roots []*Root
	for n := 1; ; n++ {
		var cb, kb *pem.Block
		cb, data = pem.Decode(data)
		if cb == nil {
			break
		}
		kb, data = pem.Decode(data)
		if cb.Type != "CERTIFICATE" || kb == nil || kb.Type != "PRIVATE KEY" {
			return nil, fmt.Errorf("root %d: want a CERTIFICATE block followed by a PRIVATE KEY block", n)
		}
		cert, err := x509.ParseCertificate(cb.Bytes)
		if err != nil {
			return nil, fmt.Errorf("root %d: %w", n, err)
		}
		k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
		if err != nil {
			return nil, fmt.Errorf("root %d key: %w", n, err)
		}
		signer, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("root %d key: %T cannot sign", n, k)
		}
		pub, ok := signer.Public().(interface{ Equal(crypto.PublicKey) bool })
		if !ok || !pub.Equal(cert.PublicKey) {
			return nil, fmt.Errorf("root %d: the key does not belong to the certificate", n)
		}
		if !cert.IsCA {
			return nil, fmt.Errorf("root %d: not a CA certificate", n)
		}
		roots = append(roots, &Root{Cert: cert, Key: signer})
	}
	sortRoots(roots)
	return roots, nil
}

// Store keeps the CA's roots in a Secret and rotates them. Every manager replica runs one:
// each reads the Secret, applies Plan, and writes only when the roots change, so replicas
// converge on whichever write won (a conflict means: read again).
type Store struct {
	Client client.Client
	Key    types.NamespacedName
	CA     *CA
	Clock  clock.WithTicker
	Log    logr.Logger
	// Interval between checks (default 10 minutes; a rotation needs far less precision:
	// RotateBefore is years by default).
	Interval time.Duration
}

// Sync reads the Secret, creates it (with a first root) when missing, rotates when Plan
// says so, and hands the resulting roots to the CA.
func (s *Store) Sync(ctx context.Context) error {
	opts := s.CA.Options()
	for range 3 {
		now := s.Clock.Now()
		sec := &corev1.Secret{}
		err := s.Client.Get(ctx, s.Key, sec)
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("reading the mesh CA Secret %s: %w", s.Key, err)
		}
		var roots []*Root
		if err == nil {
			if roots, err = DecodeRoots(sec.Data[KeyRoots]); err != nil {
				// Never overwrite a Secret someone else may have put there on purpose.
				return fmt.Errorf("mesh CA Secret %s, key %s: %w; fix or delete the Secret", s.Key, KeyRoots, err)
			}
		} else {
			sec = nil
		}
		keep, rotate := Plan(roots, now, opts)
		if rotate {
			r, err := NewRoot(now, opts.TrustDomain, opts.RootValidity)
			if err != nil {
				return err
			}
			keep = append(keep, r)
		}
		if sec != nil && len(keep) == len(roots) && !rotate {
			s.CA.SetRoots(keep)
			return nil
		}
		data, err := EncodeRoots(keep)
		if err != nil {
			return err
		}
		s.CA.SetRoots(keep) // so Bundle below is the new one
		fields := map[string][]byte{KeyRoots: data, KeyBundle: s.CA.Bundle(now)}
		if sec == nil {
			sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: s.Key.Name, Namespace: s.Key.Namespace,
				Labels: map[string]string{"app.kubernetes.io/managed-by": "weft-manager"}},
				Type: corev1.SecretTypeOpaque, Data: fields}
			err = s.Client.Create(ctx, sec)
		} else {
			sec.Data = fields
			err = s.Client.Update(ctx, sec)
		}
		switch {
		case err == nil:
			s.Log.Info("mesh CA roots written", "secret", s.Key.String(), "roots", len(keep), "rotated", rotate)
			return nil
		case apierrors.IsAlreadyExists(err) || apierrors.IsConflict(err):
			continue // another replica wrote first: read theirs
		default:
			return fmt.Errorf("writing the mesh CA Secret %s: %w", s.Key, err)
		}
	}
	return errors.New("writing the mesh CA Secret " + s.Key.String() + ": kept losing races with other writers; restart the manager")
}

// Start re-syncs every Interval until ctx ends (a manager Runnable).
func (s *Store) Start(ctx context.Context) error {
	iv := s.Interval
	if iv <= 0 {
		iv = 10 * time.Minute
	}
	t := s.Clock.NewTicker(iv)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
			if err := s.Sync(ctx); err != nil {
				s.Log.Error(err, "mesh CA sync failed; signing with the roots already loaded")
			}
		}
	}
}

// NeedLeaderElection is false: every replica serves certificates, so each keeps its roots
// current.
func (s *Store) NeedLeaderElection() bool { return false }
