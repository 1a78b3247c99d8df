//go:build e2e

package e2e

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

// burstManifest is a function sized for the right-sized burst: each call takes 1 s, a pod
// runs at most 10 at once (containerConcurrency 10) and the autoscaler aims for all 10
// (targetUtilizationPercentage 100), so 200 calls held at zero want ceil(200 / 10) = 20
// pods. max 30 keeps the bound out of the way; callers hold up to 500 calls.
const burstManifest = `apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {name: burst, namespace: default}
spec:
  template:
    spec:
      containers:
      - name: function
        image: weft.dev/examples/slow:latest
        env:
        - {name: DELAY_MS, value: "1000"}
  concurrency: {containerConcurrency: 10, targetUtilizationPercentage: 100}
  scale: {initial: 0, max: 30, stableWindow: 6s, scaleToZeroGracePeriod: 2s}
  activation: {holdTimeout: 60s, maxPending: 500}
`

// burstWantPods is ceil(BURST_CALLS / target) for burstManifest's target of 10 per pod.
func burstWantPods(calls int) int32 { return int32((calls + 9) / 10) }

// replicaSteps records every spec.replicas the Deployment takes while it runs, in order,
// with the time since start.
type replicaSteps struct {
	mu    sync.Mutex
	start time.Time
	steps []replicaStep
}

type replicaStep struct {
	replicas int32
	at       time.Duration
}

func watchReplicas(ctx context.Context, t *testing.T, name string) *replicaSteps {
	t.Helper()
	w, err := cs.AppsV1().Deployments("default").Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
	if err != nil {
		t.Fatal(err)
	}
	r := &replicaSteps{start: time.Now()}
	go func() {
		defer w.Stop()
		for ev := range w.ResultChan() {
			d, ok := ev.Object.(*appsv1.Deployment)
			if !ok || ev.Type == watch.Deleted || d.Spec.Replicas == nil {
				continue
			}
			r.mu.Lock()
			if n := len(r.steps); n == 0 || r.steps[n-1].replicas != *d.Spec.Replicas {
				r.steps = append(r.steps, replicaStep{*d.Spec.Replicas, time.Since(r.start)})
			}
			r.mu.Unlock()
		}
	}()
	return r
}

func (r *replicaSteps) get() []replicaStep {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]replicaStep(nil), r.steps...)
}

// A burst of BURST_CALLS calls from zero to a function with containerConcurrency 10: the
// caller's sidecar reports how many calls it holds, so the autoscaler asks for
// ceil(200 / 10) = 20 pods in the decision that sees the burst, instead of one pod and a
// ramp driven by the pods' own reports (docs/bursts.md has the before and after figures).
func TestFunction8BurstFromZeroRightSized(t *testing.T) {
	f := filepath.Join(t.TempDir(), "burst.yaml")
	if err := os.WriteFile(f, []byte(burstManifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := kubectl("apply", "-f", f); err != nil {
		t.Fatalf("kubectl apply: %v: %s", err, out)
	}
	defer kubectl("delete", "-f", f, "--wait=false")
	routed(t, "http://burst/%3Fms%3D1", func(g tally) bool { return g.ByStatus["200"] == 20 })
	atZero(t, "burst", 3*time.Minute)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	steps := watchReplicas(ctx, t, "burst")
	n := th.BurstCalls
	start := time.Now()
	got, err := callC(t, "http://burst/", n, n)
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if got.ByStatus["200"] != n {
		t.Fatalf("%d concurrent calls to burst at zero: %+v, want all %d to answer 200", n, got, n)
	}
	seen := steps.get()
	t.Logf("%d calls from zero to burst (1 s each, containerConcurrency 10): all answered in %.2fs, longest hold %.3fs; replicas %v",
		n, took.Seconds(), got.MaxColdStart, seen)
	want := burstWantPods(n)
	// The first decision may see only the first held call (its poke goes out at once, so a
	// lone call does not wait); the next must carry the whole burst. So the replica count
	// goes 0 → (1 →) want, not 1 → 2 → 3 … as pods report their own load.
	var ups []int32
	for _, s := range seen {
		if s.replicas > 0 {
			ups = append(ups, s.replicas)
		}
	}
	switch {
	case len(ups) == 0:
		t.Fatalf("burst never scaled up: replicas %v", seen)
	case ups[0] == want:
	case ups[0] == 1 && len(ups) > 1 && ups[1] == want:
	default:
		t.Errorf("replicas went %v, want 0 → (1 →) %d: the decision on the held burst should ask for ceil(%d / 10) pods at once", seen, want, n)
	}
}
