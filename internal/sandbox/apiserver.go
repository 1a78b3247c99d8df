package sandbox

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/weftmesh/weft/internal/inject"
)

// In-cluster API access, as on a node: a pod reaches kube-apiserver through the `kubernetes`
// Service (ClusterIP = the service range's first address, port 443), which the API server
// itself keeps pointed at its advertise address. So kube-apiserver listens on the bridge
// address (the host as pods see it; never on other host addresses), its serving certificate
// names that address, the Service's ClusterIP and kubernetes.default.svc.<domain>, the node
// agent gives every container KUBERNETES_SERVICE_HOST/PORT, and kube-controller-manager's
// root-ca-cert-publisher puts the CA into kube-root-ca.crt in every namespace, from where
// the ServiceAccount admission plugin's kube-api-access volume projects it as ca.crt.

// File names kube-apiserver finds in its --cert-dir, as envtest writes them; apiCAFile is
// the CA kube-controller-manager publishes (--root-ca-file).
const (
	apiServingCert = "apiserver.crt"
	apiServingKey  = "apiserver.key"
	apiSASignCert  = "sa-signer.crt"
	apiSASignKey   = "sa-signer.key"
	apiCAFile      = "apiserver-ca.crt"
)

// kubernetesServiceIP is the ClusterIP kube-apiserver gives the `kubernetes` Service: the
// first address of the service range (10.96.0.1 for 10.96.0.0/16).
func kubernetesServiceIP(serviceCIDR netip.Prefix) netip.Addr {
	return serviceCIDR.Masked().Addr().Next()
}

// apiServerHosts are the names and addresses the serving certificate covers: loopback (the
// admin kubeconfig of older state dirs, tools on the host), the bridge address it listens
// on, the `kubernetes` Service's ClusterIP and DNS names (what in-cluster clients dial).
func apiServerHosts(gateway, serviceIP netip.Addr, domain string) []string {
	hosts := []string{gateway.String(), serviceIP.String(), "127.0.0.1", "localhost",
		"kubernetes", "kubernetes.default", "kubernetes.default.svc"}
	if d := strings.TrimSuffix(domain, "."); d != "" {
		hosts = append(hosts, "kubernetes.default.svc."+d)
	}
	return hosts
}

// writeAPIServerCerts writes into certDir what envtest would generate there (it generates
// nothing when apiserver.crt exists), but for hosts: a fresh CA and a serving certificate
// (inject.Generate, ECDSA P-256), the service-account signing pair (RSA 2048, RS256 as
// kubeadm's sa.key), and the CA alone as apiCAFile. It returns the CA, PEM.
func writeAPIServerCerts(certDir string, hosts []string, now time.Time) ([]byte, error) {
	b, err := inject.Generate(now, hosts)
	if err != nil {
		return nil, fmt.Errorf("the API server's serving certificate: %w", err)
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("the service-account signing key: %w", err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(now.UnixNano()), Subject: pkix.Name{CommonName: "weft-dev-sa-signer"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	saDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &saKey.PublicKey, saKey)
	if err != nil {
		return nil, fmt.Errorf("the service-account signing certificate: %w", err)
	}
	files := map[string][]byte{
		apiServingCert: b.Cert,
		apiServingKey:  b.Key,
		apiCAFile:      b.CACert,
		apiSASignCert:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: saDER}),
		apiSASignKey:   pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)}),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(certDir, name), data, 0o600); err != nil {
			return nil, err
		}
	}
	return b.CACert, nil
}

// masterServiceEnv are the variables the kubelet gives every container for the `kubernetes`
// Service in the default namespace (its port is named https), whatever the pod's
// enableServiceLinks: rest.InClusterConfig reads KUBERNETES_SERVICE_HOST and _PORT. None
// for an invalid address.
func masterServiceEnv(svc netip.AddrPort) []string {
	if !svc.IsValid() {
		return nil
	}
	host, port := svc.Addr().String(), strconv.Itoa(int(svc.Port()))
	url := "tcp://" + svc.String()
	pfx := "KUBERNETES_PORT_" + port + "_TCP"
	return []string{
		"KUBERNETES_SERVICE_HOST=" + host, "KUBERNETES_SERVICE_PORT=" + port, "KUBERNETES_SERVICE_PORT_HTTPS=" + port,
		"KUBERNETES_PORT=" + url, pfx + "=" + url, pfx + "_PROTO=tcp", pfx + "_PORT=" + port, pfx + "_ADDR=" + host,
	}
}
