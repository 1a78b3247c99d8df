package inject

import (
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/clock"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/capture"
	"github.com/weftmesh/weft/testenv"
)

// TestWebhookInAPIServer installs config/webhook into a real kube-apiserver, serves the
// handler with the self-managed certificate from EnsureSecret, and lets CABundleKeeper
// replace the caBundle envtest wrote: Pods are only admitted if the keeper published the CA
// that signed the serving certificate.
func TestWebhookInAPIServer(t *testing.T) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		testenv.Missing(t, "KUBEBUILDER_ASSETS is not set; run with KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh | tail -n1)")
	}
	logf.SetLogger(logr.Discard())
	env := &envtest.Environment{
		WebhookInstallOptions:    envtest.WebhookInstallOptions{Paths: []string{filepath.Join("..", "..", "config", "webhook", "manifests.yaml")}},
		ControlPlaneStartTimeout: 3 * time.Minute,
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting envtest: %v", err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	for _, ns := range []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: "weft-system"}},
		{ObjectMeta: metav1.ObjectMeta{Name: "meshed", Labels: map[string]string{LabelInject: "enabled"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "plain"}},
	} {
		if err := c.Create(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	wio := &env.WebhookInstallOptions
	hosts := []string{wio.LocalServingHost}
	secret := types.NamespacedName{Namespace: "weft-system", Name: "weft-webhook-cert"}
	bundle, err := EnsureSecret(ctx, c, secret, hosts, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// A second call (another replica, a restart) must reuse the stored bundle.
	again, err := EnsureSecret(ctx, c, secret, hosts, time.Now())
	if err != nil || string(again.CACert) != string(bundle.CACert) {
		t.Fatalf("second EnsureSecret made a new CA (err %v); replicas would disagree on the caBundle", err)
	}
	cert, err := bundle.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	srv := webhook.NewServer(webhook.Options{Host: wio.LocalServingHost, Port: wio.LocalServingPort,
		TLSOpts: []func(*tls.Config){func(c *tls.Config) {
			c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil }
		}}})
	srv.Register(Path, &webhook.Admission{Handler: &Handler{
		Config:  Config{Image: "ghcr.io/weftmesh/weft-sidecar:test", XDSAddress: "10.244.0.1:18000"},
		Decoder: admission.NewDecoder(scheme),
		Namespaces: NamespaceLabelsFunc(func(ctx context.Context, name string) (map[string]string, error) {
			ns := &corev1.Namespace{}
			err := c.Get(ctx, types.NamespacedName{Name: name}, ns)
			return ns.Labels, err
		}),
	}})
	go func() { _ = srv.Start(ctx) }()
	keeper := &CABundleKeeper{Client: c, Name: "sidecar-injector", CA: bundle.CACert, Interval: time.Second, Clock: clock.RealClock{}, Log: logf.Log}
	go func() { _ = keeper.Start(ctx) }()

	pod := func(ns, name string, labels map[string]string, containers ...string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels}}
		for _, cn := range containers {
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: cn, Image: "weft.dev/examples/echo",
				Ports: []corev1.ContainerPort{{ContainerPort: 8080}}})
		}
		return p
	}
	// The first create can race the keeper's first write; retry until the API server trusts
	// our certificate (it refuses the Pod while the caBundle is still envtest's).
	first := pod("meshed", "reviews", map[string]string{"app": "reviews"}, "app")
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := c.Create(ctx, first.DeepCopy())
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("creating a pod in an injected namespace kept failing: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}

	for _, tc := range []struct {
		pod        *corev1.Pod
		containers int
	}{
		{first, 2},
		{pod("meshed", "opted-out", map[string]string{LabelInject: "false"}, "app"), 1},
		{pod("plain", "not-asked", nil, "app"), 1},
		{pod("plain", "opted-in", map[string]string{LabelInject: "true"}, "app"), 2},
		{pod("meshed", "pre-injected", nil, "app", ContainerName), 2},
		// Never sent to the webhook (issue 12 item 8), so a manager that is down cannot
		// stop them: the cluster's own namespace and the manager's.
		{pod("kube-system", "opted-in", map[string]string{LabelInject: "true"}, "app"), 1},
		{pod("weft-system", "opted-in", map[string]string{LabelInject: "true"}, "app"), 1},
	} {
		t.Run(tc.pod.Namespace+"/"+tc.pod.Name, func(t *testing.T) {
			if tc.pod != first {
				if err := c.Create(ctx, tc.pod.DeepCopy()); err != nil {
					t.Fatalf("creating pod: %v", err)
				}
			}
			got := &corev1.Pod{}
			if err := c.Get(ctx, client.ObjectKeyFromObject(tc.pod), got); err != nil {
				t.Fatal(err)
			}
			if len(got.Spec.Containers) != tc.containers {
				t.Fatalf("pod has %d containers, want %d: %+v", len(got.Spec.Containers), tc.containers, got.Spec.Containers)
			}
			if tc.containers == 2 && tc.pod.Name != "pre-injected" {
				sc := got.Spec.Containers[1]
				if sc.Name != ContainerName || sc.Image != "ghcr.io/weftmesh/weft-sidecar:test" {
					t.Errorf("second container is %s (%s), want the sidecar", sc.Name, sc.Image)
				}
				if !hasEnv(got.Spec.Containers[0], "HTTP_PROXY", contract.OutboundProxyURL) {
					t.Errorf("app container lacks HTTP_PROXY=%s: %+v", contract.OutboundProxyURL, got.Spec.Containers[0].Env)
				}
			}
		})
	}

	// A pod with iptables interception: the real API server accepts the mutated pod (so the
	// weft-init container's securityContext is valid), the app has no proxy env, and weft-init
	// runs before the sidecar. Bad capture annotations refuse the pod with their name.
	captured := pod("meshed", "captured", nil, "app")
	captured.Annotations = map[string]string{capture.AnnotationInterception: "iptables", capture.AnnotationExcludeOutboundPorts: "5432"}
	if err := c.Create(ctx, captured); err != nil {
		t.Fatalf("creating a pod with iptables interception: %v", err)
	}
	got := &corev1.Pod{}
	if err := c.Get(ctx, client.ObjectKeyFromObject(captured), got); err != nil {
		t.Fatal(err)
	}
	if n := len(got.Spec.InitContainers); n != 1 || got.Spec.InitContainers[0].Name != "weft-init" ||
		!slices.Contains(got.Spec.InitContainers[0].Args, "--exclude-outbound-ports=5432") {
		t.Errorf("init containers %+v, want weft-init with the annotation's exclude", got.Spec.InitContainers)
	}
	if hasEnv(got.Spec.Containers[0], "HTTP_PROXY", contract.OutboundProxyURL) {
		t.Errorf("a captured app got HTTP_PROXY: %+v", got.Spec.Containers[0].Env)
	}
	bad := pod("meshed", "bad-capture", nil, "app")
	bad.Annotations = map[string]string{capture.AnnotationExcludeOutboundIPRanges: "10.0.0.0/33"}
	err = c.Create(ctx, bad)
	if err == nil || !strings.Contains(err.Error(), `annotation traffic.weft.dev/excludeOutboundIPRanges="10.0.0.0/33"`) {
		t.Errorf("creating a pod with a bad capture annotation: %v, want it denied naming the annotation", err)
	}
}

func hasEnv(c corev1.Container, name, value string) bool {
	for _, e := range c.Env {
		if e.Name == name && e.Value == value {
			return true
		}
	}
	return false
}
