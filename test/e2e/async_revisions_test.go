//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// arevManifest is a MeshFunction with revisions whose echo answers its VERSION, at zero
// when idle (min 0), so queued calls must wake the revisions.
func arevManifest(version, traffic string) string {
	return `apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {name: arev, namespace: default}
spec:
  template:
    spec:
      containers:
      - name: function
        image: weft.dev/examples/echo:latest
        env: [{name: VERSION, value: ` + version + `}]
  scale: {min: 0, initial: 1, stableWindow: 6s, scaleToZeroGracePeriod: 2s}
  traffic:
` + traffic
}

// arevField reads one field of MeshFunction arev.
func arevField(path string) string {
	out, _ := kubectl("get", "mfn", "arev", "-o", "jsonpath={"+path+"}")
	return strings.TrimSpace(out)
}

// asyncByVersion queues n async calls to target and waits for their n callbacks, returning
// how many each version ran (callbacks are counted since before the calls).
func asyncByVersion(t *testing.T, target string, n int, within time.Duration) map[string]int {
	t.Helper()
	ps := pods(t, "app=caller")
	if len(ps) == 0 {
		t.Fatal("no caller pod")
	}
	before, err := callbacksAt(ps[0].Status.PodIP)
	if err != nil {
		t.Fatal(err)
	}
	got, ip := callAsync(t, target, n)
	if got.ByStatus["202"] != n {
		t.Fatalf("%d async calls to %s: %+v, want all answered 202", n, target, got)
	}
	out := map[string]int{}
	eventually(t, within, fmt.Sprintf("%d callbacks from %s", n, target), func() error {
		c, err := callbacksAt(ip)
		if err != nil {
			return err
		}
		total := 0
		for v, k := range c.ByVersion {
			out[v] = k - before.ByVersion[v]
			total += out[v]
		}
		if c.ByStatus["200"]-before.ByStatus["200"] < n || total < n {
			return fmt.Errorf("callbacks so far: %+v (before %+v)", c, before)
		}
		return nil
	})
	return out
}

// revisionReplicas is status.revisions[name].replicas of arev.
func revisionReplicas(name string) string {
	return arevField(`.status.revisions[?(@.name=="` + name + `")].replicas`)
}

// TestAsyncRevisions (issue 19 item 4): async calls to a function split 50/50 between two
// revisions run on both, in proportion, by the split in force when they are dispatched;
// with both revisions at zero, queued calls wake each revision the split sends calls to; a
// MeshRoute whose destination names the function follows the split too.
func TestAsyncRevisions(t *testing.T) {
	f := applyManifest(t, "arev.yaml", arevManifest("v1", "  - {latestRevision: true, percent: 100}\n"))
	defer kubectl("delete", "-f", f, "--wait=false")
	routed(t, "http://arev/", func(g tally) bool { return g.ByVersion["v1"] == 20 })
	applyManifest(t, "arev.yaml", arevManifest("v2", `  - {revisionName: arev-00001, percent: 50}
  - {latestRevision: true, percent: 50}
`))
	eventually(t, 3*time.Minute, "arev-00002 ready and taking 50 %", func() error {
		if got := arevField(".status.traffic[1].revisionName"); got != "arev-00002" {
			return fmt.Errorf("status.traffic[1].revisionName %q", got)
		}
		return nil
	})
	routed(t, "http://arev/", func(g tally) bool { return g.ByVersion["v1"] > 0 && g.ByVersion["v2"] > 0 })

	// 400 queued calls at 50/50: the binomial standard deviation is 10 calls, so 160..240
	// is 4 sigma wide; 100/0 or 75/25 (say, every call on the latest revision, or dispatch
	// by the publisher's pick followed by a wrong share) fails it.
	const n = 400
	got := asyncByVersion(t, "http://arev/", n, 4*time.Minute)
	t.Logf("async 50/50 over %d queued calls: %v", n, got)
	if got["v1"]+got["v2"] != n || got["v1"] < 160 || got["v1"] > 240 {
		t.Errorf("async split %v of %d, want v1 and v2 each in 160..240", got, n)
	}

	// Both revisions go to zero when idle; queued calls wake each one for its share.
	eventually(t, 4*time.Minute, "both revisions at zero", func() error {
		a, b := revisionReplicas("arev-00001"), revisionReplicas("arev-00002")
		if a != "0" || b != "0" {
			return fmt.Errorf("replicas arev-00001 %q, arev-00002 %q", a, b)
		}
		return nil
	})
	eventually(t, 2*time.Minute, "no pod of arev left", func() error {
		if ps := pods(t, "weft.dev/function=arev"); len(ps) > 0 {
			return fmt.Errorf("%d pods of arev, first %s (%s)", len(ps), ps[0].Name, ps[0].Status.Phase)
		}
		return nil
	})
	start := time.Now()
	cold := asyncByVersion(t, "http://arev/", 100, 4*time.Minute)
	t.Logf("100 async calls with both revisions at zero: %v, all answered within %s", cold, time.Since(start).Round(time.Second))
	if cold["v1"] == 0 || cold["v2"] == 0 || cold["v1"]+cold["v2"] != 100 {
		t.Errorf("calls queued while both revisions were at zero ran %v, want both revisions woken and 100 calls", cold)
	}

	// A MeshRoute naming the function follows its split (synchronous calls here).
	// (The Service gives the host a ClusterIP and DNS name for the caller's captured call.)
	mr := applyManifest(t, "arev-route.yaml", `apiVersion: v1
kind: Service
metadata: {name: arev-route, namespace: default}
spec: {selector: {app: arev-route-none}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshRoute
metadata: {name: arev-route, namespace: default}
spec:
  hosts: [arev-route]
  http:
  - route:
    - {function: arev, weight: 1}
`)
	defer kubectl("delete", "-f", mr, "--wait=false")
	routed(t, "http://arev-route/", func(g tally) bool { return g.ByStatus["200"] == 20 })
	sync, err := callC(t, "http://arev-route/", n, 20)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("MeshRoute to the function over %d calls: %v (statuses %v)", n, sync.ByVersion, sync.ByStatus)
	if sync.ByStatus["200"] != n || sync.ByVersion["v1"] < 160 || sync.ByVersion["v1"] > 240 {
		t.Errorf("MeshRoute to the function split %v (statuses %v), want v1 and v2 each in 160..240", sync.ByVersion, sync.ByStatus)
	}
}
