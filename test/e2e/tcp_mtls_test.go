//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/testenv"
)

// tcpMTLSNS is injected with iptables capture and strict mutual TLS for every pod.
const tcpMTLSNS = "tcp-mtls-e2e"

// tcpMTLSManifest: redis-server behind a plain Service (no RedisProxy), in a pod that
// serves only TCP: one plain redis container with only containerPort 6379, so no app port
// (its sidecar gets --inbound-capture and an inbound listener with only the TCP
// passthrough; docs/mtls.md "TCP"); an injected client with no proxy settings; an outsider
// pod the injector skips. No readiness probes on app ports: strict mode refuses the
// kubelet's plaintext probes there (docs/mtls.md).
const tcpMTLSManifest = `
apiVersion: v1
kind: Namespace
metadata: {name: tcp-mtls-e2e, labels: {weft.dev/inject: enabled, weft.dev/mtls: strict}}
---
apiVersion: v1
kind: Service
metadata: {name: redis, namespace: tcp-mtls-e2e}
spec: {selector: {app: redis}, ports: [{name: redis, port: 6379, targetPort: 6379}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: redis, namespace: tcp-mtls-e2e}
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
---
# The same redis pod as the one server of a pool in the client's sidecar: the pool dials it
# with mutual TLS (its serviceRef endpoint is marked tlsMode: weft).
apiVersion: mesh.weft.dev/v1alpha1
kind: RedisProxy
metadata: {name: sessions, namespace: tcp-mtls-e2e}
spec:
  workloadSelector: {labels: {app: client}}
  listener: {address: 127.0.0.1, port: 6380}
  serviceRef: {name: redis, port: 6379}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: tcp-mtls-e2e}
spec:
  replicas: 1
  selector: {matchLabels: {app: client}}
  template:
    metadata:
      labels: {app: client}
      annotations: {weft.dev/interception: iptables}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - {name: client, image: "weft.dev/examples/caller:latest", ports: [{containerPort: 8080}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: outsider, namespace: tcp-mtls-e2e}
spec:
  replicas: 1
  selector: {matchLabels: {app: outsider}}
  template:
    metadata:
      labels: {app: outsider, weft.dev/inject: "false"}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - {name: outsider, image: "weft.dev/examples/caller:latest", ports: [{containerPort: 8080}]}
`

