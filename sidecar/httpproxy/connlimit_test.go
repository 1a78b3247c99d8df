package httpproxy_test

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// Issue 15 item 4: maxConnections did not cap upstream connections, and requests beyond it
// were not queued. These tests count at a real backend.

// connBackend is an HTTP backend that counts the connections it accepts and holds open,
// and the requests in flight, keeping the peaks; each request waits for release (or hold).
type connBackend struct {
	srv                  *httptest.Server
	accepted, open       atomic.Int64
	inflight, served     atomic.Int64
	peakOpen, peakFlight atomic.Int64
	release              chan struct{}
	hold                 time.Duration
}

func newConnBackend(t *testing.T, hold time.Duration) *connBackend {
	b := &connBackend{release: make(chan struct{}), hold: hold}
	peak := func(p *atomic.Int64, v int64) {
		for cur := p.Load(); v > cur && !p.CompareAndSwap(cur, v); cur = p.Load() {
		}
	}
	b.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peak(&b.peakFlight, b.inflight.Add(1))
		defer b.inflight.Add(-1)
		_, _ = io.Copy(io.Discard, r.Body)
		if b.hold > 0 {
			time.Sleep(b.hold)
		} else {
			<-b.release
		}
		b.served.Add(1)
		_, _ = io.WriteString(w, "ok")
	}))
	b.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			b.accepted.Add(1)
			peak(&b.peakOpen, b.open.Add(1))
		case http.StateClosed, http.StateHijacked:
			b.open.Add(-1)
		}
	}
	b.srv.Start()
	t.Cleanup(func() {
		select {
		case <-b.release:
		default:
			close(b.release)
		}
		b.srv.Close()
	})
	return b
}

// limits sets the cluster's circuit breakers; pending < 0 leaves max_pending_requests unset.
func limits(maxConns uint32, pending int) st.ClusterOption {
	return func(c *clusterv3.Cluster) {
		th := &clusterv3.CircuitBreakers_Thresholds{MaxConnections: wrapperspb.UInt32(maxConns)}
		if pending >= 0 {
			th.MaxPendingRequests = wrapperspb.UInt32(uint32(pending))
		}
		c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{th}}
	}
}

type answer struct {
	code int
	body string
	hdr  http.Header
}

// call sends one GET (or, chunked, a POST with a body of unknown length, which the event
// loop hands to the goroutine path) over its own connection.
func call(t *testing.T, base string, chunked bool) answer {
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var req *http.Request
	if chunked {
		req, _ = http.NewRequest(http.MethodPost, base+"/", io.NopCloser(strings.NewReader("payload")))
		req.ContentLength = -1
	} else {
		req, _ = http.NewRequest(http.MethodGet, base+"/", nil)
	}
	req.Host = "reviews"
	resp, err := c.Do(req)
	if err != nil {
		t.Errorf("call: %v", err)
		return answer{}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, string(b), resp.Header}
}

// With maxConnections 2 and the default max_pending_requests, 10 concurrent calls to a
// slow backend all succeed over 2 connections: one event loop (and the goroutine path)
// hands a freed connection to the next waiting request, so the backend accepts exactly 2
// connections and never has more than 2 requests in flight.
func TestMaxConnectionsCapsUpstreamConnections(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1)) // one event loop: see below for several
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := newConnBackend(t, 50*time.Millisecond)
		cp := st.StartControlPlane(t)
		snap, cn := oneBackend([]string{be.srv.URL}, nil, limits(2, -1))
		cp.Set(snap)
		sc := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
		base := sc.URL(t, st.OutboundListenerName)
		var wg sync.WaitGroup
		answers := make([]answer, 10)
		for i := range answers {
			wg.Add(1)
			go func() { defer wg.Done(); answers[i] = call(t, base, false) }()
		}
		wg.Wait()
		for i, a := range answers {
			if a.code != 200 {
				t.Errorf("call %d: %d %q, want 200 (10 fit in 2 connections + 1024 pending)", i, a.code, a.body)
			}
		}
		if n := be.accepted.Load(); n > 2 {
			t.Errorf("the backend accepted %d connections, want at most maxConnections 2", n)
		}
		if n := be.peakOpen.Load(); n > 2 {
			t.Errorf("the backend had %d connections open at once, want at most maxConnections 2", n)
		}
		if n := be.peakFlight.Load(); n > 2 {
			t.Errorf("%d requests in flight at the backend at once, want at most 2", n)
		}
		c := sc.Upstreams.Get(cn)
		if c.Stats.ConnOverflow.Load() == 0 {
			t.Error("no request waited for a connection: the test did not exercise the cap")
		}
		if open, _, pending := c.ConnStats(); open > 2 || pending != 0 {
			t.Errorf("after the burst: %d connections open, %d pending; want at most 2 and 0", open, pending)
		}
	})
}

