package sandbox

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The API server's certificate must name every address a client dials: the bridge address
// (host processes), the kubernetes Service's ClusterIP and its DNS names (pods,
// rest.InClusterConfig dials KUBERNETES_SERVICE_HOST); and nothing else verifies.
func TestAPIServerCertsCoverInClusterNames(t *testing.T) {
	dir := t.TempDir()
	svcIP := kubernetesServiceIP(netip.MustParsePrefix("10.96.0.0/16"))
	if svcIP != netip.MustParseAddr("10.96.0.1") {
		t.Fatalf("kubernetes Service IP of 10.96.0.0/16 = %s, want 10.96.0.1", svcIP)
	}
	hosts := apiServerHosts(netip.MustParseAddr("10.244.0.1"), svcIP, "cluster.local.")
	ca, err := writeAPIServerCerts(dir, hosts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	caFile, err := os.ReadFile(filepath.Join(dir, apiCAFile))
	if err != nil || string(caFile) != string(ca) {
		t.Fatalf("%s: %v, want the returned CA", apiCAFile, err)
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, apiServingCert), filepath.Join(dir, apiServingKey))
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	for _, h := range []string{"10.244.0.1", "10.96.0.1", "127.0.0.1", "localhost", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: h, Roots: roots}); err != nil {
			t.Errorf("the serving certificate does not verify for %s: %v", h, err)
		}
	}
	for _, h := range []string{"10.96.0.10", "kubernetes.default.svc.cluster.local.evil", "10.244.0.2"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: h, Roots: roots}); err == nil {
			t.Errorf("the serving certificate verifies for %s too", h)
		}
	}
	// The service-account pair: a certificate kube-apiserver verifies tokens with and the
	// private key that matches it.
	crt, _ := os.ReadFile(filepath.Join(dir, apiSASignCert))
	key, _ := os.ReadFile(filepath.Join(dir, apiSASignKey))
	if _, err := tls.X509KeyPair(crt, key); err != nil {
		t.Errorf("service-account signing pair: %v", err)
	}
	if b, _ := pem.Decode(key); b == nil || b.Type != "RSA PRIVATE KEY" {
		t.Errorf("service-account key is not a PEM RSA key")
	}
}
