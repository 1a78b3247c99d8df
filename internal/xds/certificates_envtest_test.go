package xds_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/ca"
	"github.com/weftmesh/weft/internal/xds"
	"github.com/weftmesh/weft/sidecar/identity"
	"github.com/weftmesh/weft/sidecar/xdsclient"
)

// signCSR asks the certificate service for a certificate of a fresh key whose CSR claims
// claimURI, with the token tok.
func signCSR(t *testing.T, conn *grpc.ClientConn, tok, claimURI string) (*x509.Certificate, *contract.SignResponse, error) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: "x"}}
	if claimURI != "" {
		u, err := url.Parse(claimURI)
		must(t, err)
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	must(t, err)
	in := &contract.SignRequest{CSR: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), TTLSeconds: 600}
	out := &contract.SignResponse{}
	ctx, cancel := context.WithTimeout(withToken(context.Background(), tok), 10*time.Second)
	defer cancel()
	if err := conn.Invoke(ctx, contract.SignMethod, in, out, grpc.CallContentSubtype(contract.SignalCodecName)); err != nil {
		return nil, nil, err
	}
	blk, _ := pem.Decode([]byte(out.CertChain))
	if blk == nil {
		t.Fatalf("certChain %q is not PEM", out.CertChain)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	must(t, err)
	return cert, out, nil
}

// The certificate service over the real authenticated port: the SVID names the verified
// token's ServiceAccount whatever the CSR claims, so a pod of another ServiceAccount cannot
// get this one's certificate; no token, no certificate.
func TestCertificateServiceIssuesTheTokensIdentity(t *testing.T) {
	c, cs := apiServer(t)
	root, err := ca.NewRoot(time.Now(), contract.DefaultTrustDomain, time.Hour*24)
	must(t, err)
	authority := ca.New(ca.Options{}, []*ca.Root{root})
	s := startSecure(t, c, meshInput(t), func(r grpc.ServiceRegistrar) {
		xds.RegisterCertificateServer(r, authority, xds.CertificateOptions{NamespaceLabels: nsLabels(c)})
	})
	conn := s.dial(t)
	web := meshedPod(t, c, "web-5", "web", map[string]string{"app": "web"}, 0)
	other := meshedPod(t, c, "other-5", "other", map[string]string{"app": "other"}, 0)
	webTok, otherTok := podToken(t, cs, web, contract.TokenAudience), podToken(t, cs, other, contract.TokenAudience)

	cert, resp, err := signCSR(t, conn, webTok, "spiffe://cluster.local/ns/zt/sa/web")
	if err != nil {
		t.Fatalf("web's own CSR: %v", err)
	}
	if got := cert.URIs[0].String(); got != "spiffe://cluster.local/ns/zt/sa/web" {
		t.Errorf("web got %s", got)
	}
	if got := time.Until(cert.NotAfter); got > 10*time.Minute || got < 9*time.Minute {
		t.Errorf("lifetime %v, want the 600 s asked for", got)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(resp.TrustBundle))
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("the SVID does not verify against the returned bundle: %v", err)
	}

	// A pod of ServiceAccount "other" forges web's SPIFFE ID in its CSR: it gets its own.
	cert, _, err = signCSR(t, conn, otherTok, "spiffe://cluster.local/ns/zt/sa/web")
	if err != nil {
		t.Fatalf("other's CSR: %v", err)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != "spiffe://cluster.local/ns/zt/sa/other" {
		t.Errorf("a CSR forging web's SAN with other's token got %v, want other's identity only", cert.URIs)
	}
	if resp.MTLSMode != contract.MTLSPermissive {
		t.Errorf("mode %q without labels, want permissive", resp.MTLSMode)
	}
	strict := meshedPod(t, c, "web-strict", "web", map[string]string{contract.LabelMTLS: "strict"}, 0)
	if _, r, err := signCSR(t, conn, podToken(t, cs, strict, contract.TokenAudience), ""); err != nil || r.MTLSMode != contract.MTLSStrict {
		t.Errorf("pod labelled strict: %v %+v", err, r)
	}
	bad := meshedPod(t, c, "web-bad", "web", map[string]string{contract.LabelMTLS: "off"}, 0)
	if _, _, err := signCSR(t, conn, podToken(t, cs, bad, contract.TokenAudience), ""); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "off") {
		t.Errorf("pod labelled off: %v, want FailedPrecondition naming the value", err)
	}
	if _, _, err := signCSR(t, conn, "", "spiffe://cluster.local/ns/zt/sa/web"); status.Code(err) != codes.Unauthenticated {
		t.Errorf("no token: %v, want Unauthenticated", err)
	}
	if _, _, err := signCSR(t, conn, podToken(t, cs, web, "api"), "spiffe://cluster.local/ns/zt/sa/web"); status.Code(err) != codes.Unauthenticated {
		t.Errorf("a token for another audience: %v, want Unauthenticated", err)
	}
}