// Several event loops, and both paths at once: half the calls are chunked (handed to the
// goroutine path), the cluster's cap is still 2 in all, and every call is answered.
func TestMaxConnectionsHoldsAcrossLoopsAndPaths(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	be := newConnBackend(t, 30*time.Millisecond)
	cp := st.StartControlPlane(t)
	snap, cn := oneBackend([]string{be.srv.URL}, nil, limits(2, -1))
	cp.Set(snap)
	sc := st.StartSidecar(t, cp, st.SidecarOptions{})
	base := sc.URL(t, st.OutboundListenerName)
	c := sc.Upstreams.Get(cn)
	stop := make(chan struct{})
	var peakGauge atomic.Int64
	go func() { // the sidecar's own count, sampled through the burst
		for {
			select {
			case <-stop:
				return
			default:
			}
			if open, _, _ := c.ConnStats(); int64(open) > peakGauge.Load() {
				peakGauge.Store(int64(open))
			}
			time.Sleep(200 * time.Microsecond)
		}
	}()
	var wg sync.WaitGroup
	answers := make([]answer, 24)
	for i := range answers {
		wg.Add(1)
		go func() { defer wg.Done(); answers[i] = call(t, base, i%2 == 1) }()
	}
	wg.Wait()
	close(stop)
	for i, a := range answers {
		if a.code != 200 {
			t.Errorf("call %d (chunked %v): %d %q, want 200", i, i%2 == 1, a.code, a.body)
		}
	}
	if n := be.peakFlight.Load(); n > 2 {
		t.Errorf("%d requests in flight at the backend at once, want at most 2", n)
	}
	if n := peakGauge.Load(); n > 2 {
		t.Errorf("the sidecar had %d connections open at once, want at most 2", n)
	}
}

// Connections idle in the event loops hold the cap; a request the loop hands to the goroutine
// path (chunked) that needs a connection makes a loop close an idle one for it, instead of
// waiting until its route timeout.
func TestIdleLoopConnectionsAreReclaimedForWaiters(t *testing.T) {
	be := newConnBackend(t, 20*time.Millisecond)
	cp := st.StartControlPlane(t)
	snap, cn := oneBackend([]string{be.srv.URL}, []st.RouteOption{st.Timeout(3 * time.Second)}, limits(2, -1))
	cp.Set(snap)
	sc := st.StartSidecar(t, cp, st.SidecarOptions{})
	base := sc.URL(t, st.OutboundListenerName)
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if a := call(t, base, false); a.code != 200 {
				t.Errorf("loop call: %d %q", a.code, a.body)
			}
		}()
	}
	wg.Wait()
	c := sc.Upstreams.Get(cn)
	if open, idle, _ := c.ConnStats(); open != 2 || idle != 2 {
		t.Fatalf("after two concurrent loop calls: %d open, %d idle; want 2 idle connections holding the cap", open, idle)
	}
	if a := call(t, base, true); a.code != 200 {
		t.Errorf("chunked call with the cap held by idle loop connections: %d %q, want 200", a.code, a.body)
	}
	if open, _, _ := c.ConnStats(); open > 2 {
		t.Errorf("%d connections open, want at most 2", open)
	}
}

