//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftmesh/weft/contract"
)

// mtlsCaptureNS is injected with iptables capture and strict mutual TLS for every pod.
const mtlsCaptureNS = "mtls-capture-e2e"

// mtlsCaptureManifest: echo behind a plain Service (no MeshRoute), an injected client with
// no proxy settings, and an outsider pod the injector skips (a plaintext caller). Probes
// under strict mode are TestAppProbesUnderStrictMTLS's (docs/probes.md).
const mtlsCaptureManifest = `
apiVersion: v1
kind: Namespace
metadata: {name: mtls-capture-e2e, labels: {weft.dev/inject: enabled, weft.dev/mtls: strict}}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: mtls-capture-e2e}
spec: {selector: {app: echo}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: mtls-capture-e2e}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo}}
  template:
    metadata:
      labels: {app: echo}
      annotations: {weft.dev/interception: iptables}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - {name: echo, image: "weft.dev/examples/echo:latest", env: [{name: VERSION, value: echo}], ports: [{containerPort: 8080}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: mtls-capture-e2e}
spec:
  replicas: 1
  selector: {matchLabels: {app: client}}
  template:
    metadata:
      labels: {app: client}
      annotations: {weft.dev/interception: iptables}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - {name: client, image: "weft.dev/examples/caller:latest", ports: [{containerPort: 8080}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: outsider, namespace: mtls-capture-e2e}
spec:
  replicas: 1
  selector: {matchLabels: {app: outsider}}
  template:
    metadata:
      labels: {app: outsider, weft.dev/inject: "false"}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - {name: outsider, image: "weft.dev/examples/caller:latest", ports: [{containerPort: 8080}]}
`

func mtlsCapturePod(t *testing.T, app string) corev1.Pod {
	t.Helper()
	return readyPod(t, mtlsCaptureNS, app, 4*time.Minute)
}

// TestMTLSCapturePlainService: an app with no proxy settings calls a plain Service (no
// MeshRoute) of an injected pod by name; its sidecar originates mutual TLS to the pod's
// captured app port (podIP:8080, marked tlsMode: weft by the control plane), and the
// callee's inbound capture terminates it: on the callee's link every payload to 8080 is a
// TLS record, never an HTTP request. A pod without a sidecar calling the same Service in
// plaintext is refused by the strict namespace.
func TestMTLSCapturePlainService(t *testing.T) {
	f := filepath.Join(t.TempDir(), "mtls-capture.yaml")
	if err := os.WriteFile(f, []byte(mtlsCaptureManifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := kubectl("apply", "-f", f); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Namespaces().Delete(context.Background(), mtlsCaptureNS, metav1.DeleteOptions{})
	})
	echo := mtlsCapturePod(t, "echo")
	client := mtlsCapturePod(t, "client")
	outsider := mtlsCapturePod(t, "outsider")
	if got := echo.Labels[contract.LabelInboundTLSPort]; got != "8080" {
		t.Errorf("echo pod label %s = %q, want 8080 (the injector marks a captured app port)", contract.LabelInboundTLSPort, got)
	}
	curlFrom := func(p corev1.Pod, container, url string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "nsenter", "-t", fmt.Sprint(containerPid(t, p, container)), "-n", "-m",
			"curl", "-sS", "--max-time", "5", "-i", url).CombinedOutput()
		return string(out), err
	}
	eventually(t, 2*time.Minute, "curl http://echo/ from the client pod", func() error {
		out, err := curlFrom(client, "client", "http://echo/")
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		if !strings.HasPrefix(out, "HTTP/1.1 200") {
			return fmt.Errorf("answer %s", out)
		}
		return nil
	})

	fd, err := packetSocket(containerPid(t, echo, "echo"))
	if err != nil {
		t.Fatalf("packet socket in the echo pod: %v", err)
	}
	defer unix.Close(fd)
	done := make(chan []string, 1)
	go func() {
		var errs []string
		for range 20 {
			if out, err := curlFrom(client, "client", "http://echo/"); err != nil || !strings.HasPrefix(out, "HTTP/1.1 200") {
				errs = append(errs, fmt.Sprintf("%v: %.200s", err, out))
			}
		}
		done <- errs
	}()
	// To the pod IP only: the callee's sidecar forwards to the app over 127.0.0.1:8080 in
	// plaintext, inside the pod, which the loopback shows too.
	payloads := linkPayloadsTo(fd, net.ParseIP(echo.Status.PodIP).To4(), 8080, time.Now().Add(6*time.Second))
	if errs := <-done; len(errs) > 0 {
		t.Errorf("calls during the capture failed: %v", errs)
	}
	var handshake, appData, plainHTTP int
	for _, p := range payloads {
		switch {
		case len(p) >= 3 && p[0] == 0x16 && p[1] == 3:
			handshake++
		case len(p) >= 3 && p[0] == 0x17 && p[1] == 3:
			appData++
		}
		if bytes.Contains(p, []byte(" HTTP/1.1\r\n")) || bytes.Contains(p, []byte("PRI * HTTP/2")) {
			plainHTTP++
		}
	}
	t.Logf("pod %s link, to %s:8080: %d payloads, %d TLS handshake records, %d application-data records, %d plaintext HTTP",
		echo.Name, echo.Status.PodIP, len(payloads), handshake, appData, plainHTTP)
	if appData == 0 || plainHTTP != 0 {
		t.Errorf("on the link: %d TLS application-data records and %d plaintext HTTP requests; want TLS only", appData, plainHTTP)
	}
	if n, err := sidecarStats(echo, "weft_inbound_tls_handshakes_total"); err != nil || n == 0 {
		t.Errorf("the echo sidecar's verified handshakes: %v %v, want some", n, err)
	}

	before, _ := sidecarStats(echo, "weft_inbound_plaintext_refused_total")
	out, cerr := curlFrom(outsider, "outsider", "http://echo/")
	if cerr == nil && strings.HasPrefix(out, "HTTP/") {
		t.Errorf("a plaintext caller without a sidecar got an answer from the strict namespace: %.300s", out)
	}
	after, err := sidecarStats(echo, "weft_inbound_plaintext_refused_total")
	if err != nil || after <= before {
		t.Errorf("the echo sidecar's refused plaintext connections went %v → %v (%v), want one more", before, after, err)
	}
	t.Logf("outsider's plaintext call: %v %.200s", cerr, out)
}
