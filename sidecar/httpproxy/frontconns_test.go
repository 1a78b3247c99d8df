package httpproxy_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/weftmesh/weft/sidecar/httpproxy"
	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// Limits per listener and per connection on the caller side: slowloris heads, the connection
// cap, running out of descriptors, and the memory budget unfinished heads share.

// TestSlowlorisIsClosedAtTheHeadDeadline pins issue 12 item 2: a connection sending a
// head byte by byte was never closed (the loop re-armed the header timeout per byte).
// The head deadline counts from the head's first byte (from the accept for a new
// connection), and a connection that sends nothing is closed too.
func TestSlowlorisIsClosedAtTheHeadDeadline(t *testing.T) {
	const headTimeout = time.Second
	const slack = 1500 * time.Millisecond // scheduling and the loop's batching
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := &countingBackend{}
		_, base := limitedSidecar(t, goroutines, be.ServeHTTP, listenerOpts{hcm: func(h *hcmv3.HttpConnectionManager) {
			h.RequestHeadersTimeout = durationpb.New(headTimeout)
			h.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(10 * time.Second)}
		}})
		// trickle writes a head that never ends, a byte per 100 ms, until the sidecar
		// closes the connection; it returns how long after its first byte that was.
		trickle := func(c *rawConn) time.Duration {
			closed := make(chan struct{})
			go func() {
				defer close(closed)
				_ = c.conn.SetReadDeadline(time.Now().Add(headTimeout + 10*time.Second))
				_, _ = io.Copy(io.Discard, c.conn)
			}()
			start := time.Now()
			head := "GET / HTTP/1.1\r\nHost: reviews\r\nX-Slow: " + strings.Repeat("a", 1000)
			for i := 0; i < len(head); i++ {
				select {
				case <-closed:
					return time.Since(start)
				case <-time.After(100 * time.Millisecond):
				}
				if _, err := c.conn.Write([]byte{head[i]}); err != nil {
					return time.Since(start)
				}
			}
			t.Fatal("a 1,000-byte trickle was never closed")
			return 0
		}

		// A new connection that trickles.
		if d := trickle(dialRaw(t, base)); d > headTimeout+slack {
			t.Errorf("a trickling new connection was closed %v after its first byte, want about %v", d, headTimeout)
		}
		// A new connection that sends nothing.
		c := dialRaw(t, base)
		start := time.Now()
		c.closedSoon("a silent new connection")
		if d := time.Since(start); d > headTimeout+slack {
			t.Errorf("a silent new connection was closed after %v, want about %v", d, headTimeout)
		}
		// A kept-alive connection: idle longer than the head timeout (within the idle
		// timeout), then trickling: the deadline counts from the first byte of the head.
		c = dialRaw(t, base)
		c.write("GET / HTTP/1.1\r\nHost: reviews\r\n\r\n")
		if resp, _ := c.read("GET"); resp.StatusCode != 200 {
			t.Fatalf("first request: %d", resp.StatusCode)
		}
		time.Sleep(2 * headTimeout) // idle: no deadline may pass here
		d := trickle(c)
		if d < headTimeout-200*time.Millisecond || d > headTimeout+slack {
			t.Errorf("a trickling kept-alive connection was closed %v after the head's first byte, want about %v", d, headTimeout)
		}
	})
}

// TestConnectionCapRefusesBeyondIt: with max_connections 20, a flood of idle connections
// gets 20 in and the rest closed at once and counted; a connection already open keeps
// being served; once the flood ends new connections are served again.
func TestConnectionCapRefusesBeyondIt(t *testing.T) {
	const maxConns = 20
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := &countingBackend{}
		sc, base := limitedSidecar(t, goroutines, be.ServeHTTP, listenerOpts{maxConns: maxConns})
		ask := func(c *rawConn, what string) {
			t.Helper()
			c.write("GET / HTTP/1.1\r\nHost: reviews\r\n\r\n")
			if resp, body := c.read("GET"); resp.StatusCode != 200 || body != "ok" {
				t.Fatalf("%s: %d %q", what, resp.StatusCode, body)
			}
		}
		kept := dialRaw(t, base)
		ask(kept, "before the flood")
		var flood []*rawConn
		for range 3 * maxConns {
			flood = append(flood, dialRaw(t, base))
		}
		st.Eventually(t, 10*time.Second, func() bool {
			return statValue(t, sc, "weft_listener_connections_overflow_total") == 2*maxConns+1
		}, "overflow count %d, want %d", statValue(t, sc, "weft_listener_connections_overflow_total"), 2*maxConns+1)
		if n := statValue(t, sc, "weft_listener_connections_active"); n != maxConns {
			t.Errorf("active connections %d, want %d", n, maxConns)
		}
		// The last ones dialled are those refused: closed without a byte.
		flood[len(flood)-1].closedSoon("a connection beyond the cap")
		ask(kept, "during the flood")
		for _, c := range flood {
			c.conn.Close()
		}
		st.Eventually(t, 10*time.Second, func() bool { return statValue(t, sc, "weft_listener_connections_active") == 1 },
			"active connections %d after the flood, want 1", statValue(t, sc, "weft_listener_connections_active"))
		ask(dialRaw(t, base), "a new connection after the flood")
	})
}

