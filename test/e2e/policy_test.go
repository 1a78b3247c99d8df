//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// policyCall makes n calls to url from the first ready pod of selector (a caller example
// pod) through its sidecar.
func policyCall(t *testing.T, selector, url string, n int) (tally, error) {
	t.Helper()
	for _, p := range pods(t, selector) {
		if readyRunning(p) && p.Status.PodIP != "" {
			return callFrom(p, url, n)
		}
	}
	return tally{}, fmt.Errorf("no ready %s pod yet", selector)
}

const policyIntruder = `
apiVersion: v1
kind: ServiceAccount
metadata: {name: intruder, namespace: default}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: caller-intruder, namespace: default}
spec:
  replicas: 1
  selector:
    matchLabels: {app: caller-intruder}
  template:
    metadata:
      labels: {app: caller-intruder}
    spec:
      serviceAccountName: intruder
      terminationGracePeriodSeconds: 5
      containers:
      - name: caller
        image: weft.dev/examples/caller:latest
        readinessProbe:
          httpGet: {path: /healthz, port: 8080}
          periodSeconds: 1
`

const policyHello = `
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshPolicy
metadata: {name: hello-callers, namespace: default}
spec:
  selector:
    labels: {weft.dev/function: hello}
  action: ALLOW
  rules:
  - from:
    - principals: [default/default]
    to:
    - hosts: [hello]
`

// TestPolicy (issue 16 point 5): a MeshPolicy lets only the identity of the demo's caller
// (ServiceAccount default/default) call the function hello. A second caller pod running as
// ServiceAccount intruder gets 403 from hello's sidecar with a body naming the policy and
// its identity, while the allowed caller keeps getting 200; hello's sidecar counts both,
// and the policy's status is Ready.
func TestPolicy(t *testing.T) {
	apply(t, policyIntruder)
	t.Cleanup(func() {
		_, _ = kubectl("delete", "--ignore-not-found", "-n", "default", "meshpolicy/hello-callers", "deployment/caller-intruder", "serviceaccount/intruder")
	})
	// Both callers reach hello before the policy (the mesh may still be starting).
	routed(t, "http://hello/", func(g tally) bool { return g.ByStatus["200"] == 20 })
	eventually(t, 3*time.Minute, "the intruder caller reaching hello without a policy", func() error {
		got, err := policyCall(t, "app=caller-intruder", "http://hello/", 5)
		if err != nil {
			return err
		}
		if got.ByStatus["200"] != 5 {
			return fmt.Errorf("answers %+v", got)
		}
		return nil
	})

	apply(t, policyHello)
	var denied tally
	eventually(t, 2*time.Minute, "hello's sidecar refusing the intruder", func() error {
		got, err := policyCall(t, "app=caller-intruder", "http://hello/", 10)
		if err != nil {
			return err
		}
		if got.ByStatus["403"] != 10 {
			return fmt.Errorf("answers %+v", got)
		}
		denied = got
		return nil
	})
	t.Logf("intruder: %+v", denied)
	if !strings.Contains(denied.LastBody, "MeshPolicy default/hello-callers") || !strings.Contains(denied.LastBody, "spiffe://cluster.local/ns/default/sa/intruder") {
		t.Errorf("403 body %q does not name the policy and the caller's identity", denied.LastBody)
	}
	allowed, err := policyCall(t, "app=caller", "http://hello/", 20)
	if err != nil || allowed.ByStatus["200"] != 20 {
		t.Fatalf("the allowed caller under the policy: %+v %v, want 20 × 200", allowed, err)
	}
	t.Logf("allowed caller: %+v", allowed)

	var allow, deny float64
	for _, p := range pods(t, "weft.dev/function=hello") {
		if !readyRunning(p) {
			continue
		}
		a, err1 := sidecarStats(p, "weft_authz_requests_total", `decision="allow"`, `policy="default/hello-callers"`)
		d, err2 := sidecarStats(p, "weft_authz_requests_total", `decision="deny"`, `policy="default/hello-callers"`)
		if err1 != nil || err2 != nil {
			t.Errorf("stats of %s: %v %v", p.Name, err1, err2)
		}
		allow, deny = allow+a, deny+d
	}
	t.Logf("hello sidecars: weft_authz_requests_total allow=%v deny=%v", allow, deny)
	if allow < 20 || deny < 10 {
		t.Errorf("counted %v allowed and %v denied calls; want at least 20 and 10", allow, deny)
	}

	eventually(t, time.Minute, "MeshPolicy default/hello-callers Ready", func() error {
		out, err := kubectl("get", "meshpolicy", "-n", "default", "hello-callers", "-o",
			`jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].reason} {.status.syncedSidecars}`)
		if err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		if !strings.HasPrefix(out, "True ") {
			return fmt.Errorf("Ready: %s", out)
		}
		t.Logf("hello-callers status: %s", out)
		return nil
	})
}
