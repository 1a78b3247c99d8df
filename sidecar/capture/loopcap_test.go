package capture

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// Captured HTTP/1.1 connections on both HTTP paths: the event loop takes them from the
// sniffed bytes on (httpproxy/loopcapture.go), the goroutine path as before.

// metricSum adds up one of the HTTP plane's per-listener metrics over every listener.
func metricSum(s *sidecar, name string) int64 {
	var b strings.Builder
	s.px.WritePrometheus(&b)
	var sum int64
	re := regexp.MustCompile(`(?m)^` + name + `\{[^}]*\} (-?\d+)$`)
	for _, m := range re.FindAllStringSubmatch(b.String(), -1) {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		sum += n
	}
	return sum
}

// checkLoop asserts which path served the captured connections: on the event loop at
// least want of them joined it; on the goroutine path none did.
func checkLoop(t *testing.T, s *sidecar, goroutines bool, want int64) {
	t.Helper()
	got := metricSum(s, "weft_listener_loop_captured_total")
	if goroutines && got != 0 || !goroutines && got < want {
		t.Errorf("weft_listener_loop_captured_total = %d (goroutine path: %v, want >= %d on the loop)", got, goroutines, want)
	}
}

// waitNoConns waits until the HTTP plane holds no downstream connection.
func waitNoConns(t *testing.T, s *sidecar) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for metricSum(s, "weft_listener_connections_active") != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("downstream connections still open: %d", metricSum(s, "weft_listener_connections_active"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// readResponses reads n responses from br and returns their bodies.
func readResponses(t *testing.T, br *bufio.Reader, n int) []string {
	t.Helper()
	var out []string
	for i := range n {
		resp, err := http.ReadResponse(br, nil)
		code, b := body(resp, err)
		if code != 200 {
			t.Fatalf("response %d: %d %q", i, code, b)
		}
		out = append(out, b)
	}
	return out
}

// Known hosts are routed by the chain of the original destination, sniffed (port 7000) or
// not (9080), and the loop serves them without handing them off.
func TestCapturedKnownHostBothPaths(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		m := mesh{reviews9080: named(t, "p9080"), reviews9090: named(t, "p9090"), app7000HTTP: named(t, "app-http"), app7000TCP: named(t, "app-tcp")}
		s := startSidecar(t, m, goroutines, time.Second)
		for dst, c := range map[string]struct{ host, want string }{
			"10.96.0.10:9080": {"reviews:9080", "p9080 host=reviews:9080"},
			"10.96.0.10:9090": {"10.96.0.10:9090", "p9090 host=10.96.0.10:9090"},
			"10.96.0.40:7000": {"app:7000", "app-http host=app:7000"},
		} {
			front := s.front(t, dst)
			req, _ := http.NewRequest("GET", "http://"+front+"/", nil)
			req.Host = c.host
			if code, b := body(noProxy.Do(req)); code != 200 || b != c.want {
				t.Errorf("captured to %s: %d %q, want %q", dst, code, b, c.want)
			}
		}
		checkLoop(t, s, goroutines, 3)
		if h := metricSum(s, "weft_listener_loop_handoffs_total"); h != 0 {
			t.Errorf("%d handoffs for plain GETs to known hosts", h)
		}
		waitNoConns(t, s)
	})
}

