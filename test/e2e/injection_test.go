//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftmesh/weft/testenv"
)

// injectionNS starts without the weft.dev/inject label; the test labels it halfway.
const injectionNS = "injection-e2e"

// injectionManifest: a Service with no MeshRoute (echo), a gRPC Service (a port named grpc), a
// Redis Service (TCP), and the client whose calls are measured. No pod says how it is
// intercepted, so the manager's default (iptables) applies once the namespace is injected.
const injectionManifest = `
apiVersion: v1
kind: Namespace
metadata: {name: injection-e2e}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: injection-e2e}
spec: {selector: {app: plain}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: grpc-echo, namespace: injection-e2e}
spec: {selector: {app: grpc-echo}, ports: [{name: grpc, port: 9090, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: redis, namespace: injection-e2e}
spec: {selector: {app: redis}, ports: [{port: 6379, targetPort: 6379}]}
`

func injectionDeployment(app, image, args, port, probe string) string {
	d := strings.ReplaceAll(transparentDeployment(app, image, args, port, probe), "\n      annotations: {weft.dev/interception: iptables}", "")
	return strings.ReplaceAll(d, "namespace: "+transparentNS, "namespace: "+injectionNS)
}

// TestInjectingANamespaceKeepsItsCalls is issue 15's check that a namespace can be injected
// without breaking the calls it made before: the same calls, made by the same unmodified
// client before and after the namespace is labelled and its pods restarted, give the same
// status codes and the same answers (what the servers saw of the request included), and
// after injection they went through the client's sidecar.
func TestInjectingANamespaceKeepsItsCalls(t *testing.T) {
	if _, err := exec.LookPath("redis-cli"); err != nil {
		testenv.Missing(t, "redis-cli is not installed")
	}
	m := injectionManifest +
		injectionDeployment("plain", "weft.dev/examples/echo:latest", "[]", "8080", "/") +
		injectionDeployment("grpc-echo", "weft.dev/examples/grpcecho:latest", "[serve]", "8080", "") +
		injectionDeployment("redis", "redis:7", `["--port", "6379", "--protected-mode", "no", "--save", "", "--appendonly", "no"]`, "6379", "") +
		injectionDeployment("client", "weft.dev/examples/caller:latest", "[]", "8080", "/healthz")
	f := filepath.Join(t.TempDir(), "injection.yaml")
	if err := os.WriteFile(f, []byte(m), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := kubectl("apply", "-f", f); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Namespaces().Delete(context.Background(), injectionNS, metav1.DeleteOptions{})
	})

	// An HTTP server outside the mesh (on the bridge's host side), answering the status the
	// path names: the passthrough destination.
	ln, err := net.Listen("tcp", "10.244.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/"))
		if err != nil || code < 200 || code > 599 {
			code = 200
		}
		w.Header().Set("X-Outside", "yes")
		w.WriteHeader(code)
		fmt.Fprintf(w, "outside %s %s host=%s probe=%s\n", r.Method, r.URL.RequestURI(), r.Host, r.Header.Get("X-Probe"))
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	outside := "http://" + ln.Addr().String()

	apps := []string{"plain", "grpc-echo", "redis", "client"}
	for _, a := range apps {
		injectionPod(t, a, false)
	}
	before := measureCalls(t, injectionPod(t, "client", false), outside)
	t.Logf("before injection: %d calls measured", len(before))
	for _, k := range mapsKeys(before) {
		t.Logf("  %s → %s", k, before[k])
	}

	if out, err := kubectl("label", "namespace", injectionNS, "weft.dev/inject=enabled"); err != nil {
		t.Fatalf("kubectl label: %v\n%s", err, out)
	}
	if err := cs.CoreV1().Pods(injectionNS).DeleteCollection(context.Background(), metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, a := range apps {
		injectionPod(t, a, true)
	}
	client := injectionPod(t, "client", true)
	// Injected with the manager's default interception: capture, and no proxy settings.
	if !slices.ContainsFunc(client.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == "weft-init" }) {
		t.Errorf("the injected client pod has no weft-init init container (the default interception should be iptables): %+v", client.Spec.InitContainers)
	}
	for _, e := range client.Spec.Containers[0].Env {
		if strings.EqualFold(e.Name, "http_proxy") {
			t.Errorf("the injected client app has %s=%s", e.Name, e.Value)
		}
	}

	stat := func(metric string, labels ...string) float64 {
		v, err := sidecarStats(client, metric, labels...)
		if err != nil {
			t.Fatalf("client sidecar stats: %v", err)
		}
		return v
	}
	plainCluster := `cluster="outbound|80||plain.` + injectionNS + `.svc.cluster.local"`
	grpcCluster := `cluster="outbound|9090||grpc-echo.` + injectionNS + `.svc.cluster.local"`
	c0 := []float64{stat("weft_cluster_requests_total", plainCluster), stat("weft_cluster_requests_total", grpcCluster),
		stat("weft_tcp_connections_total", "redis."+injectionNS), stat("weft_passthrough_requests_total") + stat("weft_passthrough_connections_total")}

	// The client's sidecar needs its routes before the first call; until then the answers
	// may differ, so compare until they match (or time runs out and the diff is shown).
	var after map[string]string
	deadline := time.Now().Add(2 * time.Minute)
	for {
		after = measureCalls(t, client, outside)
		d := cmp.Diff(before, after)
		if d == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("calls answer differently after injection (-before +after):\n%s", d)
		}
		time.Sleep(2 * time.Second)
	}
	c1 := []float64{stat("weft_cluster_requests_total", plainCluster), stat("weft_cluster_requests_total", grpcCluster),
		stat("weft_tcp_connections_total", "redis."+injectionNS), stat("weft_passthrough_requests_total") + stat("weft_passthrough_connections_total")}
	for i, what := range []string{"HTTP to plain (" + plainCluster + ")", "gRPC to grpc-echo (" + grpcCluster + ")", "TCP to redis", "passthrough to " + outside} {
		if c1[i] <= c0[i] {
			t.Errorf("%s: the client sidecar's counter went %v → %v over the calls after injection: they bypassed the sidecar", what, c0[i], c1[i])
		}
	}
}

