package controllers

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"google.golang.org/grpc"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/inject"
	"github.com/weftmesh/weft/internal/workload"
	"github.com/weftmesh/weft/internal/xds"
	"github.com/weftmesh/weft/sidecar/xdsclient"
)

// The test managers serve xDS as cmd/manager does by default: TLS with a certificate of
// their own CA and every stream authenticated by a projected ServiceAccount token.

// xdsSecurity is the TLS configuration and authenticator of a test xDS server; xdsCA is
// the CA bundle its sidecars verify it with.
var xdsCA []byte

func secureXDSOptions(o xds.Options) xds.Options {
	if xdsCA == nil {
		b, err := inject.Generate(time.Now(), []string{contract.XDSServerName})
		Expect(err).NotTo(HaveOccurred())
		xdsCA, xdsCert, xdsKey = b.CACert, b.Cert, b.Key
	}
	pair, err := tls.X509KeyPair(xdsCert, xdsKey)
	Expect(err).NotTo(HaveOccurred())
	o.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	o.Auth = xds.NewAuthenticator(k8sClient, clock.RealClock{})
	return o
}

var xdsCert, xdsKey []byte

// testSidecar creates, in ns, the pod a sidecar would run in (ServiceAccount "sidecar",
// labels, a sidecar container with --app-port) and returns the dial options and node of a
// sidecar presenting that pod's token, read from a token file as in a real pod.
func testSidecar(ns, pod string, labels map[string]string, appPort int) ([]grpc.DialOption, *corev3.Node) {
	GinkgoHelper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "sidecar"}}
	if err := k8sClient.Create(ctx, sa); err != nil && !apierrors.IsAlreadyExists(err) {
		Expect(err).NotTo(HaveOccurred())
	}
	sc := corev1.Container{Name: workload.SidecarContainerName, Image: "weft-sidecar"}
	if appPort != 0 {
		sc.Args = []string{"--app-port=" + strconv.Itoa(appPort)}
	}
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: pod, Labels: labels},
		Spec: corev1.PodSpec{ServiceAccountName: "sidecar", Containers: []corev1.Container{{Name: "app", Image: "app"}, sc}}}
	Expect(k8sClient.Create(ctx, p)).To(Succeed())
	DeferCleanup(func() { _ = k8sClient.Delete(ctx, p) })
	cs, err := kubernetes.NewForConfig(cfg)
	Expect(err).NotTo(HaveOccurred())
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "sidecar", &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences: []string{contract.TokenAudience}, ExpirationSeconds: ptr.To[int64](3600),
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID}}}, metav1.CreateOptions{})
	Expect(err).NotTo(HaveOccurred())
	dir := GinkgoT().TempDir()
	caFile, tokFile := filepath.Join(dir, contract.CAFile), filepath.Join(dir, contract.TokenFile)
	Expect(os.WriteFile(caFile, xdsCA, 0o600)).To(Succeed())
	Expect(os.WriteFile(tokFile, []byte(tr.Status.Token), 0o600)).To(Succeed())
	dial, secure, err := xdsclient.Credentials(caFile, tokFile)
	Expect(err).NotTo(HaveOccurred())
	Expect(secure).To(BeTrue())
	return dial, &corev3.Node{Id: pod + "." + ns}
}