// The sidecar's identity client (identity.GRPCSigner over xdsclient.Credentials, the
// files of the projected volume) gets its pod's SVID from the manager's CA.
func TestCertificateServiceSidecarClient(t *testing.T) {
	c, cs := apiServer(t)
	root, err := ca.NewRoot(time.Now(), contract.DefaultTrustDomain, time.Hour*24)
	must(t, err)
	authority := ca.New(ca.Options{}, []*ca.Root{root})
	s := startSecure(t, c, meshInput(t), func(r grpc.ServiceRegistrar) {
		xds.RegisterCertificateServer(r, authority, xds.CertificateOptions{NamespaceLabels: nsLabels(c)})
	})
	pod := meshedPod(t, c, "cache-6", "cache", map[string]string{"app": "cache"}, 0)
	dir := t.TempDir()
	caFile, tokFile := filepath.Join(dir, contract.CAFile), filepath.Join(dir, contract.TokenFile)
	must(t, os.WriteFile(caFile, s.ca, 0o600))
	must(t, os.WriteFile(tokFile, []byte(podToken(t, cs, pod, contract.TokenAudience)+"\n"), 0o600))
	dial, secure, err := xdsclient.Credentials(caFile, tokFile)
	must(t, err)
	if !secure {
		t.Fatal("credentials are not secure")
	}
	conn, err := grpc.NewClient(s.srv.Addr().String(), dial...)
	must(t, err)
	defer conn.Close()
	m := identity.New(identity.Options{Signer: identity.GRPCSigner{Conn: conn}, TTL: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go m.Run(ctx)
	select {
	case <-m.Renewed():
	case <-ctx.Done():
		_, note := m.Status()
		t.Fatalf("no certificate: %s", note)
	}
	got := m.Current()
	if want := (contract.SPIFFEID{TrustDomain: "cluster.local", Namespace: ztNS, ServiceAccount: "cache"}); got.ID != want {
		t.Errorf("ID %s, want %s", got.ID, want)
	}
	if d := time.Until(got.Leaf.NotAfter); d > time.Hour || d < 59*time.Minute {
		t.Errorf("lifetime %v, want the hour asked for", d)
	}
}

// nsLabels reads namespace labels as the manager does.
func nsLabels(c client.Client) xds.NamespaceLabels {
	return func(ctx context.Context, name string) (map[string]string, error) {
		ns := &corev1.Namespace{}
		if err := c.Get(ctx, client.ObjectKey{Name: name}, ns); err != nil {
			return nil, err
		}
		return ns.Labels, nil
	}
}

// A request the CA refuses for a verified pod (here: a weft.dev/mtls label that is not a
// mode) is recorded as a Warning event on that pod, so `kubectl describe pod` says why its
// sidecar has no certificate; a refused caller without a token names no pod and records
// nothing.
func TestCertificateRefusalIsAPodEvent(t *testing.T) {
	c, cs := apiServer(t)
	root, err := ca.NewRoot(time.Now(), contract.DefaultTrustDomain, time.Hour*24)
	must(t, err)
	broadcaster := events.NewBroadcaster(&events.EventSinkImpl{Interface: cs.EventsV1()})
	stop := make(chan struct{})
	defer close(stop)
	broadcaster.StartRecordingToSink(stop)
	defer broadcaster.Shutdown()
	rec := broadcaster.NewRecorder(clientgoscheme.Scheme, "weft-ca")
	s := startSecure(t, c, meshInput(t), func(r grpc.ServiceRegistrar) {
		xds.RegisterCertificateServer(r, ca.New(ca.Options{}, []*ca.Root{root}), xds.CertificateOptions{NamespaceLabels: nsLabels(c), Recorder: rec})
	})
	conn := s.dial(t)
	good := meshedPod(t, c, "ev-good", "web", map[string]string{"app": "web"}, 0)
	bad := meshedPod(t, c, "ev-bad", "web", map[string]string{contract.LabelMTLS: "sometimes"}, 0)
	if _, _, err := signCSR(t, conn, podToken(t, cs, good, contract.TokenAudience), ""); err != nil {
		t.Fatalf("a well-labelled pod: %v", err)
	}
	if _, _, err := signCSR(t, conn, podToken(t, cs, bad, contract.TokenAudience), ""); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("pod labelled sometimes: %v, want FailedPrecondition", err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		list, err := cs.EventsV1().Events(ztNS).List(context.Background(), metav1.ListOptions{})
		must(t, err)
		var forBad, forGood int
		for _, e := range list.Items {
			if e.Reason != xds.ReasonCertificateNotIssued {
				continue
			}
			switch e.Regarding.Name {
			case bad.Name:
				forBad++
				if e.Type != corev1.EventTypeWarning || e.Regarding.Kind != "Pod" || e.Regarding.UID != bad.UID || !strings.Contains(e.Note, "sometimes") {
					t.Fatalf("event %+v: want a Warning on the pod (with its uid) naming the bad value", e)
				}
			case good.Name:
				forGood++
			}
		}
		if forGood != 0 {
			t.Fatalf("a pod that got its certificate has %d CertificateNotIssued events", forGood)
		}
		if forBad > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no CertificateNotIssued event on the refused pod within 20 s")
		}
		time.Sleep(200 * time.Millisecond)
	}
}
