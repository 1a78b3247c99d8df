//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/leaderelection"
)

// haNS is where TestHA runs its workloads.
const haNS = "ha-e2e"

// haLease is the manager's leader-election Lease (cmd/manager leaseName).
const haLease = "manager.weft.dev"

// haFailover bounds a new leader after a crash by client-go's protocol. The dead leader
// renewed last at most a RetryPeriod (2 s) before the kill; a candidate tries every
// RetryPeriod stretched by up to JitterFactor (1.2), so every 2 to 4.4 s: it notices that
// last renewal up to 4.4 s late, counts the LeaseDuration (15 s) from then, and takes the
// Lease at its first try after that, up to 4.4 s later again — 23.8 s after the kill at
// worst (plus this test's 100 ms Lease polls). The bound was once 19 s, forgetting the
// jitter; a run took 19.002 s.
var haFailover = 15*time.Second + 2*time.Duration((1+leaderelection.JitterFactor)*float64(2*time.Second)) + 200*time.Millisecond

// TestHA runs install.yaml's three manager replicas (docs/ha.md) and crashes the leader
// (SIGKILL: no Lease release), twice, while a caller sends steady traffic through its
// sidecar to a routed Service and to a warm MeshFunction, and while a burst of calls holds
// for a MeshFunction at zero. Every call must succeed, another replica must hold the Lease
// within haFailover, and the burst must be served: its pokes reach the new leader through
// the followers (or, for a sidecar of the killed replica, after it reconnected). Then async
// calls must work on the last leader.
func TestHA(t *testing.T) {
	installRelease(t)
	threeReady(t)
	apply(t, haWorkloads)
	t.Cleanup(func() {
		_ = cs.CoreV1().Namespaces().Delete(context.Background(), haNS, metav1.DeleteOptions{})
	})
	caller := haPod(t, "caller")
	haPod(t, "echo")
	eventually(t, 3*time.Minute, "calls to echo and to the warm function", func() error {
		for _, u := range []string{"http://echo:9080/", "http://warm/"} {
			got, err := callFrom(caller, u, 5)
			if err != nil {
				return err
			}
			if got.ByStatus["200"] != 5 {
				return fmt.Errorf("%s: %+v", u, got)
			}
		}
		return nil
	})
	// The burst's route must be in the caller's sidecar before the kill (a call that finds no
	// route gets a 404, not a hold): one call starts it, then it goes back to zero.
	eventually(t, 3*time.Minute, "a call to the burst function", func() error {
		got, err := callFrom(caller, "http://burst/", 1)
		if err != nil {
			return err
		}
		if got.ByStatus["200"] != 1 {
			return fmt.Errorf("%+v", got)
		}
		return nil
	})
	atZeroIn(t, haNS, "burst", 3*time.Minute)

	// Steady traffic: one loop per target, 5 calls a round, across both kills.
	stop := make(chan struct{})
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		steady = map[string]*tally{"http://echo:9080/": {ByStatus: map[string]int{}}, "http://warm/": {ByStatus: map[string]int{}}}
		errs   []string
	)
	for u := range steady {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				got, err := callFrom(caller, u, 5)
				mu.Lock()
				if err != nil {
					errs = append(errs, err.Error())
				}
				steady[u].Total += got.Total
				for k, v := range got.ByStatus {
					steady[u].ByStatus[k] += v
				}
				mu.Unlock()
				time.Sleep(100 * time.Millisecond)
			}
		}()
	}
	time.Sleep(3 * time.Second)
	// Two rounds: the second kills the leader the first one elected, once the killed
	// replica's container is back and the burst function is at zero again (its last pod went
	// through the hand-off on the new leader, counting ACKs of sidecars on every replica).
	for round := 1; round <= 2; round++ {
		if round > 1 {
			threeReady(t)
			atZeroIn(t, haNS, "burst", 3*time.Minute)
		}
		killLeaderDuringBurst(t, caller, round)
	}
	time.Sleep(5 * time.Second) // steady traffic on the last leader
	close(stop)
	wg.Wait()
	for u, got := range steady {
		t.Logf("steady %s: %d calls %v", u, got.Total, got.ByStatus)
		if got.Total == 0 || got.ByStatus["200"] != got.Total {
			t.Errorf("steady traffic to %s across the failovers: %d calls %v, want all 200", u, got.Total, got.ByStatus)
		}
	}
	if len(errs) > 0 {
		t.Errorf("caller errors: %v", errs)
	}
	if w := replicasIn(t, haNS, "warm"); w < 1 {
		t.Errorf("the warm function has %d replicas after the failovers", w)
	}

	// Asynchronous calls work on the new leader: the NATS Service follows the leader's pod
	// label, the caller's sidecar reconnects to it, and the new leader's queue runner
	// consumes the calls.
	eventually(t, 2*time.Minute, "an async call accepted after the failover", func() error {
		got, err := asyncFrom(caller, "http://warm/", 1)
		if err != nil {
			return err
		}
		if got.ByStatus["202"] != 1 {
			return fmt.Errorf("probe call: %+v", got)
		}
		return nil
	})
	got, err := asyncFrom(caller, "http://warm/", 20)
	if err != nil || got.ByStatus["202"] != 20 {
		t.Fatalf("20 async calls after the failover: %+v %v, want all answered 202", got, err)
	}
	eventually(t, 2*time.Minute, "21 callbacks with status 200", func() error {
		c, err := callbacksAt(caller.Status.PodIP)
		if err != nil {
			return err
		}
		if c.ByStatus["200"] < 21 {
			return fmt.Errorf("callbacks so far: %+v", c)
		}
		return nil
	})
}

