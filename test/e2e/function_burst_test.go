//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
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

// burstWatch records, while a burst runs, every spec.replicas the function's Deployment
// takes (in order, with the time since start) and when the first of its pods was Ready.
type burstWatch struct {
	mu         sync.Mutex
	start      time.Time
	steps      []replicaStep
	firstReady time.Duration // 0 until a pod is Ready
}

type replicaStep struct {
	Replicas int32
	At       time.Duration
}

func (s replicaStep) String() string { return fmt.Sprintf("%d@%.3fs", s.Replicas, s.At.Seconds()) }

func watchBurst(ctx context.Context, t *testing.T, name string) *burstWatch {
	t.Helper()
	dw, err := cs.AppsV1().Deployments("default").Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
	if err != nil {
		t.Fatal(err)
	}
	pw, err := cs.CoreV1().Pods("default").Watch(ctx, metav1.ListOptions{LabelSelector: "weft.dev/function=" + name})
	if err != nil {
		dw.Stop()
		t.Fatal(err)
	}
	b := &burstWatch{start: time.Now()}
	go func() {
		defer dw.Stop()
		for ev := range dw.ResultChan() {
			d, ok := ev.Object.(*appsv1.Deployment)
			if !ok || ev.Type == watch.Deleted || d.Spec.Replicas == nil {
				continue
			}
			b.mu.Lock()
			if n := len(b.steps); n == 0 || b.steps[n-1].Replicas != *d.Spec.Replicas {
				b.steps = append(b.steps, replicaStep{*d.Spec.Replicas, time.Since(b.start)})
			}
			b.mu.Unlock()
		}
	}()
	go func() {
		defer pw.Stop()
		for ev := range pw.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok || !readyRunning(*p) {
				continue
			}
			b.mu.Lock()
			if b.firstReady == 0 {
				b.firstReady = time.Since(b.start)
			}
			b.mu.Unlock()
		}
	}()
	return b
}

func (b *burstWatch) get() ([]replicaStep, time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]replicaStep(nil), b.steps...), b.firstReady
}

// A burst of BURST_CALLS calls from zero to a function with containerConcurrency 10: the
// caller's sidecar reports how many calls it holds, so the autoscaler asks for
// ceil(200 / 10) = 20 pods from the held counts alone, before any pod is ready to report
// load, instead of one pod that the capped caller never lets see more than 10 calls
// (docs/bursts.md has the before and after figures).
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
	w := watchBurst(ctx, t, "burst")
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
	steps, firstReady := w.get()
	t.Logf("%d calls from zero to burst (1 s each, containerConcurrency 10): all answered in %.2fs, longest hold %.3fs; replicas %v, first pod ready at %.3fs",
		n, took.Seconds(), got.MaxColdStart, steps, firstReady.Seconds())
	want := burstWantPods(n)
	// The first count at or above want must be want itself, asked for before any pod was
	// ready: only the held counts can have driven it. Later decisions see the pods' own
	// reports too; in the second the held calls move to the pods both count (the window
	// keeps a second's highest held count), which may add a pod or two; that is logged.
	var first replicaStep
	for _, s := range steps {
		if s.Replicas >= want {
			first = s
			break
		}
	}
	switch {
	case first.Replicas == 0:
		t.Errorf("replicas went %v, never %d: the held calls should ask for ceil(%d / 10) pods", steps, want, n)
	case first.Replicas != want:
		t.Errorf("replicas went %v: the first count at or above %d is %d, want exactly %d", steps, want, first.Replicas, want)
	case firstReady == 0 || first.At > firstReady:
		t.Errorf("replicas reached %d at %.3fs, first pod ready at %.3fs: want the held counts alone to ask for them, before any pod reports load",
			want, first.At.Seconds(), firstReady.Seconds())
	}
}