// An unknown Host on a Service port's chain passes through to the original destination
// (on the loop: handed to the goroutine path, which must still know that destination),
// on the same connection as a request to a known host before and after it; under
// REGISTRY_ONLY it is answered 502.
func TestCapturedUnknownHostPassthroughBothPaths(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		for _, blocked := range []bool{false, true} {
			// The original destination: a server at a port the mesh routes (9080) on an
			// address no Service has.
			ln, err := net.Listen("tcp", "127.0.0.77:9080")
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = w.Write([]byte("external host=" + r.Host))
			})}
			go func() { _ = srv.Serve(ln) }()
			m := mesh{reviews9080: named(t, "p9080"), reviews9090: named(t, "p9090"), blocked: blocked}
			s := startSidecar(t, m, goroutines, time.Second)
			front := s.front(t, "127.0.0.77:9080")
			c, err := net.Dial("tcp", front)
			if err != nil {
				t.Fatal(err)
			}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			br := bufio.NewReader(c)
			_, _ = c.Write([]byte("GET /a HTTP/1.1\r\nHost: reviews:9080\r\n\r\n"))
			if got := readResponses(t, br, 1)[0]; got != "p9080 host=reviews:9080" {
				t.Errorf("known host first: %q", got)
			}
			_, _ = c.Write([]byte("GET /b HTTP/1.1\r\nHost: api.example.com\r\n\r\n"))
			resp, err := http.ReadResponse(br, nil)
			code, b := body(resp, err)
			switch {
			case !blocked && (code != 200 || b != "external host=api.example.com"):
				t.Errorf("passthrough: %d %q", code, b)
			case blocked && (code != 502 || !strings.Contains(b, "REGISTRY_ONLY")):
				t.Errorf("REGISTRY_ONLY: %d %q", code, b)
			}
			_, _ = c.Write([]byte("GET /c HTTP/1.1\r\nHost: reviews:9080\r\n\r\n"))
			if got := readResponses(t, br, 1)[0]; got != "p9080 host=reviews:9080" {
				t.Errorf("known host after: %q", got)
			}
			c.Close()
			checkLoop(t, s, goroutines, 1)
			st := stats(s)
			want := "weft_passthrough_requests_total "
			if blocked {
				want = "weft_blocked_requests_total "
			}
			if !regexp.MustCompile(`(?m)^` + want + `[1-9]`).MatchString(st) {
				t.Errorf("blocked=%v: %s not counted:\n%s", blocked, want, st)
			}
			waitNoConns(t, s)
			srv.Close()
		}
	})
}

// Pipelined requests, the first ones in the bytes sniffing read, a POST body among them:
// each is answered, in order.
func TestCapturedPipelinedAfterSniffBothPaths(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		echo := tcpHTTP(t)
		m := mesh{reviews9080: named(t, "p9080"), reviews9090: named(t, "p9090"), app7000HTTP: echo, app7000TCP: named(t, "app-tcp")}
		s := startSidecar(t, m, goroutines, time.Second)
		front := s.front(t, "10.96.0.40:7000")
		c, err := net.Dial("tcp", front)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		var all strings.Builder
		for i := range 5 {
			if i == 2 {
				all.WriteString("POST /p2 HTTP/1.1\r\nHost: app:7000\r\nContent-Length: 5\r\n\r\nhello")
				continue
			}
			all.WriteString("GET /p" + strconv.Itoa(i) + " HTTP/1.1\r\nHost: app:7000\r\n\r\n")
		}
		if _, err := c.Write([]byte(all.String())); err != nil { // one write: sniffing reads the first of it
			t.Fatal(err)
		}
		got := readResponses(t, bufio.NewReader(c), 5)
		for i, b := range got {
			want := "GET /p" + strconv.Itoa(i) + " "
			if i == 2 {
				want = "POST /p2 hello"
			}
			if b != want {
				t.Errorf("response %d: %q, want %q", i, b, want)
			}
		}
		checkLoop(t, s, goroutines, 1)
	})
}

// A request head split across the sniffed bytes and later reads (the method itself cut),
// then a body that arrives after its head: answered once whole.
func TestCapturedRequestSplitAcrossSniffBothPaths(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		echo := tcpHTTP(t)
		m := mesh{reviews9080: named(t, "p9080"), reviews9090: named(t, "p9090"), app7000HTTP: echo, app7000TCP: named(t, "app-tcp")}
		s := startSidecar(t, m, goroutines, 2*time.Second)
		front := s.front(t, "10.96.0.40:7000")
		c, err := net.Dial("tcp", front)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		for _, part := range []string{"PO", "ST /split HTTP/1.1\r\nHost: ap", "p:7000\r\nContent-Length: 6\r\n\r\n", "wo", "rld!"} {
			if _, err := c.Write([]byte(part)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(30 * time.Millisecond)
		}
		if got := readResponses(t, bufio.NewReader(c), 1)[0]; got != "POST /split world!" {
			t.Errorf("split request: %q", got)
		}
		checkLoop(t, s, goroutines, 1)
	})
}

