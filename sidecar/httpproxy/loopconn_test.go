package httpproxy_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"github.com/weftmesh/weft/sidecar/httpproxy"
	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// Event-loop tests about connections: pooled ones the server closes, hosts that leave,
// draining, gateway errors, and the inbound listener.

func TestLoopRecoversFromPooledConnectionsTheServerClosed(t *testing.T) {
	// A server that answers one request per connection and closes the connection when a
	// second one arrives on it, without answering: the race every keep-alive client
	// meets when a server times out an idle connection just as a request is sent.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				br := bufio.NewReader(conn)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				_, _ = io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				_, _ = http.ReadRequest(br) // and close without an answer
			}()
		}
	}()
	cp := st.StartControlPlane(t)
	snap, _ := oneBackend([]string{"http://" + ln.Addr().String()}, nil) // no retry policy
	cp.Set(snap)
	base := st.StartSidecar(t, cp, st.SidecarOptions{}).URL(t, st.OutboundListenerName)
	c := dialRaw(t, base)
	for i := range 10 {
		c.write("GET / HTTP/1.1\r\nHost: reviews\r\n\r\n")
		if resp, body := c.read("GET"); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q, want 200 ok (sent again on a new connection)", i, resp.StatusCode, body)
		}
	}

	// Idle pooled connections the server closes are dropped, not used.
	base2, be := loopSidecar(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	client := &http.Client{Timeout: 10 * time.Second}
	for round := range 3 {
		for range 8 {
			if code, body, _ := st.Get(t, client, base2, "reviews", "/"); code != 200 || body != "ok" {
				t.Fatalf("round %d: %d %q", round, code, body)
			}
		}
		be.CloseClientConnections()
		time.Sleep(20 * time.Millisecond)
	}
}

