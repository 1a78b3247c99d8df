//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The MeshFunction tests use examples/demo/50-function.yaml: hello starts at zero, has a 6 s
// stable window and a 2 s grace period, and callers' sidecars hold up to 500 calls for it.

// replicas is the Deployment's spec.replicas of a function (-1 before it exists).
func replicas(t *testing.T, name string) int32 {
	t.Helper()
	d, err := cs.AppsV1().Deployments("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil || d.Spec.Replicas == nil {
		return -1
	}
	return *d.Spec.Replicas
}

// atZero waits until a function's Deployment asks for 0 replicas and no pod is left.
func atZero(t *testing.T, name string, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, name+" at zero replicas with no pods", func() error {
		if r := replicas(t, name); r != 0 {
			return fmt.Errorf("deployment %s has %d replicas", name, r)
		}
		if ps := pods(t, "weft.dev/function="+name); len(ps) > 0 {
			return fmt.Errorf("%d pods of %s remain", len(ps), name)
		}
		return nil
	})
}

func TestFunction1BurstFromZeroAllSucceed(t *testing.T) {
	routed(t, "http://reviews:9080/", func(g tally) bool { return g.ByStatus["200"] == 20 })
	atZero(t, "hello", 3*time.Minute)
	n := th.BurstCalls
	got, err := callC(t, "http://hello/", n, n)
	if err != nil {
		t.Fatal(err)
	}
	if got.ByStatus["200"] != n {
		t.Fatalf("%d concurrent calls to a function at zero: %+v, want all %d to answer 200", n, got, n)
	}
	if got.ColdStarts == 0 {
		t.Errorf("no answer carried X-Weft-Cold-Start although the function was at zero: %+v", got)
	}
	t.Logf("%d calls from zero: %d held, longest hold %.3fs", n, got.ColdStarts, got.MaxColdStart)
}

func TestFunction2SteadyTrafficStaysUpIdleGoesToZero(t *testing.T) {
	// 20 s of calls, one round a second: longer than the 6 s stable window plus the 2 s grace
	// period, so a scaler that counted from the wrong moment would drop the pod mid-traffic.
	for i := 0; i < 20; i++ {
		got, err := callC(t, "http://hello/", 5, 5)
		if err != nil {
			t.Fatal(err)
		}
		if got.ByStatus["200"] != 5 {
			t.Fatalf("round %d of steady traffic: %+v, want 5 answers 200", i, got)
		}
		if i > 2 {
			if r := replicas(t, "hello"); r < 1 {
				t.Fatalf("hello scaled to %d replicas during steady traffic (round %d)", r, i)
			}
		}
		time.Sleep(time.Second)
	}
	start := time.Now()
	atZero(t, "hello", 3*time.Minute)
	t.Logf("hello reached zero %.1fs after the last call", time.Since(start).Seconds())

	// Calls that arrive while the last pod is being handed off: warm hello up, let it idle
	// until the controller announces zero (endpoints go DRAINING, callers hold), then call.
	if got, err := callC(t, "http://hello/", 5, 5); err != nil || got.ByStatus["200"] != 5 {
		t.Fatalf("waking hello: %+v %v", got, err)
	}
	eventually(t, 3*time.Minute, "hello announces zero", func() error {
		out, err := kubectl("get", "mfn", "hello", "-o", "jsonpath={.status.desiredReplicas}")
		if err != nil || strings.TrimSpace(out) != "0" {
			return fmt.Errorf("desiredReplicas %q (%w)", out, err)
		}
		return nil
	})
	got, err := callC(t, "http://hello/", 20, 20)
	if err != nil {
		t.Fatal(err)
	}
	if got.ByStatus["200"] != 20 {
		t.Fatalf("20 calls during the scale-down hand-off: %+v, want all 20 answered 200", got)
	}
}

