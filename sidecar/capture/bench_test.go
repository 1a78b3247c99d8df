package capture

import (
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/identity/identitytest"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// BenchmarkTCPProxyBulk moves 16 MiB per op from a client to a server that discards it,
// directly and through the TCP chain (capture.ServeConn standing in for iptables).
//
//	go test ./sidecar/capture -run '^$' -bench TCPProxyBulk -benchtime 2s
func BenchmarkTCPProxyBulk(b *testing.B) {
	sink := tcpServer(b, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	const chunk = 16 << 20
	buf := make([]byte, 256<<10)
	run := func(b *testing.B, addr string) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		b.SetBytes(chunk)
		b.ResetTimer()
		for range b.N {
			for n := 0; n < chunk; n += len(buf) {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	b.Run("direct", func(b *testing.B) { run(b, sink) })
	b.Run("proxied", func(b *testing.B) {
		s := startSidecar(b, mesh{redis: sink}, false, 0)
		run(b, s.front(b, "10.96.0.30:6379"))
	})
	// Two sidecars, as between pods: the caller's TCP chain, then the callee's inbound
	// capture to the app on 127.0.0.1 (meshtls.go), in plaintext and over mutual TLS.
	pair := func(b *testing.B, withTLS bool) {
		var callerID upstream.MeshTLS
		var calleeID InboundTLS
		if withTLS {
			ca, err := identitytest.New(tcpCallerID)
			if err != nil {
				b.Fatal(err)
			}
			callerID = idManager(b, ca, "")
			ca.SetIdentity(tcpCalleeID)
			calleeID = idManager(b, ca, contract.MTLSStrict)
		}
		cl := startCallee(b, calleeID)
		s := startSidecar(b, mesh{redis: cl.front(b, sink), meshTLS: callerID}, false, 0)
		run(b, s.front(b, "10.96.0.30:6379"))
	}
	b.Run("pair-plaintext", func(b *testing.B) { pair(b, false) })
	b.Run("pair-mtls", func(b *testing.B) { pair(b, true) })
}

// TestIperf3ThroughTCPProxy compares iperf3 directly and through the TCP chain (5 s each).
// It runs only with WEFT_BENCH_IPERF=1: it is a measurement, not a check.
func TestIperf3ThroughTCPProxy(t *testing.T) {
	if os.Getenv("WEFT_BENCH_IPERF") == "" {
		t.Skip("set WEFT_BENCH_IPERF=1 to measure")
	}
	port := freePort(t)
	srv := exec.Command("iperf3", "-s", "-B", "127.0.0.1", "-p", port)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	waitDial(t, "127.0.0.1:"+port)
	time.Sleep(100 * time.Millisecond)
	s := startSidecar(t, mesh{redis: "127.0.0.1:" + port}, false, 0)
	front := s.front(t, "10.96.0.30:6379")
	measure := func(addr string) float64 {
		h, p, _ := net.SplitHostPort(addr)
		out, err := exec.Command("iperf3", "-c", h, "-p", p, "-t", "5", "-J").Output()
		if err != nil {
			t.Fatalf("iperf3 -c %s: %v\n%s", addr, err, out)
		}
		var r struct {
			End struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatal(err)
		}
		return r.End.SumReceived.BitsPerSecond / 1e9
	}
	direct := measure("127.0.0.1:" + port)
	proxied := measure(front)
	t.Logf("iperf3 5 s: direct %.2f Gbit/s, through the TCP chain %.2f Gbit/s (%.0f %%)", direct, proxied, 100*proxied/direct)
	if _, err := exec.LookPath("haproxy"); err == nil {
		// The same transfer through haproxy in TCP mode: what a C proxy reaches here.
		hp := freePort(t)
		cfg := t.TempDir() + "/haproxy.cfg"
		_ = os.WriteFile(cfg, []byte("global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n"+
			"listen l\n  bind 127.0.0.1:"+hp+"\n  server s 127.0.0.1:"+port+"\n"), 0o600)
		ha := exec.Command("haproxy", "-f", cfg, "-db")
		if err := ha.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = ha.Process.Kill(); _ = ha.Wait() }()
		waitDial(t, "127.0.0.1:"+hp)
		time.Sleep(200 * time.Millisecond)
		hap := measure("127.0.0.1:" + hp)
		t.Logf("iperf3 5 s: through haproxy (tcp mode) %.2f Gbit/s (%.0f %% of direct)", hap, 100*hap/direct)
	}
}