// TestTCPMTLSRedisService: redis-cli in an injected client pod with no proxy settings calls
// a Redis Service (a TCP port, no RedisProxy) whose pod is injected, in a strict namespace;
// the Redis pod is a plain redis container with no app port.
// The client's sidecar originates mutual TLS with ALPN weft-tcp to podIP:6379 (marked
// tlsMode: weft: the pod carries weft.dev/inbound-tls: all), the redis pod's sidecar
// terminates it and hands the bytes to redis-server on 127.0.0.1:6379. On the redis pod's
// link every payload to 6379 is TLS, never RESP. An uninjected pod's plaintext redis-cli
// is refused.
func TestTCPMTLSRedisService(t *testing.T) {
	if _, err := exec.LookPath("redis-cli"); err != nil {
		testenv.Missing(t, "redis-cli is not installed")
	}
	f := filepath.Join(t.TempDir(), "tcp-mtls.yaml")
	if err := os.WriteFile(f, []byte(tcpMTLSManifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := kubectl("apply", "-f", f); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().Namespaces().Delete(context.Background(), tcpMTLSNS, metav1.DeleteOptions{})
	})
	redis := readyPod(t, tcpMTLSNS, "redis", 4*time.Minute)
	client := readyPod(t, tcpMTLSNS, "client", 4*time.Minute)
	outsider := readyPod(t, tcpMTLSNS, "outsider", 4*time.Minute)
	if got := redis.Labels[contract.LabelInboundTLS]; got != "all" {
		t.Errorf("redis pod label %s = %q, want all (every captured inbound port is a mesh TLS target)", contract.LabelInboundTLS, got)
	}
	for _, c := range redis.Spec.Containers {
		switch {
		case c.Name == "weft-sidecar":
			if !slices.Contains(c.Args, "--"+contract.FlagInboundCapture) || slices.ContainsFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--app-port") }) {
				t.Errorf("the redis pod's sidecar args %v: want --%s and no --app-port (a pod that serves only TCP)", c.Args, contract.FlagInboundCapture)
			}
		case c.Name != "redis":
			t.Errorf("the redis pod has a container %q besides redis and the sidecar", c.Name)
		}
	}
	cli := func(p corev1.Pod, container string, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "nsenter", append([]string{"-t", fmt.Sprint(containerPid(t, p, container)), "-n", "-m",
			"redis-cli", "-h", "redis", "-p", "6379"}, args...)...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	eventually(t, 2*time.Minute, "redis-cli -h redis PING from the client pod", func() error {
		out, err := cli(client, "client", "PING")
		if err != nil {
			return fmt.Errorf("%w: %q", err, out)
		}
		if out != "PONG" {
			return fmt.Errorf("answer %q", out)
		}
		return nil
	})
	if out, err := cli(client, "client", "SET", "weft-tcp-mtls", "over-mutual-tls"); err != nil || out != "OK" {
		t.Errorf("SET: %v %q", err, out)
	}
	if out, err := cli(client, "client", "GET", "weft-tcp-mtls"); err != nil || out != "over-mutual-tls" {
		t.Errorf("GET: %v %q", err, out)
	}

	fd, err := packetSocket(containerPid(t, redis, "redis"))
	if err != nil {
		t.Fatalf("packet socket in the redis pod: %v", err)
	}
	defer unix.Close(fd)
	done := make(chan []string, 1)
	go func() {
		var errs []string
		for i := range 20 {
			if out, err := cli(client, "client", "SET", fmt.Sprintf("weft-marker-%d", i), "plaintext-would-show-this"); err != nil || out != "OK" {
				errs = append(errs, fmt.Sprintf("%v: %.200s", err, out))
			}
		}
		done <- errs
	}()
	// To the pod IP only: the redis sidecar's own hop to redis-server on 127.0.0.1:6379 is
	// plaintext inside the pod.
	payloads := linkPayloadsTo(fd, net.ParseIP(redis.Status.PodIP).To4(), 6379, time.Now().Add(8*time.Second))
	if errs := <-done; len(errs) > 0 {
		t.Errorf("calls during the capture failed: %v", errs)
	}
	var handshake, appData, plain int
	for _, p := range payloads {
		switch {
		case len(p) >= 3 && p[0] == 0x16 && p[1] == 3:
			handshake++
		case len(p) >= 3 && p[0] == 0x17 && p[1] == 3:
			appData++
		}
		if bytes.Contains(p, []byte("weft-marker")) || bytes.Contains(p, []byte("plaintext-would-show-this")) || bytes.HasPrefix(p, []byte("*3\r\n$3\r\nSET")) {
			plain++
		}
	}
	t.Logf("pod %s link, to %s:6379: %d payloads, %d TLS handshake records, %d application-data records, %d plaintext RESP",
		redis.Name, redis.Status.PodIP, len(payloads), handshake, appData, plain)
	if appData == 0 || handshake == 0 || plain != 0 {
		t.Errorf("on the link: %d TLS handshakes, %d application-data records, %d plaintext RESP; want TLS only", handshake, appData, plain)
	}
	if n, err := sidecarStats(redis, "weft_capture_inbound_tls_handshakes_total"); err != nil || n < 20 {
		t.Errorf("the redis sidecar's terminated handshakes: %v %v, want ≥ 20", n, err)
	}
	if n, err := sidecarStats(client, "weft_tcp_mtls_connections_total", "redis."+tcpMTLSNS); err != nil || n < 20 {
		t.Errorf("the client sidecar's mutual TLS connections to redis: %v %v, want ≥ 20", n, err)
	}

	before, _ := sidecarStats(redis, "weft_capture_inbound_plaintext_refused_total")
	out, cerr := cli(outsider, "outsider", "PING")
	if cerr == nil && out == "PONG" {
		t.Errorf("a plaintext redis-cli without a sidecar got PONG from the strict namespace")
	}
	after, err := sidecarStats(redis, "weft_capture_inbound_plaintext_refused_total")
	if err != nil || after <= before {
		t.Errorf("the redis sidecar's refused plaintext connections went %v → %v (%v), want more", before, after, err)
	}
	t.Logf("outsider's plaintext redis-cli: %v %.200s", cerr, out)

	// The inbound listener's own port on a pod with no HTTP app: nothing serves it, so a
	// direct connection is closed and counted.
	beforeDirect, _ := sidecarStats(redis, "weft_capture_inbound_direct_refused_total")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	dout, derr := exec.CommandContext(ctx, "nsenter", "-t", fmt.Sprint(containerPid(t, outsider, "outsider")), "-n", "-m",
		"redis-cli", "-h", redis.Status.PodIP, "-p", "15006", "PING").CombinedOutput()
	cancel()
	if derr == nil && strings.TrimSpace(string(dout)) == "PONG" {
		t.Error("a direct connection to the TCP-only pod's :15006 got PONG")
	}
	afterDirect, err := sidecarStats(redis, "weft_capture_inbound_direct_refused_total")
	if err != nil || afterDirect <= beforeDirect {
		t.Errorf("the redis sidecar's refused direct connections to :15006 went %v → %v (%v), want more", beforeDirect, afterDirect, err)
	}
	t.Logf("outsider's redis-cli to %s:15006: %v %.200s", redis.Status.PodIP, derr, dout)

	// Through the RedisProxy pool in the client's sidecar (127.0.0.1:6380) to the same
	// redis pod: mutual TLS from the pool, TLS only on the redis pod's link.
	pool := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "nsenter", append([]string{"-t", fmt.Sprint(containerPid(t, client, "client")), "-n", "-m",
			"redis-cli", "-h", "127.0.0.1", "-p", "6380"}, args...)...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	eventually(t, 2*time.Minute, "redis-cli through the pool", func() error {
		out, err := pool("SET", "weft-pool-key", "through-the-pool")
		if err != nil {
			return fmt.Errorf("%w: %q", err, out)
		}
		if out != "OK" {
			return fmt.Errorf("answer %q", out)
		}
		return nil
	})
	poolDone := make(chan []string, 1)
	go func() {
		var errs []string
		for i := range 20 {
			if out, err := pool("GET", "weft-pool-key"); err != nil || out != "through-the-pool" {
				errs = append(errs, fmt.Sprintf("GET %d: %v: %.200s", i, err, out))
			}
		}
		poolDone <- errs
	}()
	payloads = linkPayloadsTo(fd, net.ParseIP(redis.Status.PodIP).To4(), 6379, time.Now().Add(6*time.Second))
	if errs := <-poolDone; len(errs) > 0 {
		t.Errorf("pool calls during the capture failed: %v", errs)
	}
	appData, plain = 0, 0
	for _, p := range payloads {
		if len(p) >= 3 && p[0] == 0x17 && p[1] == 3 {
			appData++
		}
		if bytes.Contains(p, []byte("weft-pool-key")) || bytes.Contains(p, []byte("through-the-pool")) {
			plain++
		}
	}
	t.Logf("pool → pod %s:6379: %d payloads, %d application-data records, %d plaintext", redis.Status.PodIP, len(payloads), appData, plain)
	if appData == 0 || plain != 0 {
		t.Errorf("pool traffic on the link: %d TLS application-data records, %d plaintext; want TLS only", appData, plain)
	}
	if n, err := sidecarStats(client, "weft_redis_server_mtls_handshake_failures_total"); err != nil || n != 0 {
		t.Errorf("the pool's failed handshakes: %v %v, want 0", n, err)
	}
}
