package httpproxy_test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// Tests of the outbound event loop (loop.go) where it differs from the goroutine path:
// pipelining, flow control, pooled connections the server closed, draining, and the
// hand-offs to the goroutine path. Every other feature test runs through the loop too,
// since it serves the outbound listener.

// rawConn is a client connection that writes bytes as given and reads responses.
type rawConn struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

func dialRaw(t *testing.T, base string) *rawConn {
	t.Helper()
	conn, err := net.Dial("tcp", st.HostPort(base))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawConn{t: t, conn: conn, br: bufio.NewReader(conn)}
}

func (c *rawConn) write(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatal(err)
	}
}

// read reads one response to a request with the given method, body included.
func (c *rawConn) read(method string) (*http.Response, string) {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
	if err != nil {
		c.t.Fatalf("reading a response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("reading a response body: %v", err)
	}
	return resp, string(b)
}

func loopSidecar(t *testing.T, h http.HandlerFunc, ropts ...st.RouteOption) (base string, be *httptest.Server) {
	be = st.Backend(t, "", h)
	cp := st.StartControlPlane(t)
	snap, _ := oneBackend([]string{be.URL}, ropts)
	cp.Set(snap)
	sc := st.StartSidecar(t, cp, st.SidecarOptions{})
	return sc.URL(t, st.OutboundListenerName), be
}

func TestLoopPipelinedRequestsAnswerInOrder(t *testing.T) {
	base, _ := loopSidecar(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(50 * time.Millisecond) // the later requests must wait behind it
		}
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.Path, b)
	})
	c := dialRaw(t, base)
	c.write("GET /slow HTTP/1.1\r\nHost: reviews\r\n\r\n" +
		"POST /two HTTP/1.1\r\nHost: reviews\r\nContent-Length: 4\r\n\r\nbody" +
		"HEAD /three HTTP/1.1\r\nHost: reviews\r\n\r\n" +
		"GET /four HTTP/1.1\r\nHost: reviews\r\n\r\n")
	for _, want := range []struct{ method, body string }{
		{"GET", "GET /slow "}, {"POST", "POST /two body"}, {"HEAD", ""}, {"GET", "GET /four "},
	} {
		resp, body := c.read(want.method)
		if resp.StatusCode != 200 || body != want.body {
			t.Fatalf("%s: %d %q, want 200 %q", want.method, resp.StatusCode, body, want.body)
		}
	}
}

func TestLoopLargeResponseToASlowReader(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), 256<<10) // 4 MiB with Content-Length
	sum := sha256.Sum256(payload)
	base, _ := loopSidecar(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(payload)))
		_, _ = w.Write(payload)
	})
	c := dialRaw(t, base)
	c.write("GET /big HTTP/1.1\r\nHost: reviews\r\n\r\n")
	_ = c.conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Read slowly at first: the proxy must hold the upstream back, not buffer it all.
	h := sha256.New()
	buf := make([]byte, 64<<10)
	var got int
	for i := 0; ; i++ {
		if i < 8 {
			time.Sleep(20 * time.Millisecond)
		}
		n, err := resp.Body.Read(buf)
		h.Write(buf[:n])
		got += n
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d bytes: %v", got, err)
		}
	}
	if got != len(payload) || !bytes.Equal(h.Sum(nil), sum[:]) {
		t.Fatalf("got %d bytes (digest match %v), want %d", got, bytes.Equal(h.Sum(nil), sum[:]), len(payload))
	}
	// The connection carries the next request.
	c.write("GET /again HTTP/1.1\r\nHost: reviews\r\n\r\n")
	if resp, body := c.read("GET"); resp.StatusCode != 200 || len(body) != len(payload) {
		t.Fatalf("second request: %d with %d bytes", resp.StatusCode, len(body))
	}
}

