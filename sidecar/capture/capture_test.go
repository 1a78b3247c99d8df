package capture

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
	"github.com/weftmesh/weft/testenv"
)

func bothPaths(t *testing.T, f func(t *testing.T, goroutines bool)) {
	t.Run("event loop", func(t *testing.T) { f(t, false) })
	t.Run("goroutines", func(t *testing.T) { f(t, true) })
}

// noProxy ignores HTTP_PROXY from the environment: the test's app has no proxy settings.
var noProxy = &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}, Timeout: 5 * time.Second}

func proxyClient(addr string) *http.Client {
	u, _ := url.Parse("http://" + addr)
	return &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(u), DisableKeepAlives: true}, Timeout: 5 * time.Second}
}

// Regression for issue 15: one outbound_http route configuration listed every port of a
// Service in one virtual host, so an HTTP_PROXY call to reviews:9090 reached port 9080.
// Each request now picks the route configuration named by its Host's port.
func TestExplicitProxyPicksRouteConfigurationByPort(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		m := mesh{reviews9080: named(t, "p9080"), reviews9090: named(t, "p9090")}
		s := startSidecar(t, m, goroutines, 0)
		c := proxyClient(s.addr)
		for _, tc := range []struct{ url, want string }{
			{"http://reviews:9080/", "p9080 host=reviews:9080"},
			{"http://reviews:9090/", "p9090 host=reviews:9090"},
			{"http://reviews.default.svc.cluster.local:9090/x", "p9090 host=reviews.default.svc.cluster.local:9090"},
			{"http://10.96.0.10:9080/", "p9080 host=10.96.0.10:9080"},
		} {
			code, b := body(c.Get(tc.url))
			if code != 200 || b != tc.want {
				t.Errorf("GET %s via proxy: %d %q, want 200 %q", tc.url, code, b, tc.want)
			}
		}
	})
}

// A host no route configuration knows passes through to the Host's address under
// ALLOW_ANY (Istio's default), counted; REGISTRY_ONLY refuses it, saying why.
func TestExplicitProxyPassthroughAndRegistryOnly(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		ext := named(t, "external")
		m := mesh{reviews9080: named(t, "p9080"), reviews9090: named(t, "p9090")}
		s := startSidecar(t, m, goroutines, 0)
		before := passStatsRequests(s)
		code, b := body(proxyClient(s.addr).Get("http://" + ext + "/api"))
		if code != 200 || b != "external host="+ext {
			t.Fatalf("passthrough: %d %q", code, b)
		}
		if got := passStatsRequests(s); got != before+1 {
			t.Errorf("weft_passthrough_requests_total went %d -> %d, want +1", before, got)
		}
		m.blocked = true
		s2 := startSidecar(t, m, goroutines, 0)
		code, b = body(proxyClient(s2.addr).Get("http://" + ext + "/api"))
		if code != 502 || !strings.Contains(b, "blocked by REGISTRY_ONLY: "+ext) {
			t.Fatalf("REGISTRY_ONLY: %d %q, want 502 naming the host", code, b)
		}
		// A Service still works under REGISTRY_ONLY.
		if code, b := body(proxyClient(s2.addr).Get("http://reviews:9080/")); code != 200 || !strings.HasPrefix(b, "p9080") {
			t.Fatalf("Service under REGISTRY_ONLY: %d %q", code, b)
		}
	})
}

func passStatsRequests(s *sidecar) int {
	for _, l := range strings.Split(stats(s), "\n") {
		if strings.HasPrefix(l, "weft_passthrough_requests_total ") {
			var n int
			_, _ = fmtSscan(strings.TrimPrefix(l, "weft_passthrough_requests_total "), &n)
			return n
		}
	}
	return -1
}

// A captured connection to a ClusterIP and HTTP port, from an app with no proxy settings
// (an origin-form request), reaches the Service's endpoint through the chain of the port.
func TestCapturedHTTPByOriginalDestination(t *testing.T) {
	m := mesh{reviews9080: named(t, "p9080"), reviews9090: named(t, "p9090")}
	s := startSidecar(t, m, false, 0)
	for dst, want := range map[string]string{"10.96.0.10:9080": "p9080", "10.96.0.10:9090": "p9090"} {
		front := s.front(t, dst)
		// The Host names a port the route tables do not hold: the chain is chosen by the
		// original destination, and its table's Host matching accepts the ClusterIP form.
		req, _ := http.NewRequest("GET", "http://"+front+"/", nil)
		req.Host = dst
		code, b := body(noProxy.Do(req))
		if code != 200 || !strings.HasPrefix(b, want+" ") {
			t.Errorf("captured to %s: %d %q, want %s", dst, code, b, want)
		}
	}
	// Sniffed HTTP to an unknown destination on port 80 passes through to that destination.
	ext := named(t, "external")
	front := s.front(t, ext)
	code, b := body(noProxy.Get("http://" + front + "/"))
	if code != 200 || !strings.HasPrefix(b, "external") {
		t.Errorf("captured passthrough: %d %q", code, b)
	}
}