func TestFunction3HoldOverflowAnswers503WithReason(t *testing.T) {
	manifest := `apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {name: tiny, namespace: default}
spec:
  template:
    spec:
      containers:
      - {name: function, image: weft.dev/examples/echo:latest}
  scale: {initial: 0, stableWindow: 6s, scaleToZeroGracePeriod: 2s}
  activation: {holdTimeout: 60s, maxPending: 5}
`
	f := filepath.Join(t.TempDir(), "tiny.yaml")
	if err := os.WriteFile(f, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := kubectl("apply", "-f", f); err != nil {
		t.Fatalf("kubectl apply: %v: %s", err, out)
	}
	defer kubectl("delete", "-f", f, "--wait=false")
	eventually(t, time.Minute, "tiny's Deployment created at zero", func() error {
		if r := replicas(t, "tiny"); r != 0 {
			return fmt.Errorf("replicas %d", r)
		}
		return nil
	})
	// The route for tiny must be in the caller's sidecar before the burst, else the calls
	// would get 404s, not holds. A single call goes through the hold and starts it; then wait
	// for it to go back to zero.
	routed(t, "http://tiny/", func(g tally) bool { return g.ByStatus["200"] == 20 })
	atZero(t, "tiny", 3*time.Minute)

	got, err := callC(t, "http://tiny/", 50, 50)
	if err != nil {
		t.Fatal(err)
	}
	if got.ByStatus["200"]+got.ByStatus["503"] != 50 || got.ByStatus["503"] == 0 || got.ByStatus["200"] < 5 {
		t.Fatalf("50 calls against maxPending 5: %+v, want at least 5 answered 200, the rest 503", got)
	}
	if !strings.Contains(got.LastBody, "full") {
		t.Errorf("the 503 body does not say the hold queue is full: %q", got.LastBody)
	}
	t.Logf("overflow: %d answered 200, %d got 503: %q", got.ByStatus["200"], got.ByStatus["503"], got.LastBody)
}

// managerPID finds the local mesh's manager process (root/bin/manager).
func managerPID(t *testing.T) int {
	t.Helper()
	want := filepath.Join(root, "bin", "manager")
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if argv0, _, _ := strings.Cut(string(cmdline), "\x00"); argv0 == want {
			return pid
		}
	}
	t.Fatalf("no process runs %s", want)
	return 0
}

// Weft keeps the control plane out of the request path: with the manager frozen (SIGSTOP:
// no xDS, no autoscaler, no API writes), warm traffic to a route and to a function keeps
// flowing on the sidecars' last config.
func TestFunction4WarmTrafficSurvivesAFrozenManager(t *testing.T) {
	routed(t, "http://reviews:9080/", func(g tally) bool { return g.ByStatus["200"] == 20 })
	if got, err := callC(t, "http://hello/", 5, 5); err != nil || got.ByStatus["200"] != 5 {
		t.Fatalf("warming hello up: %+v %v", got, err)
	}
	pid := managerPID(t)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	for i := 0; i < 5; i++ {
		for _, url := range []string{"http://reviews:9080/", "http://hello/"} {
			got, err := callC(t, url, 40, 10)
			if err != nil {
				t.Fatal(err)
			}
			if got.ByStatus["200"] != 40 {
				t.Fatalf("round %d with the manager frozen, %s: %+v, want 40 answers 200", i, url, got)
			}
		}
		time.Sleep(time.Second)
	}
}

// The function pod's own sidecar enforces containerConcurrency: with CC 1 and one pod, 1 call
// runs, 10 wait, and the rest get 503 at once saying the queue is full (Knative's
// queue-proxy breaker, without a queue-proxy).
func TestFunction7ContainerConcurrencyLimitsThePod(t *testing.T) {
	manifest := `apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {name: narrow, namespace: default}
spec:
  template:
    spec:
      containers:
      - {name: function, image: weft.dev/examples/slow:latest}
  concurrency: {containerConcurrency: 1}
  scale: {min: 1, max: 1, initial: 1}
`
	f := filepath.Join(t.TempDir(), "narrow.yaml")
	if err := os.WriteFile(f, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := kubectl("apply", "-f", f); err != nil {
		t.Fatalf("kubectl apply: %v: %s", err, out)
	}
	defer kubectl("delete", "-f", f, "--wait=false")
	// Programmed once calls get answers from the pod: 20 at once already overflow CC 1's
	// queue of 10, so some of them are 503s by design.
	routed(t, "http://narrow/%3Fms%3D1", func(g tally) bool {
		return g.ByStatus["200"] > 0 && g.ByStatus["200"]+g.ByStatus["503"] == 20
	})
	got, err := callC(t, "http://narrow/%3Fms%3D300", 30, 30)
	if err != nil {
		t.Fatal(err)
	}
	if got.ByStatus["200"] != 11 || got.ByStatus["503"] != 19 {
		t.Fatalf("30 concurrent calls against containerConcurrency 1: %+v, want 11 answered 200 (1 running + 10 queued) and 19 × 503", got)
	}
	if !strings.Contains(got.LastBody, "pending request queue full") {
		t.Errorf("the 503 body does not say the queue is full: %q", got.LastBody)
	}
}