// TestLoopAndGoroutinePathAgree sends the same requests through a sidecar with the event
// loop and one without, and compares what the client gets.
func TestLoopAndGoroutinePathAgree(t *testing.T) {
	be := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Seen-Edit", r.Header.Get("X-Edit"))
		w.Header().Set("X-Drop", "x")
		switch r.URL.Path {
		case "/nocontent":
			w.WriteHeader(http.StatusNoContent)
			return
		case "/notmodified":
			w.WriteHeader(http.StatusNotModified)
			return
		case "/conn":
			w.Header().Set("Connection", "X-Private")
			w.Header().Set("X-Private", "secret")
		case "/stream":
			w.(http.Flusher).Flush()
		}
		b, _ := io.ReadAll(r.Body)
		out := fmt.Sprintf("%s %s?%s %s", r.Method, r.URL.Path, r.URL.RawQuery, b)
		if r.URL.Path == "/error" {
			w.Header().Set("Content-Length", strconv.Itoa(len(out)))
			w.WriteHeader(http.StatusInternalServerError)
		}
		_, _ = io.WriteString(w, out)
	})
	edits := st.Edit(func(r *routev3.Route) {
		r.ResponseHeadersToRemove = []string{"X-Drop"}
	})
	var sidecars []*st.Sidecar
	start := func(goroutines bool, ropts ...st.RouteOption) string {
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{be.URL}, ropts)
		cp.Set(snap)
		sc := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
		sidecars = append(sidecars, sc)
		return sc.URL(t, st.OutboundListenerName)
	}
	type answer struct {
		status int
		header http.Header
		body   string
	}
	ask := func(base, raw, method string) answer {
		c := dialRaw(t, base)
		c.write(raw)
		resp, body := c.read(method)
		h := resp.Header.Clone()
		h.Del("Date")
		return answer{resp.StatusCode, h, body}
	}
	for _, ropts := range [][]st.RouteOption{nil, {edits}} {
		loop, goroutines := start(false, ropts...), start(true, ropts...)
		for _, rq := range []struct{ method, raw string }{
			{"GET", "GET /plain?a=1 HTTP/1.1\r\nHost: reviews\r\nX-Edit: e\r\n\r\n"},
			{"POST", "POST /post HTTP/1.1\r\nHost: reviews\r\nContent-Length: 3\r\n\r\nabc"},
			{"HEAD", "HEAD /head HTTP/1.1\r\nHost: reviews\r\n\r\n"},
			{"GET", "GET /nocontent HTTP/1.1\r\nHost: reviews\r\n\r\n"},
			{"GET", "GET /notmodified HTTP/1.1\r\nHost: reviews\r\n\r\n"},
			{"GET", "GET /conn HTTP/1.1\r\nHost: reviews\r\n\r\n"},
			{"GET", "GET /error HTTP/1.1\r\nHost: reviews\r\n\r\n"},
			{"GET", "GET /stream HTTP/1.1\r\nHost: reviews\r\n\r\n"},
			{"GET", "GET /close HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n"},
			{"GET", "GET /nohost HTTP/1.1\r\n\r\n"},
			{"GET", "GET /unknown HTTP/1.1\r\nHost: nobody\r\n\r\n"},
		} {
			a, b := ask(loop, rq.raw, rq.method), ask(goroutines, rq.raw, rq.method)
			if a.status != b.status || a.body != b.body || !sameFields(a.header, b.header) {
				t.Errorf("%q (edits %v):\nloop:       %d %v %q\ngoroutines: %d %v %q", rq.raw, ropts != nil,
					a.status, a.header, a.body, b.status, b.header, b.body)
			}
		}
	}

	// The loop passed the streamed response and the requests it does not route on (no
	// Host, unknown host) to the goroutine path, and says so in its stats.
	for i, sc := range sidecars {
		var stats strings.Builder
		sc.Proxy.WritePrometheus(&stats)
		n := handoffs(t, stats.String())
		if loop := i%2 == 0; loop && n < 3 || !loop && n != 0 {
			t.Errorf("sidecar %d (event loop %v): %d hand-offs in /stats", i, loop, n)
		}
	}
}