// maxConnections 2 and maxPendingRequests 3: of 10 concurrent calls to a backend that
// holds them, 2 are in flight, 3 wait, and the other 5 get 503 at once with
// x-weft-overloaded, a body saying the pool is full, and the pending overflow counted in
// /stats. Released, the 5 admitted calls finish with 200.
func TestMaxPendingRequestsOverflowAnswers503(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := newConnBackend(t, 0)
		cp := st.StartControlPlane(t)
		snap, cn := oneBackend([]string{be.srv.URL}, nil, limits(2, 3))
		cp.Set(snap)
		sc := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
		base := sc.URL(t, st.OutboundListenerName)
		c := sc.Upstreams.Get(cn)
		results := make(chan answer, 10)
		for range 10 {
			go func() { results <- call(t, base, false) }()
		}
		var refused []answer
		for range 5 {
			select {
			case a := <-results:
				refused = append(refused, a)
			case <-time.After(10 * time.Second):
				t.Fatalf("only %d calls answered while 5 should be refused at once", len(refused))
			}
		}
		for _, a := range refused {
			if a.code != 503 || a.hdr.Get("X-Weft-Overloaded") != "true" || !strings.Contains(a.body, "connection pool is full") {
				t.Errorf("refused call: %d overloaded=%q %q; want 503, x-weft-overloaded: true, a body saying the pool is full",
					a.code, a.hdr.Get("X-Weft-Overloaded"), a.body)
			}
		}
		if open, _, pending := c.ConnStats(); open != 2 || pending != 3 {
			t.Errorf("with the burst held: %d open, %d pending; want 2 and 3", open, pending)
		}
		var stats strings.Builder
		sc.Upstreams.WritePrometheus(&stats)
		if want := `weft_cluster_overflow_total{cluster="` + cn + `",breaker="pending"} 5`; !strings.Contains(stats.String(), want) {
			t.Errorf("/stats lacks %s", want)
		}
		if want := `weft_cluster_pending_requests{cluster="` + cn + `"} 3`; !strings.Contains(stats.String(), want) {
			t.Errorf("/stats lacks %s", want)
		}
		close(be.release)
		for range 5 {
			if a := <-results; a.code != 200 {
				t.Errorf("admitted call: %d %q, want 200", a.code, a.body)
			}
		}
		// Several event loops may each own one of the 2 connections: a freed one then goes
		// to a waiter of another loop as a slot (closed and dialled again), so count what
		// was open at once, not what was accepted.
		if n := be.peakFlight.Load(); n > 2 {
			t.Errorf("%d requests in flight at the backend at once, want at most 2", n)
		}
	})
}

// A request waiting for a connection is bounded by the route timeout: 504 when it passes,
// its place in the queue given up, and the connection's holder unaffected.
func TestConnectionWaitEndsAtRouteTimeout(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := newConnBackend(t, 0)
		cp := st.StartControlPlane(t)
		snap, cn := oneBackend([]string{be.srv.URL}, []st.RouteOption{st.Timeout(300 * time.Millisecond)}, limits(1, -1))
		cp.Set(snap)
		sc := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
		base := sc.URL(t, st.OutboundListenerName)
		c := sc.Upstreams.Get(cn)
		first := make(chan answer, 1)
		go func() { first <- call(t, base, false) }()
		st.Eventually(t, 10*time.Second, func() bool { return be.inflight.Load() == 1 }, "the first call never reached the backend")
		if a := call(t, base, false); a.code != 504 {
			t.Errorf("call waiting for the only connection: %d %q, want 504 at the route timeout", a.code, a.body)
		}
		if _, _, pending := c.ConnStats(); pending != 0 {
			t.Errorf("%d requests still pending after the waiter timed out", pending)
		}
		if a := <-first; a.code != 504 {
			// The first call hit the same 300 ms route timeout while the backend held it.
			t.Errorf("first call: %d, want 504 (it too outlived the route timeout)", a.code)
		}
		close(be.release)
		if a := call(t, base, false); a.code != 200 {
			t.Errorf("after the release: %d %q, want 200 (the slot came back)", a.code, a.body)
		}
	})
}

