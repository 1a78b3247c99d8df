//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"github.com/weftmesh/weft/testenv"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// transparentNS is injected, and every pod in it asks for iptables capture: the apps get
// no proxy settings and reach Services by DNS name, as in a cluster (issue 15 item 7).
const transparentNS = "transparent-e2e"

// transparentManifest: an echo Service with no MeshRoute, an echo Service with a MeshRoute
// that sets headers, grpcecho behind a port named grpc, wsecho, redis-server behind a port
// named redis, and the caller (the client pod whose network namespace the calls come from).
const transparentManifest = `
apiVersion: v1
kind: Namespace
metadata: {name: transparent-e2e, labels: {weft.dev/inject: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: transparent-e2e}
spec: {selector: {app: plain}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: routed, namespace: transparent-e2e}
spec: {selector: {app: routed}, ports: [{name: http, port: 9080, targetPort: 8080}]}
---
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshRoute
metadata: {name: routed, namespace: transparent-e2e}
spec:
  hosts: [routed]
  http:
  - route: [{service: routed, port: 9080}]
    headers:
      request: {set: {x-weft-captured: by-meshroute}}
      response: {set: {x-weft-route: routed}}
---
apiVersion: v1
kind: Service
metadata: {name: grpc-echo, namespace: transparent-e2e}
spec: {selector: {app: grpc-echo}, ports: [{name: grpc, port: 9090, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: ws-echo, namespace: transparent-e2e}
spec: {selector: {app: ws-echo}, ports: [{name: http, port: 8081, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: redis, namespace: transparent-e2e}
spec: {selector: {app: redis}, ports: [{name: redis, port: 6379, targetPort: 6379}, {name: http, port: 8080, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: redis-solo, namespace: transparent-e2e}
spec: {selector: {app: redis-solo}, ports: [{port: 6379, targetPort: 6379}]}
---
# redis: a pod whose first container port is Redis (unnamed, as users write it) and whose
# second container serves HTTP. The app port must be 8080 (inject.appPortOf), and 6379 must
# reach redis through the sidecar's inbound TCP passthrough.
apiVersion: apps/v1
kind: Deployment
metadata: {name: redis, namespace: transparent-e2e}
spec:
  replicas: 1
  selector: {matchLabels: {app: redis}}
  template:
    metadata:
      labels: {app: redis}
      annotations: {weft.dev/interception: iptables}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: redis
        image: redis:7
        args: ["--port", "6379", "--protected-mode", "no", "--save", "", "--appendonly", "no"]
        ports: [{containerPort: 6379}]
      - name: api
        image: weft.dev/examples/echo:latest
        env: [{name: VERSION, value: redis-api}]
        ports: [{containerPort: 8080}]
        readinessProbe: {periodSeconds: 1, httpGet: {path: /, port: 8080}}
`

// transparentDeployment is one Deployment of the namespace, annotated for iptables capture.
func transparentDeployment(app, image, args, port, probe string) string {
	p := ""
	if probe != "" {
		p = fmt.Sprintf("\n        readinessProbe: {periodSeconds: 1, httpGet: {path: %s, port: %s}}", probe, port)
	}
	return fmt.Sprintf(`---
apiVersion: apps/v1
kind: Deployment
metadata: {name: %[1]s, namespace: transparent-e2e}
spec:
  replicas: 1
  selector: {matchLabels: {app: %[1]s}}
  template:
    metadata:
      labels: {app: %[1]s}
      annotations: {weft.dev/interception: iptables}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: %[1]s
        image: %[2]s
        args: %[3]s
        env: [{name: VERSION, value: %[1]s}]
        ports: [{containerPort: %[4]s}]%[5]s
`, app, image, args, port, p)
}

