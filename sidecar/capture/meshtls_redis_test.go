package capture

import (
	"bytes"
	"context"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/identity/identitytest"
	"github.com/weftmesh/weft/sidecar/redisproxy"
	"github.com/weftmesh/weft/sidecar/redisproxy/ring"
	"github.com/weftmesh/weft/testenv"
)

// A Redis pool whose server runs behind a strict sidecar (redisproxy/meshtls.go): redis-cli
// → the pool's sidecar (a real redisproxy.Proxy with the caller's identity) → mutual TLS,
// ALPN weft-tcp → the server pod's sidecar (capture plane, strict) → redis-server on
// 127.0.0.1. The bytes between the sidecars are TLS records only. The same pool without an
// identity dials in plaintext, which the strict sidecar refuses: redis-cli gets an -ERR.
func TestRedisPoolToServerBehindStrictSidecar(t *testing.T) {
	for _, tool := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Missing(t, tool+" not installed")
		}
	}
	port := freePort(t)
	rs := exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := rs.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rs.Process.Kill(); _ = rs.Wait() })
	waitDial(t, "127.0.0.1:"+port)

	ca, err := identitytest.New(tcpCallerID)
	if err != nil {
		t.Fatal(err)
	}
	callerID := idManager(t, ca, "")
	ca.SetIdentity(tcpCalleeID)
	cl := startCallee(t, idManager(t, ca, contract.MTLSStrict))
	w := recordWire(t, cl.front(t, "127.0.0.1:"+port))

	pool := func(meshTLS redisproxy.MeshTLS) string {
		cfg := redisproxy.Config{CatchAll: "redis|shop/sessions", OpTimeout: 5 * time.Second, Pools: map[string]redisproxy.Pool{
			"redis|shop/sessions": {Distribution: ring.Ketama, Hash: "fnv1a_64",
				Servers: []redisproxy.Server{{Name: "sessions-0", Addr: w.addr, Weight: 1, MeshTLS: true}}}}}
		var opts []redisproxy.Option
		if meshTLS != nil {
			opts = append(opts, redisproxy.WithMeshTLS(meshTLS))
		}
		p, err := redisproxy.New(cfg, opts...)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = p.Serve(ln) }()
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = p.Shutdown(ctx)
		})
		return ln.Addr().String()
	}
	cli := func(addr string, args ...string) string {
		t.Helper()
		h, p, _ := net.SplitHostPort(addr)
		out, err := exec.Command("redis-cli", append([]string{"-h", h, "-p", p}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("redis-cli %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}

	meshed := pool(callerID)
	if got := cli(meshed, "PING"); got != "PONG" {
		t.Errorf("PING: %q", got)
	}
	if got := cli(meshed, "SET", "weft-session", "behind-a-strict-sidecar"); got != "OK" {
		t.Errorf("SET: %q", got)
	}
	if got := cli(meshed, "GET", "weft-session"); got != "behind-a-strict-sidecar" {
		t.Errorf("GET: %q", got)
	}
	time.Sleep(50 * time.Millisecond)
	w.mu.Lock()
	up, down := bytes.Clone(w.up), bytes.Clone(w.down)
	w.mu.Unlock()
	if tlsRecordsOnly(t, "pool → server sidecar", up) == 0 {
		t.Error("no application data records from the pool")
	}
	tlsRecordsOnly(t, "server sidecar → pool", down)
	for _, s := range []string{"weft-session", "behind-a-strict-sidecar", "PING"} {
		if bytes.Contains(up, []byte(s)) || bytes.Contains(down, []byte(s)) {
			t.Errorf("%q is visible on the wire between the sidecars", s)
		}
	}
	if st := stats(cl.sidecar); counter(st, "weft_capture_inbound_tls_handshakes_total") < 1 {
		t.Errorf("the server's sidecar terminated no mutual TLS:\n%s", grep(st, "weft_capture_inbound"))
	}

	// A pool without an identity sends plaintext: refused by the strict sidecar.
	plain := pool(nil)
	if got := cli(plain, "GET", "weft-session"); !strings.HasPrefix(got, "ERR") {
		t.Errorf("plaintext pool to a strict server sidecar: %q, want an ERR", got)
	}
	eventually(t, func() bool { return counter(stats(cl.sidecar), "weft_capture_inbound_plaintext_refused_total") >= 1 },
		"the strict sidecar did not count the plaintext pool's refusal")
}