// A slot is never leaked, however a connection ends: a refused connect, a response the
// event loop hands to a goroutine (chunked), a caller that hangs up while waiting. With
// maxConnections 1 a leak would make every later call wait out its route timeout.
func TestConnectionSlotsComeBack(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		// A port nobody listens on: every connect is refused.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead := "http://" + ln.Addr().String()
		ln.Close()
		cp := st.StartControlPlane(t)
		snap, cn := oneBackend([]string{dead}, []st.RouteOption{st.Timeout(time.Second)}, limits(1, -1))
		cp.Set(snap)
		sc := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
		base := sc.URL(t, st.OutboundListenerName)
		for i := range 4 {
			if a := call(t, base, false); a.code != 503 || !strings.Contains(a.body, "connection failure") {
				t.Errorf("call %d to a refused port: %d %q, want 503 connection failure (not a wait for a leaked slot)", i, a.code, a.body)
			}
		}
		if open, _, pending := sc.Upstreams.Get(cn).ConnStats(); open != 0 || pending != 0 {
			t.Errorf("after refused connects: %d open, %d pending; want 0 and 0", open, pending)
		}

		chunked := st.Backend(t, "", func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, "part one ")
			w.(http.Flusher).Flush() // no Content-Length: chunked, which the loop hands off
			_, _ = io.WriteString(w, "part two")
		})
		snap, cn = oneBackend([]string{chunked.URL}, []st.RouteOption{st.Timeout(time.Second)}, limits(1, -1))
		cp.Set(snap)
		st.Eventually(t, 10*time.Second, func() bool {
			c := sc.Upstreams.Get(cn)
			return c != nil && len(c.Hosts()) == 1 && c.Hosts()[0].Address == st.HostPort(chunked.URL)
		}, "the new endpoint never arrived")
		for i := range 4 {
			if a := call(t, base, false); a.code != 200 || a.body != "part one part two" {
				t.Errorf("chunked call %d: %d %q, want 200 with both parts", i, a.code, a.body)
			}
		}
		st.Eventually(t, 5*time.Second, func() bool {
			open, _, pending := sc.Upstreams.Get(cn).ConnStats()
			return open <= 1 && pending == 0
		}, "slots did not come back after chunked responses")
	})
}

// On the event loop a caller that hangs up while its request waits for a connection
// leaves the queue at once (the goroutine path notices at the request's deadline).
func TestCallerLeavingGivesUpItsPlaceInTheQueue(t *testing.T) {
	be := newConnBackend(t, 0)
	cp := st.StartControlPlane(t)
	snap, cn := oneBackend([]string{be.srv.URL}, nil, limits(1, -1))
	cp.Set(snap)
	sc := st.StartSidecar(t, cp, st.SidecarOptions{})
	base := sc.URL(t, st.OutboundListenerName)
	c := sc.Upstreams.Get(cn)
	first := make(chan answer, 1)
	go func() { first <- call(t, base, false) }()
	st.Eventually(t, 10*time.Second, func() bool { return be.inflight.Load() == 1 }, "the first call never reached the backend")
	conn, err := net.Dial("tcp", st.HostPort(base))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: reviews\r\n\r\n")
	st.Eventually(t, 10*time.Second, func() bool { _, _, p := c.ConnStats(); return p == 1 }, "the second call never queued")
	conn.Close()
	st.Eventually(t, 10*time.Second, func() bool { _, _, p := c.ConnStats(); return p == 0 }, "the departed caller kept its place in the queue")
	close(be.release)
	if a := <-first; a.code != 200 {
		t.Errorf("first call: %d", a.code)
	}
	if a := call(t, base, false); a.code != 200 {
		t.Errorf("a call after the departed waiter: %d %q, want 200", a.code, a.body)
	}
	if n := be.served.Load(); n != 2 {
		t.Errorf("the backend served %d requests, want 2: the departed caller's must never be sent", n)
	}
}