// injectionPod waits for a ready pod of app in injectionNS, with the sidecar or without it.
func injectionPod(t *testing.T, app string, injected bool) corev1.Pod {
	t.Helper()
	var pod corev1.Pod
	eventually(t, 4*time.Minute, fmt.Sprintf("a ready %s pod in %s (injected: %v)", app, injectionNS, injected), func() error {
		l, err := cs.CoreV1().Pods(injectionNS).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + app})
		if err != nil {
			return err
		}
		for _, p := range l.Items {
			has := slices.ContainsFunc(p.Spec.Containers, func(c corev1.Container) bool { return c.Name == "weft-sidecar" })
			if has == injected && p.DeletionTimestamp == nil && readyRunning(p) {
				pod = p
				return nil
			}
		}
		return fmt.Errorf("%d %s pods, none ready with injected=%v", len(l.Items), app, injected)
	})
	return pod
}

var servedBy = regexp.MustCompile(`served-by=\[[^\]]*\]`)

// measureCalls makes each call from the client pod's network and mount namespaces (its
// resolv.conf, its capture rules) and returns what each answered, with what legitimately
// changes across a restart (pod names) taken out.
func measureCalls(t *testing.T, client corev1.Pod, outside string) map[string]string {
	t.Helper()
	pid := containerPid(t, client, "client")
	run := func(args ...string) (string, int) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(pid), "-n", "-m"}, args...)...).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok { //nolint:errorlint // the exit code is the measurement
			code = ee.ExitCode()
		} else if err != nil {
			code = -1
		}
		return string(out), code
	}
	// echo answers with what it received; keep what the client chose to send.
	echoCall := func(args ...string) string {
		out, code := run(append([]string{"curl", "-sS", "--max-time", "10", "-H", "X-Probe: 1", "-w", "\n%{http_code}"}, args...)...)
		body, status, _ := strings.Cut(strings.TrimSpace(out), "\n")
		status = strings.TrimSpace(status)
		if code != 0 {
			return fmt.Sprintf("curl exit %d: %s", code, out)
		}
		var r struct {
			Version, Method, Host, Path, Query string
			Headers                            map[string][]string
		}
		if err := json.Unmarshal([]byte(body), &r); err != nil {
			return "status " + status + " body " + body
		}
		return fmt.Sprintf("status %s version=%s method=%s host=%s path=%s query=%s x-probe=%v user-agent=%v content-type=%v",
			status, r.Version, r.Method, r.Host, r.Path, r.Query, r.Headers["X-Probe"], r.Headers["User-Agent"], r.Headers["Content-Type"])
	}
	got := map[string]string{
		"http plain GET":        echoCall("http://plain/a/b?x=1&y=2"),
		"http plain POST":       echoCall("-X", "POST", "-H", "Content-Type: text/plain", "--data-binary", "hello", "http://plain/post"),
		"http plain by FQDN":    echoCall("http://plain." + injectionNS + ".svc.cluster.local/fqdn"),
		"http plain by ns name": echoCall("http://plain." + injectionNS + "/ns"),
	}
	for _, code := range []int{200, 404, 503} {
		out, rc := run("curl", "-sS", "--max-time", "10", "-H", "X-Probe: 1", "-w", "\n%{http_code}", fmt.Sprintf("%s/status/%d", outside, code))
		got[fmt.Sprintf("http outside /status/%d", code)] = fmt.Sprintf("exit %d: %s", rc, strings.TrimSpace(out))
	}
	out, rc := run("curl", "-sS", "--max-time", "10", "-o", "/dev/null", "http://no-such-service."+injectionNS+".svc.cluster.local/")
	got["http unknown name"] = fmt.Sprintf("exit %d", rc) // curl's 6: the name does not resolve, injected or not
	_ = out
	var redis []string
	for _, cmd := range [][]string{{"PING"}, {"SET", "k", "v1"}, {"GET", "k"}, {"APPEND", "k", "-more"}, {"GET", "k"}, {"DEL", "k"}, {"GET", "k"}, {"NOSUCHCOMMAND"}} {
		o, rc := run(append([]string{"redis-cli", "-h", "redis", "-p", "6379"}, cmd...)...)
		redis = append(redis, fmt.Sprintf("%s → %q (exit %d)", strings.Join(cmd, " "), strings.TrimSpace(strings.SplitN(o, "\n", 2)[0]), rc))
	}
	got["tcp redis-cli"] = strings.Join(redis, "; ")
	o, rc := run(filepath.Join(root, "bin", "grpcecho"), "call", "-target", "grpc-echo:9090", "-n", "3")
	got["grpc health check and watch"] = fmt.Sprintf("exit %d: %s", rc, servedBy.ReplaceAllString(strings.TrimSpace(o), "served-by=[<pod>]"))
	return got
}

func mapsKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
