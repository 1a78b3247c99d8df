//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftmesh/weft/internal/sandbox"
)

// TestOutageWithALostPod is issue 12 item 5's scenario: the control plane is unreachable
// for 30 s (the manager is killed, and its xDS port refuses connections until the 30 s are
// up: weft dev's supervisor would restart it in 2 s), and meanwhile a backend pod is
// deleted. Callers' sidecars learn nothing of the deletion until they are back on xDS, so
// they must skip the vanished pod themselves: fail its connects fast and eject it. Traffic
// runs throughout at 20 calls a second to a route with Istio's default retries, which must
// lose none, and to one without retries, which must lose under 1 %.
func TestOutageWithALostPod(t *testing.T) {
	if out, err := kubectl("apply", "-f", "test/e2e/testdata/outage.yaml"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	urls := []string{"http://outage-retry:9080/", "http://outage-direct:9080/"}
	for _, u := range urls {
		routed(t, u, func(g tally) bool { return g.ByStatus["200"] == 20 })
	}
	eventually(t, 3*time.Minute, "three ready outage pods", func() error {
		n := 0
		for _, p := range pods(t, "app=outage") {
			if readyRunning(p) {
				n++
			}
		}
		if n != 3 {
			return fmt.Errorf("%d ready", n)
		}
		return nil
	})

	type count struct{ sent, failed int }
	var mu sync.Mutex
	counts := map[string]*count{}
	var lastErr = map[string]string{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, u := range urls {
		counts[u] = &count{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				got, err := callC(t, u, 20, 5) // 20 calls a second
				mu.Lock()
				counts[u].sent += 20
				if err != nil {
					counts[u].failed += 20
					lastErr[u] = err.Error()
				} else if ok := got.ByStatus["200"]; ok != 20 {
					counts[u].failed += 20 - ok
					lastErr[u] = got.LastError + " " + got.LastBody
				}
				mu.Unlock()
			}
		}()
	}
	pause := func(d time.Duration) {
		select {
		case <-time.After(d):
		case <-stop:
		}
	}
	pause(5 * time.Second)

	// Marked as the local mesh's: a run killed before the deferred unblock leaves the rule,
	// and the next start removes it (TestStartCleansUpAfterACrash).
	block := append([]string{"INPUT"}, sandbox.HostRule("-p", "tcp", "--dport", "18000", "-j", "REJECT", "--reject-with", "tcp-reset")...)
	if out, err := exec.Command("iptables", append([]string{"-I"}, block...)...).CombinedOutput(); err != nil {
		t.Fatalf("iptables: %v: %s", err, out)
	}
	unblocked := false
	unblock := func() {
		if !unblocked {
			unblocked = true
			_ = exec.Command("iptables", append([]string{"-D"}, block...)...).Run()
		}
	}
	defer unblock()
	down := time.Now()
	_ = syscall.Kill(managerPID(t), syscall.SIGKILL)
	pause(2 * time.Second)
	victim := pods(t, "app=outage")[0]
	if err := cs.CoreV1().Pods("default").Delete(context.Background(), victim.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	pause(time.Until(down.Add(30 * time.Second)))
	unblock()
	t.Logf("control plane reachable again after %v; pod %s deleted 2 s into the outage", time.Since(down).Round(time.Second), victim.Name)
	pause(30 * time.Second)
	close(stop)
	wg.Wait()
	for _, u := range urls {
		c := counts[u]
		t.Logf("%s: %d of %d calls failed (%.2f %%); last failure: %s", u, c.failed, c.sent, 100*float64(c.failed)/float64(c.sent), lastErr[u])
	}
	// The goal: 0 with Istio's default retries. Full-suite runs used to lose 2-4
	// calls per route with no answer for 30 s: the caller's sidecar wrote them on pooled
	// connections the deleted pod had closed while they were idle, its FIN's readiness
	// event lost (connio.Conn), and the pod gone, so nothing answered or reset them
	// (TestPooledConnectionsTheHostClosedAreNotReused). A call that waits on its upstream
	// 5 s is logged by the caller's sidecar ("slow upstream exchange", with its TCP state):
	// see /tmp/weft-e2e/pods/default_caller-*/weft-sidecar.log when this fails.
	if c := counts[urls[0]]; c.failed != 0 {
		t.Errorf("with Istio's default retries %d of %d calls failed, want 0", c.failed, c.sent)
	}
	if c := counts[urls[1]]; c.failed*100 >= c.sent {
		t.Errorf("without retries %d of %d calls failed, want under 1 %%", c.failed, c.sent)
	}
}
