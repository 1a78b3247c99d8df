//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftmesh/weft/contract"
)

// probesNS is injected with iptables capture and strict mutual TLS for every pod.
const probesNS = "probes-e2e"

// probesManifest: echo with a readiness probe (httpGet on its app port, by name) and a
// startup probe (tcpSocket on it), the same with probe rewriting turned off, and grpcecho
// with a grpc readiness probe; and a MeshFunction whose function container has a readiness
// probe on the function port (its pod is rendered by the manager, not injected). The local mesh's node agent runs httpGet and tcpSocket
// probes from the host to the pod IP over the bridge, as a kubelet does, so they are
// captured like a kubelet's; it has no grpc probes, which only the rewrite makes work.
const probesManifest = `
apiVersion: v1
kind: Namespace
metadata: {name: probes-e2e, labels: {weft.dev/inject: enabled, weft.dev/mtls: strict}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: probes-e2e}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations: {weft.dev/interception: iptables}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: echo
        image: "weft.dev/examples/echo:latest"
        ports: [{name: http, containerPort: 8080}]
        startupProbe: {tcpSocket: {port: 8080}, periodSeconds: 1, failureThreshold: 120}
        readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1, timeoutSeconds: 2}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web-kept, namespace: probes-e2e}
spec:
  replicas: 1
  selector: {matchLabels: {app: web-kept}}
  template:
    metadata:
      labels: {app: web-kept}
      annotations: {weft.dev/interception: iptables, weft.dev/rewrite-app-probes: "false"}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: echo
        image: "weft.dev/examples/echo:latest"
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1, timeoutSeconds: 2}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: grpc, namespace: probes-e2e}
spec:
  replicas: 1
  selector: {matchLabels: {app: grpc}}
  template:
    metadata:
      labels: {app: grpc}
      annotations: {weft.dev/interception: iptables}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: grpc
        image: "weft.dev/examples/grpcecho:latest"
        args: [serve]
        ports: [{name: grpc, containerPort: 8080}]
        readinessProbe: {grpc: {port: 8080}, periodSeconds: 1}
---
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {name: fnprobe, namespace: probes-e2e}
spec:
  port: 8080
  template:
    metadata:
      annotations: {weft.dev/interception: iptables}
    spec:
      containers:
      - name: function
        image: "weft.dev/examples/echo:latest"
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
  scale: {initial: 1, min: 1, max: 1}
`

