package httpproxy_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	connlimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/connection_limit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/weftmesh/weft/sidecar/httpproxy"
	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// Tests of issue 12 items 1–4 on the front end: header limits, slowloris, connection cap
// and accept back-off, request smuggling. Each runs on both paths.

// bothPaths runs f against a sidecar with the event loop and one with a goroutine per
// connection.
func bothPaths(t *testing.T, f func(t *testing.T, goroutines bool)) {
	t.Run("event loop", func(t *testing.T) { f(t, false) })
	t.Run("goroutines", func(t *testing.T) { f(t, true) })
}

// listenerOpts edits the outbound listener: its HCM, and a connection_limit filter when
// maxConns > 0.
type listenerOpts struct {
	hcm      func(*hcmv3.HttpConnectionManager)
	maxConns uint64
}

func limitedListener(o listenerOpts) *listenerv3.Listener {
	l := st.OutboundListener()
	f := l.FilterChains[0].Filters[0]
	var hcm hcmv3.HttpConnectionManager
	if err := f.GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		panic(err)
	}
	if o.hcm != nil {
		o.hcm(&hcm)
	}
	a, _ := anypb.New(&hcm)
	f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
	if o.maxConns > 0 {
		cl, _ := anypb.New(&connlimitv3.ConnectionLimit{StatPrefix: "outbound_http", MaxConnections: wrapperspb.UInt64(o.maxConns)})
		l.FilterChains[0].Filters = append([]*listenerv3.Filter{{Name: "envoy.filters.network.connection_limit",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: cl}}}, l.FilterChains[0].Filters...)
	}
	return l
}

// countingBackend answers "ok" and counts requests, and separately those for /smuggled.
type countingBackend struct {
	all, smuggled atomic.Int64
}

func (b *countingBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.all.Add(1)
	if r.URL.Path == "/smuggled" {
		b.smuggled.Add(1)
	}
	_, _ = io.Copy(io.Discard, r.Body)
	_, _ = io.WriteString(w, "ok")
}

func limitedSidecar(t *testing.T, goroutines bool, h http.HandlerFunc, o listenerOpts) (*st.Sidecar, string) {
	t.Helper()
	be := st.Backend(t, "", h)
	cp := st.StartControlPlane(t)
	snap, _ := oneBackend([]string{be.URL}, nil)
	snap.Listeners = []types.Resource{limitedListener(o)}
	cp.Set(snap)
	sc := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
	return sc, sc.URL(t, st.OutboundListenerName)
}

// closedSoon asserts the sidecar closes c (EOF or reset) within 5 s, sending nothing more.
func (c *rawConn) closedSoon(what string) {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c.br)
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		c.t.Fatalf("%s: the connection is still open", what)
	case len(b) > 0:
		c.t.Fatalf("%s: got %q after the answer, want the connection closed", what, b)
	}
}

// statValue reads one listener metric from /stats.
func statValue(t *testing.T, sc *st.Sidecar, name string) int64 {
	t.Helper()
	var b strings.Builder
	sc.Proxy.WritePrometheus(&b)
	m := regexp.MustCompile(name + `\{listener="outbound_http"\} (\d+)`).FindStringSubmatch(b.String())
	if m == nil {
		t.Fatalf("no %s in /stats:\n%s", name, b.String())
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

func TestHeaderLimitsAnswer431(t *testing.T) {
	head := func(fields, valueLen int) string {
		var b strings.Builder
		b.WriteString("GET / HTTP/1.1\r\nHost: reviews\r\n")
		for i := range fields {
			b.WriteString("X-F" + strconv.Itoa(i) + ": " + strings.Repeat("v", valueLen) + "\r\n")
		}
		return b.String() + "\r\n"
	}
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := &countingBackend{}
		sc, base := limitedSidecar(t, goroutines, be.ServeHTTP, listenerOpts{})
		for _, tc := range []struct {
			name   string
			raw    string
			status int
			says   string
		}{
			{"99 fields and Host: 100", head(99, 1), 200, "ok"},
			{"101 fields", head(101, 1), 431, "max_headers_count"},
			{"a 59 KiB head", head(1, 59<<10), 200, "ok"},
			{"a 61 KiB head", head(1, 61<<10), 431, "max_request_headers_kb"},
			{"a 16 MB head", head(1, 16<<20), 431, "max_request_headers_kb"},
		} {
			c := dialRaw(t, base)
			go func() { _, _ = io.WriteString(c.conn, tc.raw) }() // the sidecar may stop reading early
			resp, body := c.read("GET")
			if resp.StatusCode != tc.status || !strings.Contains(body, tc.says) {
				t.Errorf("%s: %d %q, want %d saying %q", tc.name, resp.StatusCode, body, tc.status, tc.says)
			}
			if tc.status == 431 {
				c.closedSoon(tc.name)
			}
		}
		if n := statValue(t, sc, "weft_listener_requests_refused_total"); n != 3 {
			t.Errorf("refused heads in /stats: %d, want 3", n)
		}
	})
}