func applyTransparent(t *testing.T) {
	t.Helper()
	m := transparentManifest +
		transparentDeployment("plain", "weft.dev/examples/echo:latest", "[]", "8080", "/") +
		transparentDeployment("routed", "weft.dev/examples/echo:latest", "[]", "8080", "/") +
		transparentDeployment("grpc-echo", "weft.dev/examples/grpcecho:latest", "[serve]", "8080", "") +
		transparentDeployment("ws-echo", "weft.dev/examples/wsecho:latest", "[]", "8080", "/healthz") +
		transparentDeployment("redis-solo", "redis:7", `["--port", "6379", "--protected-mode", "no", "--save", "", "--appendonly", "no"]`, "6379", "") +
		transparentDeployment("client", "weft.dev/examples/caller:latest", "[]", "8080", "/healthz")
	f := filepath.Join(t.TempDir(), "transparent.yaml")
	if err := os.WriteFile(f, []byte(m), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := kubectl("apply", "-f", f); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Namespaces().Delete(context.Background(), transparentNS, metav1.DeleteOptions{})
	})
}

func transparentPod(t *testing.T, app string) corev1.Pod {
	t.Helper()
	return readyPod(t, transparentNS, app, 4*time.Minute)
}

// sidecarStats is the sum of the values of the /stats lines (the sidecar's read-only port on
// the pod IP) that start with metric and contain every one of labels.
func sidecarStats(pod corev1.Pod, metric string, labels ...string) (float64, error) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}}
	resp, err := client.Get("http://" + pod.Status.PodIP + ":15020/stats")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("/stats: %s", resp.Status)
	}
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
lines:
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, metric+"{") && !strings.HasPrefix(l, metric+" ") {
			continue
		}
		for _, s := range labels {
			if !strings.Contains(l, s) {
				continue lines
			}
		}
		v, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("stats line %q: %w", l, err)
		}
		sum += v
	}
	return sum, sc.Err()
}