// TestAppProbesUnderStrictMTLS: in a strict namespace with iptables capture, a pod whose
// readiness probe is an httpGet on its own app port becomes Ready, because the injector
// rewrote the probe to the sidecar's :15020/app-health/echo/readyz and the sidecar runs it
// against the app on the loopback; a grpc probe likewise. The same pod with
// weft.dev/rewrite-app-probes: "false" stays unready: the kubelet's plaintext probe is
// captured to the sidecar's inbound listener, which refuses it.
func TestAppProbesUnderStrictMTLS(t *testing.T) {
	f := filepath.Join(t.TempDir(), "probes.yaml")
	if err := os.WriteFile(f, []byte(probesManifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := kubectl("apply", "-f", f); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Namespaces().Delete(context.Background(), probesNS, metav1.DeleteOptions{})
	})

	start := time.Now()
	web := readyPod(t, probesNS, "web", 4*time.Minute)
	t.Logf("web pod %s ready after %s", web.Name, time.Since(start).Round(time.Second))
	echo := web.Spec.Containers[0]
	for kind, p := range map[string]*corev1.Probe{"readyz": echo.ReadinessProbe, "startupz": echo.StartupProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Port.IntValue() != contract.MetricsPort || p.HTTPGet.Path != "/app-health/echo/"+kind {
			t.Errorf("echo's %s probe as created: %+v, want httpGet :15020/app-health/echo/%s", kind, p, kind)
		}
	}
	grpcPod := readyPod(t, probesNS, "grpc", 4*time.Minute)
	t.Logf("grpc pod %s ready after %s", grpcPod.Name, time.Since(start).Round(time.Second))
	var fnPod corev1.Pod
	eventually(t, 4*time.Minute, "fnprobe's function pod ready", func() error {
		l, err := cs.CoreV1().Pods(probesNS).List(context.Background(), metav1.ListOptions{LabelSelector: "weft.dev/function=fnprobe"})
		if err != nil {
			return err
		}
		for _, p := range l.Items {
			if readyRunning(p) {
				fnPod = p
				return nil
			}
		}
		return fmt.Errorf("%d fnprobe pods, none ready", len(l.Items))
	})
	t.Logf("function pod %s ready after %s", fnPod.Name, time.Since(start).Round(time.Second))
	if p := fnPod.Spec.Containers[0].ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/app-health/function/readyz" {
		t.Errorf("the function container's readiness probe: %+v, want :15020/app-health/function/readyz", p)
	}

	// What the kubelet asked, asked again from the host.
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}}
	ask := func(p corev1.Pod, path string) (int, string, error) {
		resp, err := client.Get("http://" + p.Status.PodIP + ":15020" + path)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return resp.StatusCode, string(b), nil
	}
	for _, tc := range []struct {
		pod        corev1.Pod
		path, have string
		code       int
	}{
		{web, "/app-health/echo/readyz", "ok: GET http://127.0.0.1:8080/healthz: HTTP 200", 200},
		{web, "/app-health/echo/startupz", "ok: connected to 127.0.0.1:8080", 200},
		{web, "/app-health/ghost/readyz", "no app probe is recorded", 404},
		{grpcPod, "/app-health/grpc/readyz", "SERVING", 200},
		{fnPod, "/app-health/function/readyz", "ok: GET http://127.0.0.1:8080/healthz: HTTP 200", 200},
	} {
		code, body, err := ask(tc.pod, tc.path)
		t.Logf("GET %s:15020%s → %d %q", tc.pod.Name, tc.path, code, strings.TrimSpace(body))
		if err != nil || code != tc.code || !strings.Contains(body, tc.have) {
			t.Errorf("GET %s:15020%s = %d %q (%v), want %d with %q", tc.pod.Name, tc.path, code, body, err, tc.code, tc.have)
		}
	}
	if n, err := sidecarStats(web, "weft_app_probes_total", `result="passed"`); err != nil || n == 0 {
		t.Errorf("web's sidecar ran %v app probes that passed (%v), want some", n, err)
	}

	// The control: probes kept as written. Once its sidecar is ready (certificate and
	// strict mode in force), the echo container must stay unready, and its sidecar must be
	// refusing the kubelet's plaintext probes.
	var kept corev1.Pod
	eventually(t, 4*time.Minute, "web-kept's sidecar ready", func() error {
		l, err := cs.CoreV1().Pods(probesNS).List(context.Background(), metav1.ListOptions{LabelSelector: "app=web-kept"})
		if err != nil {
			return err
		}
		for _, p := range l.Items {
			if p.Status.Phase == corev1.PodRunning && containerReady(p, "weft-sidecar") {
				kept = p
				return nil
			}
		}
		return fmt.Errorf("%d web-kept pods, none with a ready sidecar", len(l.Items))
	})
	if p := kept.Spec.Containers[0].ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Port.String() != "http" {
		t.Errorf("web-kept's readiness probe was changed: %+v", p)
	}
	time.Sleep(5 * time.Second) // past failureThreshold (3) periods of 1 s: any early success is undone
	before, err := sidecarStats(kept, "weft_inbound_plaintext_refused_total")
	if err != nil {
		t.Fatalf("web-kept's sidecar stats: %v", err)
	}
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(2 * time.Second) {
		p, err := cs.CoreV1().Pods(probesNS).Get(context.Background(), kept.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if containerReady(*p, "echo") || readyRunning(*p) {
			t.Fatalf("web-kept's echo became ready with its probe on the captured app port: the test cannot tell rewriting from no rewriting")
		}
	}
	after, err := sidecarStats(kept, "weft_inbound_plaintext_refused_total")
	t.Logf("web-kept %s: unready for 20 s; its sidecar refused plaintext connections %v → %v", kept.Name, before, after)
	if err != nil || after-before < 5 {
		t.Errorf("web-kept's sidecar refused %v → %v plaintext connections in 20 s (%v), want the kubelet's probes (~1/s)", before, after, err)
	}
}

// containerReady reports whether container name of p is ready.
func containerReady(p corev1.Pod, name string) bool {
	for _, s := range p.Status.ContainerStatuses {
		if s.Name == name {
			return s.Ready
		}
	}
	return false
}
