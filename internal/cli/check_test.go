package cli

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/weftmesh/weft/internal/inject"
)

// check fails without the webhook, passes once the webhook and its certificates are there
// (warning about the rejecting sidecar), and fails again when the clock nears the serving
// certificate's expiry.
func TestCheck(t *testing.T) {
	w := needWorld(t)
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	nowFunc = func() time.Time { return t0 }
	defer func() { nowFunc = time.Now }()

	code, out, errOut := w.run("check")
	if code != 1 {
		t.Fatalf("check without a webhook: exit %d, want 1; %s", code, errOut)
	}
	if errOut != "" {
		t.Errorf("check printed %q on stderr: its result is the table", errOut)
	}
	golden(t, "check-no-webhook", out)

	ctx := context.Background()
	b, err := inject.Generate(t0, []string{"weft-webhook-service.weft-system.svc"})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "weft-system"}}); err != nil {
		t.Fatal(err)
	}
	if err := w.client.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "weft-system", Name: webhookSecretName},
		Data: map[string][]byte{"ca.crt": b.CACert, corev1.TLSCertKey: b.Cert, corev1.TLSPrivateKeyKey: b.Key}}); err != nil {
		t.Fatal(err)
	}
	none := admissionregistrationv1.SideEffectClassNone
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: webhookConfigName},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{Name: "namespace.inject.weft.dev", SideEffects: &none,
			AdmissionReviewVersions: []string{"v1"}, FailurePolicy: ptr.To(admissionregistrationv1.Ignore),
			ObjectSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"never": "matches"}},
			ClientConfig:   admissionregistrationv1.WebhookClientConfig{URL: ptr.To("https://127.0.0.1:1/inject-pod"), CABundle: b.CACert}}}}
	if err := w.client.Create(ctx, mwc); err != nil {
		t.Fatal(err)
	}
	// Without the MeshFunction validator: a warning (applies still work, status reports).
	code, out, _ = w.run("check")
	if code != 0 || !strings.Contains(out, "‼ MeshFunction validator "+validatorConfigName+" is configured") {
		t.Errorf("check without the validator: exit %d, want 0 and a warning\n%s", code, out)
	}
	vwc := &admissionregistrationv1.ValidatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: validatorConfigName},
		Webhooks: []admissionregistrationv1.ValidatingWebhook{{Name: "meshfunction.validate.weft.dev", SideEffects: &none,
			AdmissionReviewVersions: []string{"v1"}, FailurePolicy: ptr.To(admissionregistrationv1.Ignore),
			ObjectSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"never": "matches"}},
			ClientConfig:   admissionregistrationv1.WebhookClientConfig{URL: ptr.To("https://127.0.0.1:1/validate-meshfunction"), CABundle: []byte("stale")}}}}
	if err := w.client.Create(ctx, vwc); err != nil {
		t.Fatal(err)
	}
	code, out, _ = w.run("check")
	if code != 0 || !strings.Contains(out, "‼ MeshFunction validator meshfunction.validate.weft.dev trusts the webhook CA") {
		t.Errorf("check with a validator of another CA: exit %d, want 0 and a warning\n%s", code, out)
	}
	vwc.Webhooks[0].ClientConfig.CABundle = b.CACert
	if err := w.client.Update(ctx, vwc); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = w.run("check")
	if code != 0 {
		t.Fatalf("check with the webhook: exit %d, want 0; %s\n%s", code, errOut, out)
	}
	golden(t, "check-ok", out)

	// 360 days on, the serving certificate (365 days) has 5 left.
	nowFunc = func() time.Time { return t0.Add(360 * 24 * time.Hour) }
	code, out, _ = w.run("check")
	if code != 1 {
		t.Fatalf("check near expiry: exit %d, want 1\n%s", code, out)
	}
	golden(t, "check-expiring", out)

	// A CA bundle that is not a certificate.
	mwc.Webhooks[0].ClientConfig.CABundle = []byte("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
	if err := w.client.Update(ctx, mwc); err != nil {
		t.Fatal(err)
	}
	code, out, _ = w.run("check")
	if code != 1 || !strings.Contains(out, "✘ the webhook's CA bundle is a valid certificate") {
		t.Errorf("check with a garbage CA bundle: exit %d\n%s", code, out)
	}

	code, out, errOut = w.run("check", "--pre")
	if code != 0 {
		t.Fatalf("check --pre: exit %d; %s\n%s", code, errOut, out)
	}
	golden(t, "check-pre", out)
}