// TestTransparentCapture: apps with no proxy settings, in pods with iptables capture, reach
// Services by name through both sidecars with every protocol (issue 15 item 7).
func TestTransparentCapture(t *testing.T) {
	applyTransparent(t)
	client := transparentPod(t, "client")
	plain := transparentPod(t, "plain")
	_ = plain
	pid := containerPid(t, client, "client")
	inPod := func(timeout time.Duration, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		out, err := exec.CommandContext(ctx, "nsenter", append([]string{"-t", fmt.Sprint(pid), "-n", "-m"}, args...)...).CombinedOutput()
		return string(out), err
	}

	t.Run("the client pod has capture and no proxy settings", func(t *testing.T) {
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range strings.Split(string(env), "\x00") {
			k, _, _ := strings.Cut(kv, "=")
			if strings.EqualFold(k, "http_proxy") || strings.EqualFold(k, "https_proxy") || strings.EqualFold(k, "all_proxy") {
				t.Errorf("the client app has %s", kv)
			}
		}
		hasInit := false
		for _, c := range client.Spec.InitContainers {
			hasInit = hasInit || c.Name == "weft-init"
		}
		if !hasInit {
			t.Errorf("client pod init containers %+v, want weft-init", client.Spec.InitContainers)
		}
		out, err := inPod(10*time.Second, "iptables-save", "-t", "nat")
		if err != nil || !strings.Contains(out, "-j REDIRECT --to-ports 15001") {
			t.Errorf("nat table in the client's netns lacks the outbound redirect: %v\n%s", err, out)
		}
	})

	t.Run("a Service with no MeshRoute, by DNS name, through the sidecar", func(t *testing.T) {
		cluster := "outbound|80||plain." + transparentNS + ".svc.cluster.local"
		before, err := sidecarStats(client, "weft_cluster_requests_total", `cluster="`+cluster+`"`)
		if err != nil {
			t.Fatal(err)
		}
		const n = 5
		eventually(t, 2*time.Minute, "curl http://plain/ from the client pod", func() error {
			for range n {
				out, err := inPod(10*time.Second, "curl", "-sS", "--max-time", "5", "-i", "http://plain/")
				if err != nil {
					return fmt.Errorf("%w: %s", err, out)
				}
				if !strings.HasPrefix(out, "HTTP/1.1 200") || !strings.Contains(strings.ToLower(out), "x-version: plain\r\n") {
					return fmt.Errorf("answer %s", out)
				}
			}
			return nil
		})
		after, err := sidecarStats(client, "weft_cluster_requests_total", `cluster="`+cluster+`"`)
		if err != nil {
			t.Fatal(err)
		}
		if after-before < n {
			t.Errorf("the client sidecar's %s requests went %v → %v over %d calls: the calls did not go through the sidecar", cluster, before, after, n)
		}
		// The caller app itself (Go's http.Client, ProxyFromEnvironment with no proxy set).
		got, err := callFrom(client, "http://plain/", 5)
		if err != nil || got.ByStatus["200"] != 5 || got.ByVersion["plain"] != 5 {
			t.Errorf("the caller app's own calls to http://plain/: %+v %v", got, err)
		}
	})

	t.Run("a MeshRoute applies to the captured call", func(t *testing.T) {
		eventually(t, 2*time.Minute, "curl http://routed:9080/ with the MeshRoute's headers", func() error {
			out, err := inPod(10*time.Second, "curl", "-sS", "--max-time", "5", "-i", "http://routed:9080/")
			if err != nil {
				return fmt.Errorf("%w: %s", err, out)
			}
			lo := strings.ToLower(out)
			if !strings.HasPrefix(out, "HTTP/1.1 200") || !strings.Contains(lo, "x-weft-route: routed") || !strings.Contains(lo, "by-meshroute") {
				return fmt.Errorf("answer lacks the response header x-weft-route or the echoed request header x-weft-captured: %s", out)
			}
			return nil
		})
	})

	t.Run("gRPC through both sidecars", func(t *testing.T) {
		server := transparentPod(t, "grpc-echo")
		cluster := "outbound|9090||grpc-echo." + transparentNS + ".svc.cluster.local"
		before, err := sidecarStats(client, "weft_cluster_requests_total", `cluster="`+cluster+`"`)
		if err != nil {
			t.Fatal(err)
		}
		inBefore, err := sidecarStats(server, "weft_cluster_requests_total", `cluster="inbound|8080`)
		if err != nil {
			t.Fatal(err)
		}
		bin := filepath.Join(root, "bin", "grpcecho")
		var out string
		eventually(t, 2*time.Minute, "grpcecho call -target grpc-echo:9090", func() error {
			out, err = inPod(40*time.Second, bin, "call", "-target", "grpc-echo:9090", "-n", "5")
			if err != nil {
				return fmt.Errorf("%w: %s", err, out)
			}
			return nil
		})
		for i := range 5 {
			if !strings.Contains(out, fmt.Sprintf("check %d: SERVING served-by=[%s/grpc-echo]", i, server.Name)) {
				t.Errorf("grpcecho output lacks check %d SERVING from %s:\n%s", i, server.Name, out)
			}
		}
		if !strings.Contains(out, "watch: 3 updates served-by=["+server.Name+"/grpc-echo]") {
			t.Errorf("grpcecho Watch did not get 3 updates and the trailer:\n%s", out)
		}
		after, err := sidecarStats(client, "weft_cluster_requests_total", `cluster="`+cluster+`"`)
		if err != nil {
			t.Fatal(err)
		}
		inAfter, err := sidecarStats(server, "weft_cluster_requests_total", `cluster="inbound|8080`)
		if err != nil {
			t.Fatal(err)
		}
		if after-before < 6 || inAfter-inBefore < 6 {
			t.Errorf("gRPC calls counted by the client sidecar (%s) %v → %v and by the server sidecar (inbound) %v → %v, want ≥ 6 more in each",
				cluster, before, after, inBefore, inAfter)
		}
	})

	t.Run("WebSocket through both sidecars", func(t *testing.T) {
		transparentPod(t, "ws-echo")
		svc, err := cs.CoreV1().Services(transparentNS).Get(context.Background(), "ws-echo", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// The test dials from a thread in the client pod's network namespace (as root, so
		// captured like the app); the name resolves to this ClusterIP in the pod.
		addr := net.JoinHostPort(svc.Spec.ClusterIP, "8081")
		eventually(t, 2*time.Minute, "a WebSocket echo session with ws-echo", func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			hc := &http.Client{Transport: &http.Transport{Proxy: nil, DialContext: func(context.Context, string, string) (net.Conn, error) {
				return dialInNetns(pid, addr)
			}}}
			c, _, err := websocket.Dial(ctx, "ws://ws-echo:8081/chat", &websocket.DialOptions{HTTPClient: hc})
			if err != nil {
				return err
			}
			defer func() { _ = c.CloseNow() }()
			c.SetReadLimit(1 << 20)
			for i, msg := range [][]byte{[]byte("hello"), make([]byte, 256<<10)} {
				for j := range msg {
					if i == 1 {
						msg[j] = byte(j)
					}
				}
				typ := websocket.MessageText
				if i == 1 {
					typ = websocket.MessageBinary
				}
				if err := c.Write(ctx, typ, msg); err != nil {
					return err
				}
				gt, got, err := c.Read(ctx)
				if err != nil {
					return err
				}
				if gt != typ || string(got) != string(msg) {
					return fmt.Errorf("message %d came back as type %v, %d bytes (sent %d)", i, gt, len(got), len(msg))
				}
			}
			if err := c.Write(ctx, websocket.MessageText, []byte("bye")); err != nil {
				return err
			}
			_, _, err = c.Read(ctx)
			if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
				return fmt.Errorf("after bye: %w, want the server's normal closure", err)
			}
			return nil
		})
	})

	t.Run("redis-cli to a Redis Service by name through TCP", func(t *testing.T) {
		if _, err := exec.LookPath("redis-cli"); err != nil {
			testenv.Missing(t, "redis-cli is not installed")
		}
		redis := transparentPod(t, "redis")
		defer func() {
			if !t.Failed() {
				return
			}
			diag := func(what string, args ...string) {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
				t.Logf("diag %s: %v: %q", what, err, out)
			}
			diag("host → redis pod IP (inbound capture only)", "redis-cli", "-h", redis.Status.PodIP, "PING")
			diag("client netns → redis pod IP (passthrough)", "nsenter", "-t", fmt.Sprint(pid), "-n", "redis-cli", "-h", redis.Status.PodIP, "PING")
			rp := containerPid(t, redis, "redis")
			diag("redis netns → 127.0.0.1", "nsenter", "-t", fmt.Sprint(rp), "-n", "redis-cli", "-h", "127.0.0.1", "PING")
			diag("redis listening", "nsenter", "-t", fmt.Sprint(rp), "-n", "ss", "-ltnp")
			diag("client conntrack/sockets", "nsenter", "-t", fmt.Sprint(pid), "-n", "ss", "-tnp")
			for _, p := range []corev1.Pod{client, redis} {
				resp, err := http.Get("http://" + p.Status.PodIP + ":15020/stats")
				if err != nil {
					t.Logf("stats %s: %v", p.Name, err)
					continue
				}
				sc := bufio.NewScanner(resp.Body)
				for sc.Scan() {
					if l := sc.Text(); !strings.HasPrefix(l, "#") && (strings.Contains(l, "tcp") || strings.Contains(l, "capture") || strings.Contains(l, "6379") || strings.Contains(l, "passthrough") || strings.Contains(l, "nbound")) {
						t.Logf("stats %s: %s", p.Name, l)
					}
				}
				resp.Body.Close()
			}
		}()
		eventually(t, 40*time.Second, "redis-cli -h redis PING", func() error {
			out, err := inPod(10*time.Second, "redis-cli", "-h", "redis", "-p", "6379", "PING")
			if err != nil || strings.TrimSpace(out) != "PONG" {
				return fmt.Errorf("%w: %q", err, out)
			}
			return nil
		})
		if out, err := inPod(10*time.Second, "redis-cli", "-h", "redis", "-p", "6379", "SET", "weft", "captured"); err != nil || strings.TrimSpace(out) != "OK" {
			t.Fatalf("SET: %v: %q", err, out)
		}
		if out, err := inPod(10*time.Second, "redis-cli", "-h", "redis.transparent-e2e.svc.cluster.local", "-p", "6379", "GET", "weft"); err != nil || strings.TrimSpace(out) != "captured" {
			t.Fatalf("GET by FQDN: %v: %q", err, out)
		}
		// The connections went through the client's sidecar (TCP proxy byte counts).
		if n, err := sidecarStats(client, "weft_tcp_bytes_received_total", "redis."+transparentNS); err != nil || n == 0 {
			t.Errorf("client sidecar weft_tcp_bytes_received_total for redis: %v (%v), want > 0", n, err)
		}
		// ...and the redis pod's sidecar took them in through its inbound TCP passthrough.
		if n, err := sidecarStats(redis, "weft_tcp_connections_total", `cluster="InboundPassthroughCluster"`); err != nil || n < 3 {
			t.Errorf("redis sidecar weft_tcp_connections_total{InboundPassthroughCluster}: %v (%v), want ≥ 3", n, err)
		}
	})

	t.Run("an HTTP port after a TCP port is the app port", func(t *testing.T) {
		redis := transparentPod(t, "redis")
		sc := redis.Spec.Containers[len(redis.Spec.Containers)-1]
		if !slices.Contains(sc.Args, "--app-port=8080") {
			t.Errorf("redis pod sidecar args %v, want --app-port=8080 (the echo container's port, not redis's 6379)", sc.Args)
		}
		before, err := sidecarStats(redis, "weft_cluster_requests_total", `cluster="inbound|8080`)
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, time.Minute, "curl http://redis:8080/ from the client pod", func() error {
			out, err := inPod(10*time.Second, "curl", "-sS", "--max-time", "5", "-i", "http://redis:8080/")
			if err != nil {
				return fmt.Errorf("%w: %s", err, out)
			}
			if !strings.HasPrefix(out, "HTTP/1.1 200") || !strings.Contains(strings.ToLower(out), "x-version: redis-api") {
				return fmt.Errorf("answer %s", out)
			}
			return nil
		})
		if after, err := sidecarStats(redis, "weft_cluster_requests_total", `cluster="inbound|8080`); err != nil || after <= before {
			t.Errorf("the redis pod sidecar's inbound|8080 requests went %v → %v (%v): the HTTP call did not come in through its inbound listener", before, after, err)
		}
	})

	t.Run("a TCP server pod without weft.dev/app-port", func(t *testing.T) {
		if _, err := exec.LookPath("redis-cli"); err != nil {
			testenv.Missing(t, "redis-cli is not installed")
		}
		solo := transparentPod(t, "redis-solo")
		// Its only port (6379, unnamed) is no app port: the sidecar gets --inbound-capture
		// (an inbound listener with only the TCP passthrough) and weft-init captures its
		// inbound as any pod's, so callers' sidecars reach it over mutual TLS
		// (docs/mtls.md, "Pods that serve only TCP").
		sc := solo.Spec.Containers[len(solo.Spec.Containers)-1]
		if slices.ContainsFunc(sc.Args, func(a string) bool { return strings.HasPrefix(a, "--app-port") }) || !slices.Contains(sc.Args, "--inbound-capture") {
			t.Errorf("redis-solo sidecar args %v: want --inbound-capture and no app port for a TCP-only pod", sc.Args)
		}
		for _, c := range solo.Spec.InitContainers {
			if c.Name == "weft-init" && !slices.Contains(c.Args, "--include-inbound-ports=*") {
				t.Errorf("weft-init args %v, want --include-inbound-ports=* (inbound captured, app port or not)", c.Args)
			}
		}
		before, err := sidecarStats(client, "weft_tcp_connections_total", "redis-solo."+transparentNS)
		if err != nil {
			t.Fatal(err)
		}
		mtlsBefore, err := sidecarStats(client, "weft_tcp_mtls_connections_total", "redis-solo."+transparentNS)
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, time.Minute, "redis-cli -h redis-solo PING", func() error {
			out, err := inPod(10*time.Second, "redis-cli", "-h", "redis-solo", "-p", "6379", "PING")
			if err != nil || strings.TrimSpace(out) != "PONG" {
				return fmt.Errorf("%w: %q", err, out)
			}
			return nil
		})
		big := strings.Repeat("x", 100<<10) // one argv string is at most 128 KiB
		if out, err := inPod(20*time.Second, "redis-cli", "-h", "redis-solo", "-p", "6379", "SET", "big", big); err != nil || strings.TrimSpace(out) != "OK" {
			t.Fatalf("SET of 100 KiB: %v: %q", err, out)
		}
		if out, err := inPod(20*time.Second, "redis-cli", "-h", "redis-solo", "-p", "6379", "STRLEN", "big"); err != nil || strings.TrimSpace(out) != "102400" {
			t.Fatalf("STRLEN: %v: %q", err, out)
		}
		if after, err := sidecarStats(client, "weft_tcp_connections_total", "redis-solo."+transparentNS); err != nil || after-before < 3 {
			t.Errorf("client sidecar weft_tcp_connections_total for redis-solo went %v → %v (%v), want ≥ 3 more: the calls bypassed the sidecar", before, after, err)
		}
		if after, err := sidecarStats(client, "weft_tcp_mtls_connections_total", "redis-solo."+transparentNS); err != nil || after-mtlsBefore < 3 {
			t.Errorf("client sidecar weft_tcp_mtls_connections_total for redis-solo went %v → %v (%v), want ≥ 3 more: the TCP-only pod was not reached over mutual TLS", mtlsBefore, after, err)
		}
	})

	t.Run("passthrough to an address outside the mesh", func(t *testing.T) {
		// The bridge gateway (the host side) is no Service: the captured call goes out unchanged.
		ln, err := net.Listen("tcp", "10.244.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "outside host=%s uid-check\n", r.Host)
		}), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { _ = srv.Close() })
		u := "http://" + ln.Addr().String() + "/x"
		passMetrics := func() float64 {
			a, err1 := sidecarStats(client, "weft_passthrough_requests_total")
			b, err2 := sidecarStats(client, "weft_passthrough_connections_total")
			if err1 != nil || err2 != nil {
				t.Fatalf("stats: %v %v", err1, err2)
			}
			return a + b
		}
		before := passMetrics()
		out, err := inPod(15*time.Second, "curl", "-sS", "--max-time", "10", u)
		if err != nil || out != "outside host="+ln.Addr().String()+" uid-check\n" {
			t.Fatalf("curl %s from the client pod: %v: %q", u, err, out)
		}
		if after := passMetrics(); after <= before {
			t.Errorf("the client sidecar's passthrough counters went %v → %v: the call did not go through the sidecar", before, after)
		}
	})
}

// dialInNetns opens a TCP connection from the network namespace of process pid. The
// goroutine's thread switches namespace and is never unlocked, so Go discards it.
func dialInNetns(pid int, addr string) (net.Conn, error) {
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			ch <- res{nil, err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- res{nil, fmt.Errorf("setns: %w", err)}
			return
		}
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		ch <- res{c, err}
	}()
	r := <-ch
	return r.c, r.err
}