func TestHeaderLimitsComeFromTheHCM(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := &countingBackend{}
		_, base := limitedSidecar(t, goroutines, be.ServeHTTP, listenerOpts{hcm: func(h *hcmv3.HttpConnectionManager) {
			h.MaxRequestHeadersKb = wrapperspb.UInt32(2)
			h.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{MaxHeadersCount: wrapperspb.UInt32(3)}
		}})
		for _, tc := range []struct {
			raw    string
			status int
		}{
			{"GET / HTTP/1.1\r\nHost: reviews\r\nA: 1\r\nB: 2\r\n\r\n", 200},
			{"GET / HTTP/1.1\r\nHost: reviews\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", 431},
			{"GET / HTTP/1.1\r\nHost: reviews\r\nA: " + strings.Repeat("a", 1900) + "\r\n\r\n", 200},
			{"GET / HTTP/1.1\r\nHost: reviews\r\nA: " + strings.Repeat("a", 2100) + "\r\n\r\n", 431},
		} {
			c := dialRaw(t, base)
			c.write(tc.raw)
			if resp, body := c.read("GET"); resp.StatusCode != tc.status {
				t.Errorf("%.60q: %d %q, want %d", tc.raw, resp.StatusCode, body, tc.status)
			}
		}
	})
}

// hidden is a second request inside the body of a refused one: it must never be answered
// or forwarded.
const hidden = "GET /smuggled HTTP/1.1\r\nHost: reviews\r\n\r\n"

// TestRequestSmugglingIsRefusedAndClosed pins issue 12 item 4: CL with TE was served and
// the connection kept, so a request hidden in the body was answered; an invalid chunk
// size got 503.
func TestRequestSmugglingIsRefusedAndClosed(t *testing.T) {
	post := "POST / HTTP/1.1\r\nHost: reviews\r\n"
	cases := []struct {
		name   string
		raw    string
		status int
	}{
		{"CL and TE", post + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + hidden, 400},
		{"TE and CL", post + "Transfer-Encoding: chunked\r\nContent-Length: 48\r\n\r\n0\r\n\r\n" + hidden, 400},
		{"duplicate CL", post + "Content-Length: 0\r\nContent-Length: 0\r\n\r\n" + hidden, 400},
		{"conflicting CL", post + "Content-Length: 0\r\nContent-Length: 43\r\n\r\n" + hidden, 400},
		{"TE gzip, chunked", post + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + hidden, 501},
		{"TE chunked, identity", post + "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + hidden, 501},
		{"TE xchunked", post + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + hidden, 501},
		{"obs-fold", post + "X-A: a\r\n b\r\nContent-Length: 0\r\n\r\n" + hidden, 400},
		{"bare LF", "GET / HTTP/1.1\nHost: reviews\n\n" + hidden, 400},
		{"space before colon", post + "Content-Length : 43\r\n\r\n" + hidden, 400},
		{"invalid chunk size", post + "Transfer-Encoding: chunked\r\n\r\nzz\r\n" + hidden, 400},
	}
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := &countingBackend{}
		_, base := limitedSidecar(t, goroutines, be.ServeHTTP, listenerOpts{})
		for _, tc := range cases {
			c := dialRaw(t, base)
			c.write(tc.raw)
			resp, body := c.read("POST")
			if resp.StatusCode != tc.status || len(body) < 10 {
				t.Errorf("%s: %d %q, want %d with a body saying why", tc.name, resp.StatusCode, body, tc.status)
			}
			c.closedSoon(tc.name)
		}
		// The backend is reachable, and never saw a hidden request.
		c := dialRaw(t, base)
		c.write("GET /after HTTP/1.1\r\nHost: reviews\r\n\r\n")
		if resp, body := c.read("GET"); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("a plain request after the set: %d %q", resp.StatusCode, body)
		}
		if n := be.smuggled.Load(); n != 0 {
			t.Errorf("the backend answered %d hidden requests", n)
		}
	})
}

// rawBackend answers each request on a connection with the response its path names, and
// counts connections the sidecar closed after a response.
type rawBackend struct {
	ln       net.Listener
	conns    atomic.Int64
	hungUp   atomic.Int64 // connections the sidecar closed
	response map[string]string
}

func newRawBackend(t *testing.T, response map[string]string) *rawBackend {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &rawBackend{ln: ln, response: response}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			b.conns.Add(1)
			go b.serve(conn)
		}
	}()
	return b
}

func (b *rawBackend) serve(conn net.Conn) {
	defer conn.Close()
	br := bufioReader(conn)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			b.hungUp.Add(1)
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		if _, err := io.WriteString(conn, b.response[req.URL.Path]); err != nil {
			return
		}
	}
}