// TestOutOfDescriptorsBacksOffAndRecovers pins issue 12 item 3: out of descriptors, the
// event loop retried accept at once forever (a CPU spinning) and the goroutine path
// stopped accepting for good. With RLIMIT_NOFILE just above what the test process holds,
// another process opens 40 connections: accepting fails with EMFILE and backs off (a
// handful of failures counted, not millions), the connection already open is still
// served, and once descriptors are free again new connections are served.
func TestOutOfDescriptorsBacksOffAndRecovers(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := &countingBackend{}
		sc, base := limitedSidecar(t, goroutines, be.ServeHTTP, listenerOpts{})
		ask := func(c *rawConn, what string) {
			t.Helper()
			c.write("GET / HTTP/1.1\r\nHost: reviews\r\n\r\n")
			if resp, body := c.read("GET"); resp.StatusCode != 200 || body != "ok" {
				t.Fatalf("%s: %d %q", what, resp.StatusCode, body)
			}
		}
		kept := dialRaw(t, base)
		ask(kept, "before the flood")

		// The flooding process is started before the limit is lowered (it inherits it).
		_, port, _ := net.SplitHostPort(st.HostPort(base))
		flood := exec.Command("bash", "-c", `read; for i in $(seq 40); do exec {fd}<>/dev/tcp/127.0.0.1/`+port+
			` || exit 1; done; echo opened; read`)
		stdin, _ := flood.StdinPipe()
		stdout, _ := flood.StdoutPipe()
		if err := flood.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { stdin.Close(); _ = flood.Wait() }()
		fds, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		var old syscall.Rlimit
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
			t.Fatal(err)
		}
		low := syscall.Rlimit{Cur: uint64(len(fds) + 2), Max: old.Max}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
			t.Fatal(err)
		}
		restore := func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) }
		defer restore()

		_, _ = io.WriteString(stdin, "go\n")
		if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "opened\n" {
			t.Fatalf("the flooding process: %q %v", line, err)
		}
		st.Eventually(t, 10*time.Second, func() bool { return statValue(t, sc, "weft_listener_accept_errors_total") > 0 },
			"no failed accept counted with 40 connections queued and 2 descriptors free")
		// Two seconds out of descriptors: backing off 5 ms doubling to 1 s, each loop
		// fails about ten times; retrying at once would fail millions of times.
		time.Sleep(2 * time.Second)
		n := statValue(t, sc, "weft_listener_accept_errors_total")
		t.Logf("%d failed accepts in about 2 s out of descriptors", n)
		if n > 20*int64(runtime.GOMAXPROCS(0)) {
			t.Errorf("%d failed accepts in 2 s: accepting does not back off", n)
		}
		ask(kept, "the open connection while out of descriptors")

		restore()
		stdin.Close()
		_ = flood.Wait()
		ask(dialRaw(t, base), "a new connection after the flood")
	})
}

// TestLargeHeadsShareOneMemoryBudget: a thousand connections each holding an unfinished
// 59 KiB head took the sidecar past 90 MB; past the head budget, a head that needs a
// larger buffer is answered 503 and closed, and every byte reserved is given back.
func TestLargeHeadsShareOneMemoryBudget(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		defer httpproxy.SetHeadBudget(100 << 10)()
		be := &countingBackend{}
		_, base := limitedSidecar(t, goroutines, be.ServeHTTP, listenerOpts{hcm: func(h *hcmv3.HttpConnectionManager) {
			h.RequestHeadersTimeout = durationpb.New(2 * time.Second)
		}})
		unfinished := "GET / HTTP/1.1\r\nHost: reviews\r\nX-Big: " + strings.Repeat("a", 50<<10)
		var conns []*rawConn
		for range 4 {
			c := dialRaw(t, base)
			c.write(unfinished)
			conns = append(conns, c)
		}
		refused := 0
		for _, c := range conns {
			_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(c.br, nil)
			if err != nil {
				continue // closed at the head timeout: it had its buffer
			}
			b, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(b), "overloaded") {
				t.Errorf("an unfinished head: %d %q, want 503 overloaded or a close", resp.StatusCode, b)
			}
			refused++
		}
		if refused == 0 || refused == len(conns) {
			t.Errorf("%d of %d large unfinished heads refused, want some (the budget holds one or two)", refused, len(conns))
		}
		st.Eventually(t, 10*time.Second, func() bool { return httpproxy.HeadBudgetUsed() == 0 },
			"%d bytes of the head budget still reserved after the connections closed", httpproxy.HeadBudgetUsed())
		c := dialRaw(t, base)
		c.write(unfinished + "\r\n\r\n")
		if resp, body := c.read("GET"); resp.StatusCode != 200 {
			t.Errorf("a 50 KiB head once the budget is free: %d %q", resp.StatusCode, body)
		}
		st.Eventually(t, 10*time.Second, func() bool { return httpproxy.HeadBudgetUsed() == 0 },
			"%d bytes of the head budget still reserved after a large head was served", httpproxy.HeadBudgetUsed())
	})
}