// A client that closes mid-head or mid-body: nothing reaches the app, and the connection
// is let go (no downstream connection left open).
func TestCapturedClientClosesMidRequestBothPaths(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var hits atomicCount
		app := countingServer(t, &hits)
		m := mesh{reviews9080: named(t, "p9080"), reviews9090: named(t, "p9090"), app7000HTTP: app, app7000TCP: named(t, "app-tcp")}
		s := startSidecar(t, m, goroutines, time.Second)
		front := s.front(t, "10.96.0.40:7000")
		for _, partial := range []string{
			"GET /half HTTP/1.1\r\nHost: app:7000\r\nX-Cut: ye",
			"POST /body HTTP/1.1\r\nHost: app:7000\r\nContent-Length: 100\r\n\r\nonly part of it",
		} {
			c, err := net.Dial("tcp", front)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = c.Write([]byte(partial))
			time.Sleep(50 * time.Millisecond)
			c.Close()
		}
		waitNoConns(t, s)
		// A whole request afterwards is served (and is the app's only one).
		req, _ := http.NewRequest("GET", "http://"+front+"/whole", nil)
		req.Host = "app:7000"
		if code, _ := body(noProxy.Do(req)); code != 200 {
			t.Errorf("whole request after cut ones: %d", code)
		}
		if n := hits.load(); n != 1 {
			t.Errorf("the app saw %d requests, want 1 (the cut ones must not reach it)", n)
		}
		checkLoop(t, s, goroutines, 3)
		waitNoConns(t, s)
	})
}

// tcpHTTP is an HTTP server that answers "<method> <path> <body>".
func tcpHTTP(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = w.Write([]byte(r.Method + " " + r.URL.Path + " " + string(b)))
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

type atomicCount struct{ n atomic.Int64 }

func (a *atomicCount) load() int64 { return a.n.Load() }

// countingServer is an HTTP server that counts the requests it gets.
func countingServer(t *testing.T, n *atomicCount) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.n.Add(1)
		_, _ = w.Write([]byte("ok"))
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// HTTP/2 (h2c with prior knowledge, in the sniffed bytes) and a WebSocket Upgrade on a
// captured connection: the loop hands them to the goroutine path, which serves them as
// before.
func TestCapturedH2cAndWebSocketBothPaths(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		ws := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Upgrade") == "" {
				_, _ = w.Write([]byte("plain " + r.Proto))
				return
			}
			c, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			defer c.CloseNow()
			for {
				typ, msg, err := c.Read(r.Context())
				if err != nil {
					return
				}
				if err := c.Write(r.Context(), typ, append([]byte("echo "), msg...)); err != nil {
					return
				}
			}
		})}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = ws.Serve(ln) }()
		t.Cleanup(func() { ws.Close() })
		m := mesh{reviews9080: named(t, "p9080"), reviews9090: named(t, "p9090"), app7000HTTP: ln.Addr().String(), app7000TCP: named(t, "app-tcp")}
		s := startSidecar(t, m, goroutines, time.Second)
		front := s.front(t, "10.96.0.40:7000")

		var protos http.Protocols
		protos.SetUnencryptedHTTP2(true)
		h2 := &http.Client{Transport: &http.Transport{Proxy: nil, Protocols: &protos}, Timeout: 5 * time.Second}
		defer h2.CloseIdleConnections()
		req, _ := http.NewRequest("GET", "http://"+front+"/h2", nil)
		req.Host = "app:7000"
		resp, err := h2.Do(req)
		if err != nil {
			t.Fatalf("h2c: %v", err)
		}
		code, b := body(resp, nil)
		if code != 200 || resp.ProtoMajor != 2 || b != "plain HTTP/1.1" {
			t.Errorf("h2c: %d proto %d %q", code, resp.ProtoMajor, b)
		}

		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(ctx, "ws://"+front+"/ws", &websocket.DialOptions{Host: "app:7000", HTTPClient: noProxy})
		if err != nil {
			t.Fatalf("WebSocket through the captured path: %v", err)
		}
		defer c.CloseNow()
		if err := c.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
			t.Fatal(err)
		}
		if _, msg, err := c.Read(ctx); err != nil || string(msg) != "echo hi" {
			t.Errorf("WebSocket echo: %q %v", msg, err)
		}
		checkLoop(t, s, goroutines, 2)
		if h := metricSum(s, "weft_listener_loop_handoffs_total"); !goroutines && h < 2 {
			t.Errorf("loop handoffs = %d, want the h2c and Upgrade connections handed off", h)
		}
		if u := metricSum(s, "weft_listener_upgrades_total"); u != 1 {
			t.Errorf("upgrades_total = %d, want 1", u)
		}
	})
}