func TestLoopDrainFinishesInFlightAndClosesIdle(t *testing.T) {
	release := make(chan struct{})
	upstream := make(chan struct{}, 1)
	be := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hold" {
			upstream <- struct{}{}
			<-release
		}
		_, _ = io.WriteString(w, "done")
	})
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free) // before the backend's own cleanup, which waits for the held handler
	cp := st.StartControlPlane(t)
	snap, _ := oneBackend([]string{be.URL}, nil)
	cp.Set(snap)
	sc := st.StartSidecar(t, cp, st.SidecarOptions{})
	base := sc.URL(t, st.OutboundListenerName)

	idle := dialRaw(t, base)
	idle.write("GET / HTTP/1.1\r\nHost: reviews\r\n\r\n")
	if resp, _ := idle.read("GET"); resp.StatusCode != 200 {
		t.Fatalf("warm-up: %d", resp.StatusCode)
	}
	busy := dialRaw(t, base)
	busy.write("GET /hold HTTP/1.1\r\nHost: reviews\r\n\r\n")
	select {
	case <-upstream: // the request is in flight at the backend
	case <-time.After(10 * time.Second):
		t.Fatal("the held request never reached the backend")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- sc.Proxy.Shutdown(ctx) }()

	// The idle connection is closed; new connections are refused.
	_ = idle.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idle.br.ReadByte(); err != io.EOF {
		t.Fatalf("idle connection during drain: %v, want EOF", err)
	}
	st.Eventually(t, 5*time.Second, func() bool {
		c, err := net.Dial("tcp", st.HostPort(base))
		if err != nil {
			return true
		}
		c.Close()
		return false
	}, "the listener still accepts during the drain")
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) with a request in flight", err)
	default:
	}
	free()
	resp, body := busy.read("GET")
	if resp.StatusCode != 200 || body != "done" || !resp.Close {
		t.Fatalf("in-flight request: %d %q close=%v, want 200 done with Connection: close", resp.StatusCode, body, resp.Close)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

func TestLoopAnswersGatewayErrorsLikeEnvoy(t *testing.T) {
	// A host that refuses connections: 503 "connection failure", then the connection
	// carries the next request.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String()
	l.Close()
	cp := st.StartControlPlane(t)
	snap, _ := oneBackend([]string{dead}, nil)
	cp.Set(snap)
	base := st.StartSidecar(t, cp, st.SidecarOptions{}).URL(t, st.OutboundListenerName)
	c := dialRaw(t, base)
	for range 2 {
		c.write("GET / HTTP/1.1\r\nHost: reviews\r\n\r\n")
		resp, body := c.read("GET")
		if resp.StatusCode != 503 || !strings.Contains(body, "connection failure") {
			t.Fatalf("refused host: %d %q, want 503 naming a connection failure", resp.StatusCode, body)
		}
	}
}

func TestLoopInboundEnforcesContainerConcurrency(t *testing.T) {
	var mu sync.Mutex
	running, peak := 0, 0
	app := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		running++
		peak = max(peak, running)
		mu.Unlock()
		if r.URL.Path == "/slow" {
			time.Sleep(100 * time.Millisecond)
		}
		mu.Lock()
		running--
		mu.Unlock()
		_, _ = io.WriteString(w, "app")
	})
	port, _ := strconv.Atoi(app.URL[len("http://127.0.0.1:"):])
	cp := st.StartControlPlane(t)
	cp.Set(st.Snapshot{Listeners: []types.Resource{st.InboundListener(uint32(port))},
		Clusters: []types.Resource{st.InboundCluster(uint32(port))}})
	sc := st.StartSidecar(t, cp, st.SidecarOptions{})
	base := sc.URL(t, st.InboundListenerName)
	sc.Proxy.SetInboundConcurrency(2)
	in := sc.Proxy.Listener(st.InboundListenerName)

	// The first answer is waited for on the goroutine path (the app may not listen yet);
	// connections opened after it are served by the loop.
	if code, body, _ := st.Get(t, client, base, "app", "/"); code != 200 || body != "app" {
		t.Fatalf("first call: %d %q", code, body)
	}
	var stats strings.Builder
	sc.Proxy.WritePrometheus(&stats)
	before := handoffs(t, stats.String(), st.InboundListenerName)
	for range 5 {
		c := dialRaw(t, base)
		c.write("GET / HTTP/1.1\r\nHost: app\r\n\r\n")
		if resp, body := c.read("GET"); resp.StatusCode != 200 || body != "app" {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
	}
	stats.Reset()
	sc.Proxy.WritePrometheus(&stats)
	if after := handoffs(t, stats.String(), st.InboundListenerName); after != before {
		t.Fatalf("%d connections handed off with free slots, want none (the loop serves them)", after-before)
	}

	// 2 run, 20 wait, the rest are refused at once: 30 callers on their own connections.
	codes := make(chan int, 30)
	var wg sync.WaitGroup
	for range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := dialRaw(t, base)
			c.write("GET /slow HTTP/1.1\r\nHost: app\r\n\r\n")
			resp, _ := c.read("GET")
			codes <- resp.StatusCode
		}()
	}
	wg.Wait()
	close(codes)
	ok, refused := 0, 0
	for c := range codes {
		switch c {
		case 200:
			ok++
		case 503:
			refused++
		}
	}
	if ok+refused != 30 || ok < 22 || peak > 2 {
		t.Fatalf("%d answered 200, %d refused, app ran %d at once; want at least 22 served, the rest 503, at most 2 at once",
			ok, refused, peak)
	}
	st.Eventually(t, 5*time.Second, func() bool { n, _ := in.Stats(); return n == 0 }, "requests still counted in flight")
}