// A manager that cannot be reached, or an address that is not a Weft manager, is a clear
// error and exit 1; check reports it as a failed check.
func TestManagerUnreachable(t *testing.T) {
	w := needWorld(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()
	code, _, errOut := w.run("proxy-status", "--manager-url", closed)
	if code != 1 || !strings.Contains(errOut, "is unreachable") || !strings.Contains(errOut, "connection refused") {
		t.Errorf("proxy-status to a closed port: exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = w.run("proxy-config", "productpage-1", "routes", "--manager-url", closed)
	if code != 1 || !strings.Contains(errOut, "is unreachable") {
		t.Errorf("proxy-config to a closed port: exit %d, stderr %q", code, errOut)
	}
	// describe still describes, and says why it cannot name the rejecting sidecars.
	code, out, errOut := w.run("describe", "mr/reviews", "--manager-url", closed, "--show-events=false")
	if code != 0 || !strings.Contains(out, "(which sidecars: unknown, manager "+closed+" is unreachable") {
		t.Errorf("describe with the manager down: exit %d, stderr %q\n%s", code, errOut, out)
	}
	code, out, _ = w.run("check", "--manager-url", closed)
	if code != 1 || !strings.Contains(out, "✘ the manager's xDS server is serving") {
		t.Errorf("check with the manager down: exit %d\n%s", code, out)
	}

	notWeft := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("<html>hello</html>"))
	}))
	defer notWeft.Close()
	code, _, errOut = w.run("proxy-status", "--manager-url", notWeft.URL)
	if code != 1 || !strings.Contains(errOut, "not its JSON (is --manager-url a Weft manager's debug address?)") {
		t.Errorf("proxy-status to a non-Weft server: exit %d, stderr %q", code, errOut)
	}
	// A slow manager is cut off by --request-timeout.
	slow := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	defer slow.Close()
	start := time.Now()
	code, _, errOut = w.run("proxy-status", "--manager-url", slow.URL, "--request-timeout", "500ms")
	if code != 1 || !strings.Contains(errOut, "deadline exceeded") {
		t.Errorf("proxy-status to a hanging server: exit %d, stderr %q", code, errOut)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("a hanging manager held proxy-status for %v", d)
	}
}

// Without --manager-url the CLI port-forwards to each running manager pod; when the API
// server cannot (here: envtest has no kubelet, the pod no node) it says which pod, which
// permission a port-forward needs, and the way around it.
func TestManagerPortForwardFailure(t *testing.T) {
	w := needWorld(t)
	ctx := context.Background()
	if err := w.client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "weft-pf"}}); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "weft-pf", Name: "weft-manager-0", Labels: map[string]string{"control-plane": "weft-manager"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "manager", Image: "manager"}}}}
	if err := w.client.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	pod.Status.Phase = corev1.PodRunning
	if err := w.client.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}
	var out, errb strings.Builder
	code := Main("weft", []string{"--kubeconfig", w.kubeconfig, "--manager-namespace", "weft-pf", "proxy-status"}, Streams{Out: &out, Err: &errb})
	if code != 1 {
		t.Fatalf("exit %d, want 1; %s %s", code, out.String(), errb.String())
	}
	for _, want := range []string{"port-forward to manager pod weft-pf/weft-manager-0 port 15014", "needs create on pods/portforward in weft-pf", "or pass --manager-url"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("stderr %q does not say %q", errb.String(), want)
		}
	}
	t.Logf("stderr: %s", errb.String())
	// An unknown flag is refused.
	code = Main("weft", []string{"--kubeconfig", w.kubeconfig, "--manager-namespace", "nowhere", "--server", "x"}, Streams{Out: &out, Err: &errb})
	if code != 1 {
		t.Errorf("an unknown flag: exit %d, want 1", code)
	}
}

func TestOnThisHost(t *testing.T) {
	cases := map[string]bool{
		"https://127.0.0.1:6443": true, "https://localhost:6443": true, "https://[::1]:6443": true,
		"https://192.0.2.1:6443": false, "https://k8s.example.com": false, "::bad": false,
	}
	// An address of one of this host's interfaces (the local mesh's bridge address) counts.
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			cases["https://"+n.IP.String()+":6443"] = true
		}
	}
	for host, want := range cases {
		if got := onThisHost(host); got != want {
			t.Errorf("onThisHost(%q) = %v, want %v", host, got, want)
		}
	}
}