// TestMalformedUpstreamResponsesAre502AndNotReused: a response whose framing two parsers
// could read differently must not desynchronise the pooled connection: the caller gets
// 502 and the connection is closed.
func TestMalformedUpstreamResponsesAre502AndNotReused(t *testing.T) {
	const next = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nnext!"
	bad := map[string]string{
		"/cl-te":  "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + next,
		"/cl-cl":  "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok" + next,
		"/fold":   "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok" + next,
		"/bare":   "HTTP/1.1 200 OK\nContent-Length: 2\n\nok" + next,
		"/te-zip": "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx" + next,
		"/good":   "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood",
	}
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := newRawBackend(t, bad)
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{"http://" + be.ln.Addr().String()}, nil)
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		c := dialRaw(t, base)
		n := 0
		for path := range bad {
			if path == "/good" {
				continue
			}
			n++
			c.write("GET " + path + " HTTP/1.1\r\nHost: reviews\r\n\r\n")
			resp, body := c.read("GET")
			if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "malformed") {
				t.Errorf("%s: %d %q, want 502 saying the response is malformed", path, resp.StatusCode, body)
			}
			if resp.Close {
				c = dialRaw(t, base)
			}
		}
		st.Eventually(t, 10*time.Second, func() bool { return be.hungUp.Load() == int64(n) },
			"the sidecar closed %d of %d upstream connections that sent malformed responses", be.hungUp.Load(), n)
		c.write("GET /good HTTP/1.1\r\nHost: reviews\r\n\r\n")
		if resp, body := c.read("GET"); resp.StatusCode != 200 || body != "good" {
			t.Errorf("/good after them: %d %q", resp.StatusCode, body)
		}
		if got := be.conns.Load(); got != int64(n+1) {
			t.Errorf("%d upstream connections, want %d: one per malformed response and one for /good", got, n+1)
		}
	})
}

func bufioReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }

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

// TestH2CHeaderLimit: the h2c server takes max_request_headers_kb too (it advertises it as
// SETTINGS_MAX_HEADER_LIST_SIZE and answers 431 past it); it used net/http's 1 MB default.
func TestH2CHeaderLimit(t *testing.T) {
	be := &countingBackend{}
	_, base := limitedSidecar(t, false, be.ServeHTTP, listenerOpts{})
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	h2c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Protocols: &protocols}}
	do := func(valueLen int) (int, error) {
		req, _ := http.NewRequest(http.MethodGet, base+"/", nil)
		req.Host = "reviews"
		req.Header.Set("X-Big", strings.Repeat("v", valueLen))
		resp, err := h2c.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		if resp.ProtoMajor != 2 {
			t.Fatalf("answered over %s, want HTTP/2", resp.Proto)
		}
		return resp.StatusCode, nil
	}
	if code, err := do(1 << 10); code != 200 {
		t.Fatalf("a 1 KiB header over h2c: %d %v", code, err)
	}
	// Past the limit the client refuses to send (it knows the server's setting) or the
	// server answers 431.
	if code, err := do(70 << 10); code != http.StatusRequestHeaderFieldsTooLarge && (err == nil || !strings.Contains(err.Error(), "header list")) {
		t.Errorf("a 70 KiB header over h2c: %d %v, want 431 or the client refusing to send it", code, err)
	}
	if n := be.all.Load(); n != 1 {
		t.Errorf("the backend saw %d requests, want 1", n)
	}
}

// TestBrokenUpstreamBodyIsNotPassedOffAsWhole: a response whose chunked body breaks (an
// invalid chunk size) used to be ended as if whole (a last chunk was written, the
// caller's connection kept): the caller took a truncated body for the full one. Its head was already sent, so the caller's connection
// is closed without ending the body; the upstream connection is closed too, and the
// next request is answered correctly on a new one.
func TestBrokenUpstreamBodyIsNotPassedOffAsWhole(t *testing.T) {
	const next = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nnext!"
	responses := map[string]string{
		"/bad-chunk": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n" + next,
		"/good":      "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood",
	}
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := newRawBackend(t, responses)
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{"http://" + be.ln.Addr().String()}, nil)
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		c := dialRaw(t, base)
		c.write("GET /bad-chunk HTTP/1.1\r\nHost: reviews\r\n\r\n")
		_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(c.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		if err == nil {
			t.Errorf("a broken chunked body reached the caller as a whole body %q", b)
		}
		c.closedSoon("the caller's connection after a broken body")
		st.Eventually(t, 10*time.Second, func() bool { return be.hungUp.Load() == 1 },
			"the upstream connection that sent a broken body is still open")
		c = dialRaw(t, base)
		c.write("GET /good HTTP/1.1\r\nHost: reviews\r\n\r\n")
		if resp, body := c.read("GET"); resp.StatusCode != 200 || body != "good" {
			t.Errorf("/good after it: %d %q", resp.StatusCode, body)
		}
	})
}
