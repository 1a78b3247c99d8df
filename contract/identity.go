package contract

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Workload identity and mutual TLS between sidecars (docs/mtls.md). The manager runs a small
// CA; a sidecar sends it a CSR for a key it keeps in memory, over the ADS port where its
// projected token has already been verified, and gets an X.509-SVID whose only identity,
// the URI SAN spiffe://<trust domain>/ns/<namespace>/sa/<service account>, comes from that
// token, never from the CSR. Like the signal service the certificate service is plain gRPC
// with JSON bodies (codec SignalCodec), so neither side needs generated code.
const (
	// CertificateService is the gRPC service the manager's CA serves on the ADS port.
	CertificateService = "weft.identity.v1.Certificates"
	// SignMethod signs a CSR: SignRequest → SignResponse.
	SignMethod = "/" + CertificateService + "/Sign"
	// DefaultTrustDomain is the SPIFFE trust domain, Istio's default too.
	DefaultTrustDomain = "cluster.local"
	// DefaultSVIDTTLSeconds is the workload certificate's lifetime (Istio: 24 h); the sidecar
	// renews it at half of that.
	DefaultSVIDTTLSeconds = 24 * 3600
	// MaxCSRBytes bounds a CSR the manager parses.
	MaxCSRBytes = 8 << 10
)

// SignRequest asks the CA for a workload certificate.
type SignRequest struct {
	// CSR is a PEM "CERTIFICATE REQUEST"; its signature proves the sender holds the key.
	// Its subject and SANs are ignored.
	CSR string `json:"csr"`
	// TTLSeconds is the lifetime asked for; the CA caps it at its maximum (0: its default).
	TTLSeconds int64 `json:"ttlSeconds,omitempty"`
}

// SignResponse carries the certificate and what to verify peers with.
type SignResponse struct {
	// CertChain is PEM: the leaf first, then any intermediates (none today).
	CertChain string `json:"certChain"`
	// TrustBundle is PEM: every root a peer's certificate may chain to. During a CA
	// rotation it holds the old and the new root, so certificates of both verify.
	TrustBundle string `json:"trustBundle"`
	// MTLSMode is the peer authentication mode of the workload's inbound listener
	// (MTLSPermissive or MTLSStrict), from its pod's and namespace's weft.dev/mtls labels;
	// empty from a manager that predates it (permissive).
	MTLSMode string `json:"mtlsMode,omitempty"`
}

// Peer authentication modes, as Istio's PeerAuthentication.
const (
	// MTLSPermissive: inbound accepts TLS (verified client certificates) and plaintext,
	// told apart by the first byte of the connection. The default.
	MTLSPermissive = "permissive"
	// MTLSStrict: inbound refuses plaintext.
	MTLSStrict = "strict"
	// LabelMTLS sets the mode: as a pod label for one workload, as a namespace label for
	// every workload of the namespace; the pod's wins. Labels, because the manager reads
	// the verified pod and its namespace anyway; the sidecar gets the mode with every
	// certificate, so a change applies within half a certificate lifetime.
	LabelMTLS = "weft.dev/mtls"
)

// ParseMTLSMode validates a weft.dev/mtls value; "" is permissive.
func ParseMTLSMode(v string) (string, error) {
	switch v {
	case "":
		return MTLSPermissive, nil
	case MTLSPermissive, MTLSStrict:
		return v, nil
	}
	return "", fmt.Errorf("%s=%q: want %s or %s", LabelMTLS, v, MTLSPermissive, MTLSStrict)
}

// SPIFFEID is a workload's identity in a trust domain.
type SPIFFEID struct {
	TrustDomain, Namespace, ServiceAccount string
}

// String is spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
func (id SPIFFEID) String() string {
	return "spiffe://" + id.TrustDomain + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount
}

// URL is String as a *url.URL, for x509.Certificate.URIs.
func (id SPIFFEID) URL() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount}
}

// ParseSPIFFEID reads a Kubernetes workload's SPIFFE ID, refusing any other shape.
func ParseSPIFFEID(u *url.URL) (SPIFFEID, error) {
	if u == nil || u.Scheme != "spiffe" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return SPIFFEID{}, fmt.Errorf("%q is not a spiffe:// ID", u)
	}
	p := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(p) != 4 || p[0] != "ns" || p[2] != "sa" || p[1] == "" || p[3] == "" {
		return SPIFFEID{}, errors.New("SPIFFE ID " + u.String() + " is not spiffe://<trust domain>/ns/<namespace>/sa/<service account>")
	}
	return SPIFFEID{TrustDomain: u.Host, Namespace: p[1], ServiceAccount: p[3]}, nil
}

// Which Service endpoints are another sidecar (docs/mtls.md "Which endpoints get mutual
// TLS"), Istio's auto-mTLS with Weft's names. The injector labels a pod whose sidecar
// terminates mesh TLS on a captured app port with LabelInboundTLSPort=<that port>; the
// control plane marks each endpoint on that pod and port with the filter metadata
// TransportSocketMatchKey: {TLSModeKey: TLSModeWeft} (Istio: tlsMode: istio, from the
// pod label security.istio.io/tlsMode), and gives Service clusters the matching
// transport_socket_matches entries; a caller's sidecar with a workload identity then
// originates mutual TLS to such an endpoint.
const (
	LabelInboundTLSPort     = "weft.dev/inbound-tls-port"
	TransportSocketMatchKey = "envoy.transport_socket_match"
	TLSModeKey              = "tlsMode"
	TLSModeWeft             = "weft"
	// TLSModeMatchName and PlaintextMatchName name the cluster's two
	// transport_socket_matches entries (Istio's tlsMode-istio and tlsMode-disabled).
	TLSModeMatchName   = "tlsMode-weft"
	PlaintextMatchName = "tlsMode-disabled"
)