// An undeclared port: HTTP goes to the route configuration, anything else to the TCP
// chain; a client that sends nothing (a server-first protocol) is proxied as TCP once the
// sniff wait ends, and gets the server's greeting.
func TestSniffingUndeclaredPort(t *testing.T) {
	greeter := tcpServer(t, func(c net.Conn) {
		_, _ = c.Write([]byte("220 greeter ready\r\n"))
		line, _ := bufio.NewReader(c).ReadString('\n')
		_, _ = c.Write([]byte("echo " + line))
	})
	m := mesh{reviews9080: named(t, "p9080"), reviews9090: named(t, "p9090"), app7000HTTP: named(t, "app-http"), app7000TCP: greeter}
	s := startSidecar(t, m, false, 150*time.Millisecond)
	front := s.front(t, "10.96.0.40:7000")

	req, _ := http.NewRequest("GET", "http://"+front+"/", nil)
	req.Host = "app:7000" // as the app sent it
	code, b := body(noProxy.Do(req))
	if code != 200 || !strings.HasPrefix(b, "app-http") {
		t.Fatalf("sniffed HTTP: %d %q", code, b)
	}
	start := time.Now() // before the dial: the sidecar's sniff wait starts at its accept
	c, err := net.Dial("tcp", front)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	greeting, err := br.ReadString('\n')
	if err != nil || greeting != "220 greeter ready\r\n" {
		t.Fatalf("server-first greeting: %q %v", greeting, err)
	}
	if waited := time.Since(start); waited < 150*time.Millisecond {
		t.Errorf("greeting after %v: the sniff wait (150ms) was not honoured", waited)
	}
	_, _ = c.Write([]byte("HELO x\r\n"))
	if echo, _ := br.ReadString('\n'); echo != "echo HELO x\r\n" {
		t.Fatalf("echo %q", echo)
	}
	// Non-HTTP bytes sent at once skip the wait and go to the TCP chain too.
	c2, _ := net.Dial("tcp", front)
	defer c2.Close()
	_, _ = c2.Write([]byte("\x00\x01binary\n"))
	_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if g, _ := bufio.NewReader(c2).ReadString('\n'); g != "220 greeter ready\r\n" {
		t.Fatalf("binary client got %q", g)
	}
}

func tcpServer(t testing.TB, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); serve(c) }()
		}
	}()
	return ln.Addr().String()
}

// Half-close: the client sends its data and shuts its write side; the server reads to EOF,
// then answers with a digest of everything; the proxy must pass the FIN on and keep the
// other direction open for the answer.
func TestTCPHalfClose(t *testing.T) {
	srv := tcpServer(t, func(c net.Conn) {
		h := sha256.New()
		n, _ := io.Copy(h, c)
		_, _ = c.Write([]byte(strings.Repeat("x", 1<<20)))
		_, _ = io.WriteString(c, "\n"+itoa(n)+" "+string(h.Sum(nil)[:4]))
	})
	m := mesh{redis: srv}
	s := startSidecar(t, m, false, 0)
	front := s.front(t, "10.96.0.30:6379")
	c, err := net.Dial("tcp", front)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := make([]byte, 3<<20)
	_, _ = rand.Read(data)
	if _, err := c.Write(data); err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	want := strings.Repeat("x", 1<<20) + "\n" + itoa(int64(len(data))) + " " + string(sum[:4])
	if string(got) != want {
		t.Fatalf("answer after half-close: %d bytes, want %d (tail %q)", len(got), len(want), tail(got))
	}
	poll.Until(t, 5*time.Second, func() bool {
		return strings.Contains(stats(s), `weft_tcp_bytes_sent_total{cluster="outbound|6379||redis.default.svc.cluster.local"} 3145728`)
	}, "waiting for the 3 MiB sent to be counted")
}

func tail(b []byte) []byte {
	if len(b) > 40 {
		return b[len(b)-40:]
	}
	return b
}