func TestLoopClosesIdleConnectionsToRemovedHosts(t *testing.T) {
	// Restored after the sidecar stops: cleanups run last-registered first.
	t.Cleanup(httpproxy.SetHostSweep(50 * time.Millisecond))
	var open atomic.Int64
	track := func(be *httptest.Server) {
		be.Config.ConnState = func(_ net.Conn, cs http.ConnState) {
			switch cs {
			case http.StateNew:
				open.Add(1)
			case http.StateClosed, http.StateHijacked:
				open.Add(-1)
			}
		}
	}
	old := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "old") }))
	track(old)
	old.Start()
	t.Cleanup(old.Close)
	next := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "new") })
	cp := st.StartControlPlane(t)
	snap, cn := oneBackend([]string{old.URL}, nil)
	cp.Set(snap)
	sc := st.StartSidecar(t, cp, st.SidecarOptions{})
	base := sc.URL(t, st.OutboundListenerName)
	for range 4 {
		c := dialRaw(t, base)
		c.write("GET / HTTP/1.1\r\nHost: reviews\r\n\r\n")
		if resp, body := c.read("GET"); resp.StatusCode != 200 || body != "old" {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
	}
	if open.Load() == 0 {
		t.Fatal("no connection to the old host is pooled")
	}
	snap.Endpoints = []types.Resource{st.Endpoints(cn, st.Endpoint{Addr: st.HostPort(next.URL)})}
	cp.Set(snap)
	st.Eventually(t, 10*time.Second, func() bool {
		c := dialRaw(t, base)
		c.write("GET / HTTP/1.1\r\nHost: reviews\r\n\r\n")
		_, body := c.read("GET")
		return body == "new"
	}, "traffic never moved to the new host")
	st.Eventually(t, 10*time.Second, func() bool { return open.Load() == 0 },
		"connections to the removed host stay open")
}

// holdingApp holds each request to /hold until its context ends (or 30 s pass) and
// answers others "got " and their body.
type holdingApp struct {
	*httptest.Server
	started, cancelled chan struct{}
}

func newHoldingApp(t *testing.T) *holdingApp {
	a := &holdingApp{started: make(chan struct{}, 4), cancelled: make(chan struct{}, 4)}
	a.Server = st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.URL.Path != "/hold" {
			_, _ = io.WriteString(w, "got "+string(body))
			return
		}
		a.started <- struct{}{}
		select {
		case <-r.Context().Done():
			a.cancelled <- struct{}{}
		case <-time.After(30 * time.Second):
		}
	})
	return a
}

// hangUp sends raw to base on a new connection, closes it once the app holds the request,
// and fails the test unless the app's request is then cancelled.
func (a *holdingApp) hangUp(t *testing.T, base, raw, what string) {
	t.Helper()
	c := dialRaw(t, base)
	c.write(raw)
	select {
	case <-a.started:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: the request never reached the app", what)
	}
	c.conn.Close()
	select {
	case <-a.cancelled:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: the caller hung up but the app's request was not cancelled", what)
	}
}

func TestLoopCancelsTheUpstreamRequestWhenTheCallerHangsUp(t *testing.T) {
	app := newHoldingApp(t)
	snap, cn := oneBackend([]string{app.URL}, nil)
	cp := st.StartControlPlane(t)
	cp.Set(snap)
	sc := st.StartSidecar(t, cp, st.SidecarOptions{})
	base := sc.URL(t, st.OutboundListenerName)
	out := sc.Proxy.Listener(st.OutboundListenerName)

	app.hangUp(t, base, "GET /hold HTTP/1.1\r\nHost: reviews\r\n\r\n", "through the loop")
	st.Eventually(t, 5*time.Second, func() bool { n, _ := out.Stats(); return n == 0 }, "the request still counted in flight")

	// The connection the sidecar used is not pooled: the next call works on a new one.
	if code, body, _ := st.Get(t, client, base, "reviews", "/"); code != 200 || body != "got " {
		t.Fatalf("call after the hang-up: %d %q", code, body)
	}
	var stats strings.Builder
	sc.Proxy.WritePrometheus(&stats)
	for _, want := range []string{
		`weft_listener_caller_resets_total{listener="` + st.OutboundListenerName + `"} 1`,
		`weft_cluster_requests_total{cluster="` + cn + `",class="none"} 1`,
		`weft_cluster_requests_total{cluster="` + cn + `",class="2xx"} 1`,
		`weft_cluster_requests_total{cluster="` + cn + `",class="5xx"} 0`,
	} {
		if !strings.Contains(stats.String(), want+"\n") {
			t.Errorf("stats lack %q:\n%s", want, stats.String())
		}
	}
}