// asyncFrom asks the caller pod for n calls to target with "Prefer: respond-async" and a
// callback to itself.
func asyncFrom(caller corev1.Pod, target string, n int) (tally, error) {
	q := url.Values{"url": {target}, "n": {strconv.Itoa(n)}, "c": {"10"},
		"h": {"Prefer: respond-async", "X-Callback-Url: http://" + caller.Status.PodIP + ":8080/callback"}}
	client := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Get("http://" + caller.Status.PodIP + ":8080/call?" + q.Encode())
	if err != nil {
		return tally{}, err
	}
	defer resp.Body.Close()
	var out tally
	return out, json.NewDecoder(resp.Body).Decode(&out)
}

// threeReady waits for the three manager replicas.
func threeReady(t *testing.T) {
	t.Helper()
	eventually(t, 4*time.Minute, "three manager replicas ready", func() error {
		d, err := cs.AppsV1().Deployments("weft-system").Get(context.Background(), "weft-manager", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if d.Status.ReadyReplicas != 3 {
			return fmt.Errorf("%d of %d ready", d.Status.ReadyReplicas, ptrValue(d.Spec.Replicas))
		}
		return nil
	})
}

// killLeaderDuringBurst SIGKILLs the leader's manager and at once sends a burst of 30
// concurrent calls to the function burst, at zero: a new leader must hold the Lease within
// haFailover and every call of the burst must be answered 200.
func killLeaderDuringBurst(t *testing.T, caller corev1.Pod, round int) {
	t.Helper()
	ctx := context.Background()
	leader, leaderPod := haLeader(t)
	t.Logf("round %d: leader %s (pod %s)", round, leader, leaderPod.Name)
	killed := time.Now()
	pid := containerPid(t, leaderPod, "manager")
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("killing the leader's manager (pid %d): %v", pid, err)
	}
	// The burst goes out at once: its holds' pokes meet a mesh without a leader.
	type burstResult struct {
		got tally
		err error
	}
	burst := make(chan burstResult, 1)
	go func() {
		got, err := callFromC(caller, "http://burst/", 30, 30)
		burst <- burstResult{got, err}
	}()
	var next string
	for {
		l, err := cs.CoordinationV1().Leases("weft-system").Get(ctx, haLease, metav1.GetOptions{})
		if err == nil && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != leader {
			next = *l.Spec.HolderIdentity
			break
		}
		if time.Since(killed) > 2*haFailover {
			t.Fatalf("round %d: no new leader %s after the kill", round, time.Since(killed))
		}
		time.Sleep(100 * time.Millisecond)
	}
	failover := time.Since(killed)
	t.Logf("round %d: new leader %s after %s", round, next, failover.Round(10*time.Millisecond))
	if failover > haFailover {
		t.Errorf("round %d: new leader after %s, want within %s (lease duration 15 s plus two jittered retry periods)", round, failover, haFailover)
	}
	var b burstResult
	select {
	case b = <-burst:
	case <-time.After(3 * time.Minute):
		t.Fatalf("round %d: the burst did not finish within 3 minutes", round)
	}
	if b.err != nil {
		t.Fatalf("round %d: burst: %v", round, b.err)
	}
	t.Logf("round %d: burst from zero during the failover: %v, done %s after the kill (max cold start %.2fs)",
		round, b.got.ByStatus, time.Since(killed).Round(10*time.Millisecond), b.got.MaxColdStart)
	if b.got.ByStatus["200"] != 30 {
		t.Errorf("round %d: burst: %v (last error %q, body %q), want 30 answered 200", round, b.got.ByStatus, b.got.LastError, b.got.LastBody)
	}
}