func handoffs(t *testing.T, stats string, listener ...string) int {
	t.Helper()
	for line := range strings.Lines(stats) {
		name := st.OutboundListenerName
		if len(listener) > 0 {
			name = listener[0]
		}
		if v, ok := strings.CutPrefix(line, `weft_listener_loop_handoffs_total{listener="`+name+`"} `); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no hand-off counter for listener %v in:\n%s", listener, stats)
	return 0
}

// sameFields compares headers as a client sees them.
func sameFields(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !slices.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

func TestLoopRequestsArrivingInPieces(t *testing.T) {
	base, _ := loopSidecar(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s", r.URL.Path, b)
	})
	c := dialRaw(t, base)
	if tc, ok := c.conn.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	// Head and body a few bytes at a time, the second request starting in the same
	// write as the first one's last bytes.
	raw := "POST /first HTTP/1.1\r\nHost: reviews\r\nContent-Length: 10\r\n\r\n0123456789" +
		"POST /second HTTP/1.1\r\nHost: reviews\r\nContent-Length: 3\r\n\r\nxyz"
	for i := 0; i < len(raw); i += 7 {
		c.write(raw[i:min(i+7, len(raw))])
		time.Sleep(2 * time.Millisecond)
	}
	for _, want := range []string{"/first 0123456789", "/second xyz"} {
		if resp, body := c.read("POST"); resp.StatusCode != 200 || body != want {
			t.Fatalf("%d %q, want 200 %q", resp.StatusCode, body, want)
		}
	}
}

// The inbound listener runs on the loop once the app has answered; requests beyond
// containerConcurrency wait on the goroutine path, and beyond the queue get 503.
// A host removed from EDS while it keeps running gets no new requests, and the loop
// closes the idle connections it pooled to it.
// Many callers at once, each mixing requests the loop serves with ones it hands over
// (chunked bodies, streamed and large responses), with retries on: every answer must be
// the one to its own request.
func TestLoopUnderMixedLoad(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 100<<10)
	be := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/big":
			w.Header().Set("Content-Length", strconv.Itoa(len(big)+len(b)))
			_, _ = w.Write(b)
			_, _ = w.Write(big)
			return
		case "/stream":
			w.(http.Flusher).Flush()
		}
		fmt.Fprintf(w, "%s %s %s", r.Method, r.URL.RawQuery, b)
	})
	cp := st.StartControlPlane(t)
	snap, _ := oneBackend([]string{be.URL}, []st.RouteOption{st.Retries("5xx", 1, 0)})
	cp.Set(snap)
	sc := st.StartSidecar(t, cp, st.SidecarOptions{})
	base := sc.URL(t, st.OutboundListenerName)
	const callers, calls = 24, 60
	errs := make(chan error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Calls the loop serves share one keep-alive connection; the others each go on
			// a connection of their own, which the loop hands over.
			client := &http.Client{Timeout: 10 * time.Second}
			oneShot := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			for j := range calls {
				id := fmt.Sprintf("%d-%d", i, j)
				var req *http.Request
				var want string
				switch j % 5 {
				case 0:
					req, _ = http.NewRequest(http.MethodGet, base+"/get?"+id, nil)
					want = "GET " + id + " "
				case 1:
					req, _ = http.NewRequest(http.MethodPost, base+"/post?"+id, strings.NewReader("body-"+id))
					want = "POST " + id + " body-" + id
				case 2: // no length: sent chunked, so handed to the goroutine path
					req, _ = http.NewRequest(http.MethodPost, base+"/chunked?"+id, io.MultiReader(strings.NewReader("c-"+id)))
					want = "POST " + id + " c-" + id
				case 3:
					req, _ = http.NewRequest(http.MethodGet, base+"/stream?"+id, nil)
					want = "GET " + id + " "
				case 4:
					req, _ = http.NewRequest(http.MethodPost, base+"/big?"+id, strings.NewReader(id))
					want = id + string(big)
				}
				req.Host = "reviews"
				c := client
				if j%5 == 2 || j%5 == 3 {
					c = oneShot
				}
				resp, err := c.Do(req)
				if err != nil {
					errs <- fmt.Errorf("%s: %w", id, err)
					return
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 || string(b) != want {
					errs <- fmt.Errorf("%s: %d %.60q (err %w), want 200 %.60q", id, resp.StatusCode, b, err, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Exactly the chunked requests and the streamed responses left the loop.
	var stats strings.Builder
	sc.Proxy.WritePrometheus(&stats)
	if n, want := handoffs(t, stats.String()), callers*calls*2/5; n != want {
		t.Errorf("%d connections handed to the goroutine path, want %d (the chunked and streamed calls)", n, want)
	}
}
