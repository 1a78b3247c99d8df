//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// revisionsManifest is a MeshFunction with revisions: the echo answers X-Version from
// VERSION, so the caller's tally says which revision answered. min 1 keeps every routed
// revision warm, so the split is measured without cold starts.
func revisionsManifest(version, traffic string) string {
	return `apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {name: rev, namespace: default}
spec:
  template:
    spec:
      containers:
      - name: function
        image: weft.dev/examples/echo:latest
        env: [{name: VERSION, value: ` + version + `}]
  scale: {min: 1, initial: 1, stableWindow: 6s, scaleToZeroGracePeriod: 2s}
  traffic:
` + traffic
}

// applyManifest writes doc to a file and kubectl-applies it.
func applyManifest(t *testing.T, name, doc string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(f, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := kubectl("apply", "-f", f); err != nil {
		t.Fatalf("kubectl apply %s: %v: %s", name, err, out)
	}
	return f
}

// jsonpath reads one field of MeshFunction rev.
func revField(path string) string {
	out, _ := kubectl("get", "mfn", "rev", "-o", "jsonpath={"+path+"}")
	return strings.TrimSpace(out)
}

// TestRevisions: a template change creates revision rev-00002 next to rev-00001; a 90/10
// split over 1,000 calls lands within ±5 points; the canary tag's host reaches only its
// revision; a rollback (spec.traffic back to rev-00001 at 100 %) loses no call.
func TestRevisions(t *testing.T) {
	f := applyManifest(t, "rev.yaml", revisionsManifest("v1", "  - {latestRevision: true, percent: 100}\n"))
	defer kubectl("delete", "-f", f, "--wait=false")
	routed(t, "http://rev/", func(g tally) bool { return g.ByVersion["v1"] == 20 })
	if got := revField(".status.latestReadyRevisionName"); got != "rev-00001" {
		t.Fatalf("latestReadyRevisionName %q, want rev-00001", got)
	}

	applyManifest(t, "rev.yaml", revisionsManifest("v2", `  - {revisionName: rev-00001, percent: 90}
  - {latestRevision: true, percent: 10, tag: canary}
`))
	eventually(t, 3*time.Minute, "rev-00002 ready and taking the latest 10 %", func() error {
		if got := revField(".status.traffic[1].revisionName"); got != "rev-00002" {
			return fmt.Errorf("status.traffic[1].revisionName %q (revisions %s)", got, revField(".status.revisions[*].name"))
		}
		return nil
	})
	routed(t, "http://canary-rev/", func(g tally) bool { return g.ByVersion["v2"] == 20 })

	const n = 1000
	got, err := callC(t, "http://rev/", n, 20)
	if err != nil {
		t.Fatal(err)
	}
	v1, v2 := got.ByVersion["v1"], got.ByVersion["v2"]
	t.Logf("90/10 split over %d calls: v1 %d, v2 %d, statuses %v", n, v1, v2, got.ByStatus)
	// ±5 points of 1,000 is ±50 calls. The binomial standard deviation of 900 is
	// sqrt(1000 × 0.9 × 0.1) ≈ 9.5, so 850..950 is more than 5 sigma wide: a correct split
	// never fails it, while 80/20 or 100/0 always does.
	if got.ByStatus["200"] != n || v1+v2 != n || v1 < 850 || v1 > 950 {
		t.Errorf("split v1=%d v2=%d of %d (statuses %v), want all 200 and v1 in 850..950", v1, v2, n, got.ByStatus)
	}

	canary, err := callC(t, "http://canary-rev/", 200, 20)
	if err != nil {
		t.Fatal(err)
	}
	if canary.ByVersion["v2"] != 200 {
		t.Errorf("the canary tag's host reached %v (statuses %v), want only v2 (rev-00002)", canary.ByVersion, canary.ByStatus)
	}

	// Rollback while calls flow: every call must be answered 200 by one revision or the other.
	stop := make(chan struct{})
	var mu sync.Mutex
	var rounds []tally
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			g, err := callC(t, "http://rev/", 50, 10)
			if err != nil {
				g = tally{Total: 50, Errors: 50, LastError: err.Error()}
			}
			mu.Lock()
			rounds = append(rounds, g)
			mu.Unlock()
		}
	}()
	applyManifest(t, "rev.yaml", revisionsManifest("v2", "  - {revisionName: rev-00001, percent: 100}\n"))
	routed(t, "http://rev/", func(g tally) bool { return g.ByVersion["v1"] == 20 })
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	total, failed := 0, 0
	for _, g := range rounds {
		total += g.Total
		failed += g.Total - g.ByStatus["200"]
	}
	t.Logf("rollback: %d calls in flight during it, %d failed", total, failed)
	if failed != 0 || total == 0 {
		t.Errorf("rollback under traffic: %d of %d calls failed, want 0 (rounds %+v)", failed, total, rounds)
	}
	if got := revField(".status.traffic[0].revisionName"); got != "rev-00001" {
		t.Errorf("after the rollback status.traffic[0].revisionName is %q, want rev-00001", got)
	}

	// Bad input at apply: a revision the function does not have is refused by the manager's
	// validating webhook, with the revisions it has; nothing changes.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte(revisionsManifest("v2", "  - {revisionName: rev-00009, percent: 100}\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := kubectl("apply", "-f", bad)
	t.Logf("kubectl apply with an unknown revision: %v: %s", err, strings.TrimSpace(out))
	if err == nil || !strings.Contains(out, `has no revision "rev-00009"`) || !strings.Contains(out, "rev-00002") {
		t.Errorf("kubectl apply naming revision rev-00009 was not refused with the revisions that exist: %v: %s", err, out)
	}
	if got := revField(".spec.traffic[0].revisionName"); got != "rev-00001" {
		t.Errorf("after the refused apply spec.traffic[0].revisionName is %q, want rev-00001 unchanged", got)
	}
}