// redis-cli speaks to a real redis-server through the TCP chain.
func TestRedisThroughTCPChain(t *testing.T) {
	for _, tool := range []string{"redis-server", "redis-cli"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Missing(t, tool+" not installed (apt-get install redis-server redis-tools)")
		}
	}
	port := freePort(t)
	rs := exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := rs.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rs.Process.Kill(); _ = rs.Wait() })
	waitDial(t, "127.0.0.1:"+port)
	s := startSidecar(t, mesh{redis: "127.0.0.1:" + port}, false, 0)
	front := s.front(t, "10.96.0.30:6379")
	h, p, _ := net.SplitHostPort(front)
	cli := func(args ...string) string {
		out, err := exec.Command("redis-cli", append([]string{"-h", h, "-p", p}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("redis-cli %v: %v %s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if got := cli("PING"); got != "PONG" {
		t.Fatalf("PING: %q", got)
	}
	if got := cli("SET", "k", "through-the-mesh"); got != "OK" {
		t.Fatalf("SET: %q", got)
	}
	if got := cli("GET", "k"); got != "through-the-mesh" {
		t.Fatalf("GET: %q", got)
	}
	if st := stats(s); !strings.Contains(st, `weft_tcp_connections_total{cluster="outbound|6379||redis.default.svc.cluster.local"} 3`) {
		t.Errorf("connections not counted:\n%s", grep(st, "weft_tcp_connections"))
	}
}

// TCP to an unknown destination passes through (counted); under REGISTRY_ONLY it is
// closed and counted as blocked.
func TestTCPPassthroughAndBlackHole(t *testing.T) {
	echo := tcpServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	s := startSidecar(t, mesh{}, false, 0)
	c, err := net.Dial("tcp", s.front(t, echo))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write([]byte("\x00ping\n"))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, _ := bufio.NewReader(c).ReadString('\n'); line != "\x00ping\n" {
		t.Fatalf("passthrough echo: %q", line)
	}
	c.Close()
	// Bytes are counted when the proxied connection ends, after the client's close reached
	// the sidecar: wait for that rather than read the counters at once.
	counted := func() bool {
		st := stats(s)
		return strings.Contains(st, "weft_passthrough_connections_total 1") && strings.Contains(st, "weft_passthrough_bytes_sent_total 6")
	}
	poll.Until(t, 5*time.Second, counted, "waiting for the passthrough connection and its 6 bytes to be counted")
	s2 := startSidecar(t, mesh{blocked: true}, false, 100*time.Millisecond)
	c2, err := net.Dial("tcp", s2.front(t, echo))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	_, _ = c2.Write([]byte("\x00ping\n"))
	_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c2.Read(make([]byte, 16)); err == nil {
		t.Fatalf("REGISTRY_ONLY: read %d bytes, want the connection closed", n)
	}
	if st := stats(s2); !strings.Contains(st, `weft_tcp_blocked_total{cluster="BlackHoleCluster"} 1`) {
		t.Errorf("blocked not counted:\n%s", grep(st, "blocked"))
	}
	// Sniffed HTTP to an unknown port under REGISTRY_ONLY gets a reason.
	c3, _ := net.Dial("tcp", s2.front(t, echo))
	defer c3.Close()
	_, _ = io.WriteString(c3, "GET / HTTP/1.1\r\nHost: "+echo+"\r\n\r\n")
	_ = c3.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(c3)
	if !bytes.Contains(got, []byte("502")) || !bytes.Contains(got, []byte("blocked by REGISTRY_ONLY: "+echo)) {
		t.Fatalf("sniffed HTTP under REGISTRY_ONLY: %q", got)
	}
}

// A client that drops mid-transfer leaves no goroutine and no descriptor behind.
func TestClientDropMidTransferLeaksNothing(t *testing.T) {
	src := tcpServer(t, func(c net.Conn) {
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	})
	s := startSidecar(t, mesh{redis: src}, false, 0)
	front := s.front(t, "10.96.0.30:6379")
	settle := func() (int, int) {
		time.Sleep(200 * time.Millisecond)
		runtime.GC()
		return runtime.NumGoroutine(), fds(t)
	}
	g0, f0 := settle()
	for range 20 {
		c, err := net.Dial("tcp", front)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.CopyN(io.Discard, c, 1<<20)
		_ = c.(*net.TCPConn).SetLinger(0) // a reset, as a crashed client
		c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		g, f := settle()
		if g <= g0 && f <= f0 {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("goroutines %d -> %d, fds %d -> %d after 20 dropped clients\n%s", g0, g, f0, f, buf[:runtime.Stack(buf, true)])
		}
	}
	if st := stats(s); !strings.Contains(st, `weft_tcp_connections_active{cluster="outbound|6379||redis.default.svc.cluster.local"} 0`) {
		t.Errorf("active connections not back to 0:\n%s", grep(st, "active"))
	}
}

func fds(t *testing.T) int {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		testenv.Missing(t, "no /proc/self/fd")
	}
	return len(es)
}

func freePort(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, p, _ := net.SplitHostPort(ln.Addr().String())
	return p
}

func waitDial(t testing.TB, addr string) {
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s never accepted", addr)
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