func ptrValue(p *int32) int32 {
	if p == nil {
		return 0
	}
	return *p
}

// haLeader reads the Lease: the holder's identity and its pod (the identity starts with
// the pod's name, peer.Identity).
func haLeader(t *testing.T) (string, corev1.Pod) {
	t.Helper()
	var (
		id  string
		pod *corev1.Pod
	)
	eventually(t, time.Minute, "the Lease names a running manager pod", func() error {
		l, err := cs.CoordinationV1().Leases("weft-system").Get(context.Background(), haLease, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if l.Spec.HolderIdentity == nil {
			return fmt.Errorf("no holder")
		}
		id = *l.Spec.HolderIdentity
		name, _, _ := strings.Cut(id, "_")
		pod, err = cs.CoreV1().Pods("weft-system").Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !readyRunning(*pod) {
			return fmt.Errorf("pod %s not ready", name)
		}
		return nil
	})
	return id, *pod
}

func haPod(t *testing.T, app string) corev1.Pod {
	t.Helper()
	return readyPod(t, haNS, app, 4*time.Minute)
}

func replicasIn(t *testing.T, ns, name string) int32 {
	t.Helper()
	d, err := cs.AppsV1().Deployments(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ptrValue(d.Spec.Replicas)
}

func atZeroIn(t *testing.T, ns, name string, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, ns+"/"+name+" back at zero", func() error {
		d, err := cs.AppsV1().Deployments(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if ptrValue(d.Spec.Replicas) != 0 || d.Status.Replicas != 0 {
			return fmt.Errorf("%d replicas (%d pods)", ptrValue(d.Spec.Replicas), d.Status.Replicas)
		}
		return nil
	})
}

// haWorkloads: echo behind a Service, a caller, a warm MeshFunction (min 1) under steady
// traffic and one at zero for the burst.
var haWorkloads = `apiVersion: v1
kind: Namespace
metadata:
  name: ha-e2e
  labels: {weft.dev/inject: enabled}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: ha-e2e}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 9080, targetPort: 8080}]
---
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {name: warm, namespace: ha-e2e}
spec:
  port: 8080
  template:
    spec:
      containers:
      - name: function
        image: weft.dev/examples/echo:latest
        env: [{name: VERSION, value: warm}]
  scale: {initial: 1, min: 1, max: 2}
---
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {name: burst, namespace: ha-e2e}
spec:
  port: 8080
  template:
    spec:
      containers:
      - name: function
        image: weft.dev/examples/echo:latest
        env: [{name: VERSION, value: burst}]
  scale: {initial: 0, max: 3, stableWindow: 6s, scaleToZeroGracePeriod: 2s}
  activation: {holdTimeout: 120s, maxPending: 100}
` + strings.ReplaceAll(installDeployment("echo", "weft.dev/examples/echo:latest", "v1", "/"), "install-e2e", haNS) +
	strings.ReplaceAll(installDeployment("caller", "weft.dev/examples/caller:latest", "", "/healthz"), "install-e2e", haNS)
