//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// functionCaptureManifest: relay, a MeshFunction running the caller example (kept at one
// pod), and leaf, a MeshFunction at zero. relay's calls to http://leaf/ are made by an app
// with no proxy settings; only capture can bring them to relay's sidecar.
const functionCaptureManifest = `
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {name: relay, namespace: default}
spec:
  port: 8080
  template:
    spec:
      containers:
      - name: function
        image: weft.dev/examples/caller:latest
  scale: {initial: 1, min: 1, max: 1}
---
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {name: leaf, namespace: default}
spec:
  port: 8080
  template:
    spec:
      containers:
      - name: function
        image: weft.dev/examples/echo:latest
        env: [{name: VERSION, value: leaf-v1}]
  scale: {initial: 0, max: 2, stableWindow: 6s, scaleToZeroGracePeriod: 2s}
  activation: {holdTimeout: 60s, maxPending: 100}
`

// TestFunctionCallsAFunctionThroughItsSidecar is issue 15 item 5: a function pod is a meshed
// caller. Its outbound calls are captured (the manager's default interception), so a call
// from one function to another at zero is held by the calling function's own sidecar until
// the callee has a pod, and is counted there.
func TestFunctionCallsAFunctionThroughItsSidecar(t *testing.T) {
	f := filepath.Join(t.TempDir(), "functions.yaml")
	if err := os.WriteFile(f, []byte(functionCaptureManifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := kubectl("apply", "-f", f); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = kubectl("delete", "-f", f, "--wait=false") })

	var relay corev1.Pod
	eventually(t, 3*time.Minute, "a ready relay pod", func() error {
		for _, p := range pods(t, "weft.dev/function=relay") {
			if readyRunning(p) {
				relay = p
				return nil
			}
		}
		return fmt.Errorf("%d relay pods, none ready", len(pods(t, "weft.dev/function=relay")))
	})
	if !slices.ContainsFunc(relay.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == "weft-init" }) {
		t.Errorf("the relay function pod has no weft-init init container: %+v", relay.Spec.InitContainers)
	}
	for _, c := range relay.Spec.Containers {
		for _, e := range c.Env {
			if c.Name == "function" && strings.EqualFold(e.Name, "http_proxy") {
				t.Errorf("the relay function has %s=%s: its calls should be captured, not proxied", e.Name, e.Value)
			}
		}
	}
	atZero(t, "leaf", 3*time.Minute)

	stat := func(metric string, labels ...string) float64 {
		v, err := sidecarStats(relay, metric, labels...)
		if err != nil {
			t.Fatalf("relay sidecar stats: %v", err)
		}
		return v
	}
	held0, req0 := stat("weft_activator_held_total", "leaf"), stat("weft_cluster_requests_total", "leaf")
	const n = 5
	got, err := callFrom(relay, "http://leaf/", n)
	if err != nil {
		t.Fatal(err)
	}
	if got.ByStatus["200"] != n || got.ByVersion["leaf-v1"] != n {
		t.Fatalf("relay → http://leaf/ (at zero): %+v, want %d answers 200 from leaf-v1", got, n)
	}
	if got.ColdStarts == 0 {
		t.Errorf("no answer carried X-Weft-Cold-Start: relay's sidecar did not hold the call while leaf started: %+v", got)
	}
	held1, req1 := stat("weft_activator_held_total", "leaf"), stat("weft_cluster_requests_total", "leaf")
	if held1 <= held0 {
		t.Errorf("relay sidecar weft_activator_held_total{leaf} went %v → %v: the call from zero was not held there", held0, held1)
	}
	if req1-req0 < n {
		t.Errorf("relay sidecar weft_cluster_requests_total{leaf} went %v → %v over %d calls: the calls bypassed relay's sidecar", req0, req1, n)
	}
	t.Logf("relay → leaf from zero: %d calls, %d held (longest %.3fs); relay's sidecar held %v and counted %v requests",
		n, got.ColdStarts, got.MaxColdStart, held1-held0, req1-req0)
}
