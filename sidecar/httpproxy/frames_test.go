package httpproxy_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// Adversarial tests of the HTTP/2 frame relay (frames.go): real sockets on 127.0.0.1.
// With the event loop an h2c connection whose first request goes to an HTTP/2 cluster on a
// loop-safe route is relayed frame by frame; with a goroutine per connection net/http's
// HTTP/2 server serves it. Where the behaviour must be the same, bothPaths runs both.

const (
	relayedMetric = "weft_listener_frame_relay_connections_total"
	refusedMetric = "weft_listener_frame_relay_refused_total"
)

// relayHosts routes "reviews" to an HTTP/2 cluster (relay-able) at h2URL and, when h1URL
// is set, "ratings" to an HTTP/1 cluster (not relay-able) at h1URL. A nil listener is the
// default outbound listener.
func relayHosts(h2URL, h1URL string, l *listenerv3.Listener, ropts ...st.RouteOption) st.Snapshot {
	cn := st.OutboundClusterName(9080, "", "reviews", "default", "default", "reviews")
	rt := st.Route("default/reviews/0/0", append([]st.RouteOption{st.Prefix("/"), st.To(cn)}, ropts...)...)
	vhs := []*routev3.VirtualHost{st.VirtualHost("default/reviews", "reviews", "default", []int{9080}, rt)}
	clusters := []types.Resource{st.EDSCluster(cn, h2Upstream(0))}
	eps := []types.Resource{st.Endpoints(cn, st.Endpoint{Addr: st.HostPort(h2URL)})}
	if h1URL != "" {
		cn1 := st.OutboundClusterName(9080, "", "ratings", "default", "default", "ratings")
		rt1 := st.Route("default/ratings/0/0", st.Prefix("/"), st.To(cn1))
		vhs = append(vhs, st.VirtualHost("default/ratings", "ratings", "default", []int{9080}, rt1))
		clusters = append(clusters, st.EDSCluster(cn1))
		eps = append(eps, st.Endpoints(cn1, st.Endpoint{Addr: st.HostPort(h1URL)}))
	}
	if l == nil {
		l = st.OutboundListener()
	}
	return st.Snapshot{
		Listeners: []types.Resource{l},
		Routes:    []types.Resource{st.RouteConfig(vhs...)},
		Clusters:  clusters,
		Endpoints: eps,
	}
}

// echoHandler answers "<method> <path> body=<body>" and counts the requests it saw.
func echoHandler(n *atomic.Int64) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if n != nil {
			n.Add(1)
		}
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, "body: "+err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Proto", r.Proto)
		fmt.Fprintf(w, "%s %s body=%s", r.Method, r.URL.Path, b)
	}
}

// relaySidecar starts a control plane with snap and a sidecar on the given path, and
// returns the sidecar and its outbound listener's URL.
func relaySidecar(t *testing.T, goroutines bool, snap st.Snapshot) (*st.Sidecar, string) {
	t.Helper()
	cp := st.StartControlPlane(t)
	cp.Set(snap)
	sc := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
	return sc, sc.URL(t, st.OutboundListenerName)
}

// wantRelayed asserts how many connections the relay took: at least one with the event
// loop (exactly want when want > 0), none with goroutines.
func wantRelayed(t *testing.T, sc *st.Sidecar, goroutines bool, want int64) {
	t.Helper()
	n := statValue(t, sc, relayedMetric)
	switch {
	case goroutines && n != 0:
		t.Errorf("%s = %d with a goroutine per connection, want 0 (net/http serves h2c)", relayedMetric, n)
	case !goroutines && want > 0 && n != want:
		t.Errorf("%s = %d, want %d", relayedMetric, n, want)
	case !goroutines && want == 0 && n != 0:
		t.Errorf("%s = %d, want 0 (the connection should have been handed to net/http)", relayedMetric, n)
	}
}

// 1. Many sequential and 50 concurrent gRPC calls on one connection, and plain h2c POSTs
// with bodies, all answered correctly; the event loop relays the connection (the metric
// counts it), the goroutine path does not.
func TestFrameRelaySequentialAndFiftyConcurrentGRPCCallsOnOneConnection(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		hs := newHealthServer()
		addr := grpcBackend(t, hs)
		sc, base := relaySidecar(t, goroutines, relayHosts("http://"+addr, "", nil))
		hc := grpcClient(t, base, "reviews")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for i := range 30 {
			resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: fmt.Sprintf("seq-%d", i)})
			if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("sequential call %d: %v %v", i, resp, err)
			}
		}
		var wg sync.WaitGroup
		var failed atomic.Int64
		for i := range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				svc := fmt.Sprintf("conc-%d", i)
				if i%10 == 0 {
					svc = "internal"
				}
				resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
				if svc == "internal" {
					if s, _ := status.FromError(err); s.Code() != codes.Internal || s.Message() != "broken" {
						failed.Add(1)
						t.Errorf("concurrent call %d: %v, want INTERNAL broken", i, err)
					}
					return
				}
				if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
					failed.Add(1)
					t.Errorf("concurrent call %d: %v %v", i, resp, err)
				}
			}()
		}
		wg.Wait()
		for i := range 50 {
			if i%10 != 0 && hs.count(fmt.Sprintf("conc-%d", i)) != 1 {
				t.Errorf("the upstream saw conc-%d %d times, want once", i, hs.count(fmt.Sprintf("conc-%d", i)))
			}
		}
		if hs.count("internal") != 5 {
			t.Errorf("the upstream saw %d INTERNAL calls, want 5 (not retried)", hs.count("internal"))
		}
		// grpc-go uses one connection for all of them.
		wantRelayed(t, sc, goroutines, 1)
	})
}

// 1b. Plain h2c POSTs with bodies of several sizes (up to 1 MiB, past the relay's 256 KiB
// stream window, so flow control must move) come back intact, 20 at once.
func TestFrameRelayConcurrentPostBodiesUnderTheWindowsComeBackIntact(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(w, r.Body)
		})
		sc, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))
		cl := rawH2()
		// one first request so the rest share the connection
		req, _ := http.NewRequest(http.MethodGet, base+"/warm", nil)
		req.Host = "reviews"
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				size := []int{0, 1, 16385, 300 << 10, 1 << 20}[i%5]
				body := bytes.Repeat([]byte{byte('a' + i%26)}, size)
				req, _ := http.NewRequest(http.MethodPost, base+"/echo", bytes.NewReader(body))
				req.Host = "reviews"
				resp, err := cl.Do(req)
				if err != nil {
					t.Errorf("POST %d (%d bytes): %v", i, size, err)
					return
				}
				defer resp.Body.Close()
				got, err := io.ReadAll(resp.Body)
				if err != nil || resp.StatusCode != 200 || !bytes.Equal(got, body) {
					t.Errorf("POST %d (%d bytes): %d, %d bytes back (%v), want 200 and the body echoed", i, size, resp.StatusCode, len(got), err)
				}
			}()
		}
		wg.Wait()
		wantRelayed(t, sc, goroutines, 1)
	})
}

// 2. The first request's route is not relay-able (its cluster speaks HTTP/1): the relay
// hands the connection to net/http with what it read replayed, whether the caller ACKed
// the relay's SETTINGS before its first request or after it; every later request on the
// connection, relay-able or not, is served there too.
func TestFrameRelayFallsBackToNetHTTPWhenTheFirstRequestIsNotRelayable(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var h2n, h1n atomic.Int64
		h2be := h2cBackend(t, echoHandler(&h2n))
		h1be := st.Backend(t, "", echoHandler(&h1n))
		sc, base := relaySidecar(t, goroutines, relayHosts(h2be.URL, h1be.URL, nil))
		for _, ackFirst := range []bool{false, true} {
			t.Run(fmt.Sprintf("ackFirst=%v", ackFirst), func(t *testing.T) {
				c := dialFC(t, base, ackFirst)
				// the first request carries a body over two DATA frames
				id := c.open(reqFields("POST", "/first", "ratings", [2]string{"content-length", "11"}), false)
				_ = c.data(id, []byte("hello "), false)
				_ = c.data(id, []byte("world"), true)
				r, ok := c.wait(id, 10*time.Second)
				if !ok || r.rst != nil || r.status != "200" || r.body != "POST /first body=hello world" {
					t.Fatalf("first (HTTP/1 cluster) request: ended=%v %v (connection: %v)", ok, r, c.err())
				}
				c.get("reviews", "/second", "GET /second body=")
				c.get("ratings", "/third", "GET /third body=")
				if g := c.goAway(200 * time.Millisecond); g != nil {
					t.Errorf("net/http's connection sent GOAWAY %v", g.ErrCode)
				}
			})
		}
		wantRelayed(t, sc, goroutines, 0)
		if n := statValue(t, sc, refusedMetric); n != 0 {
			t.Errorf("%s = %d, want 0: nothing was refused", refusedMetric, n)
		}
		if h1n.Load() != 4 || h2n.Load() != 2 {
			t.Errorf("the HTTP/1 backend saw %d requests (want 4), the HTTP/2 one %d (want 2)", h1n.Load(), h2n.Load())
		}
	})
}

// 2b. A relayed connection whose later request targets a route the relay does not serve
// refuses it with REFUSED_STREAM under GOAWAY (counted), unprocessed; the streams already
// open finish. Go's HTTP/2 client retries it on a new connection, which net/http serves.
func TestFrameRelayRefusesALaterNonRelayableRequestAndTheClientRetriesIt(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var h2n, h1n atomic.Int64
		release := make(chan struct{})
		h2be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				<-release
			}
			echoHandler(&h2n)(w, r)
		})
		h1be := st.Backend(t, "", echoHandler(&h1n))
		sc, base := relaySidecar(t, goroutines, relayHosts(h2be.URL, h1be.URL, nil))

		c := dialFC(t, base, false)
		c.get("reviews", "/one", "GET /one body=")
		slow := c.open(reqFields("GET", "/slow", "reviews"), true)
		time.Sleep(100 * time.Millisecond) // /slow reaches the upstream handler
		id := c.open(reqFields("GET", "/other", "ratings"), true)
		r, ok := c.wait(id, 10*time.Second)
		if !ok {
			t.Fatalf("the request to the HTTP/1 cluster did not end within 10 s: %v", r)
		}
		if goroutines {
			if r.rst != nil || r.status != "200" {
				t.Fatalf("net/http's connection: %v, want 200", r)
			}
		} else {
			if !isCode(r, http2.ErrCodeRefusedStream) {
				t.Fatalf("the relay answered a non-relay-able request with %v, want RST_STREAM(REFUSED_STREAM)", r)
			}
			g := c.goAway(5 * time.Second)
			if g == nil || g.ErrCode != http2.ErrCodeNo || g.LastStreamID < slow || g.LastStreamID >= id {
				t.Errorf("GOAWAY after the refusal: %+v, want NO_ERROR with last stream %d (the open one kept)", g, slow)
			}
			if n := statValue(t, sc, refusedMetric); n != 1 {
				t.Errorf("%s = %d, want 1", refusedMetric, n)
			}
			if h1n.Load() != 0 {
				t.Errorf("the refused request reached the HTTP/1 backend (%d)", h1n.Load())
			}
		}
		close(release)
		r, ok = c.wait(slow, 10*time.Second)
		if !ok || r.rst != nil || r.status != "200" || r.body != "GET /slow body=" {
			t.Fatalf("the stream open when the relay refused another: %v ended=%v, want 200", r, ok)
		}
		if !goroutines && !c.closedWithin(5*time.Second) {
			t.Error("the relay's connection stayed open after GOAWAY and its last stream")
		}

		// Go's client: the refused request is retried on a new connection.
		cl := rawH2()
		for i, host := range []string{"reviews", "ratings", "reviews", "ratings"} {
			req, _ := http.NewRequest(http.MethodPost, base+"/go", strings.NewReader("x"))
			req.Host = host
			req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("x")), nil }
			resp, err := cl.Do(req)
			if err != nil {
				t.Fatalf("Go client call %d to %s: %v", i, host, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "POST /go body=x" {
				t.Fatalf("Go client call %d to %s: %d %q", i, host, resp.StatusCode, b)
			}
		}
		if !goroutines {
			if n := statValue(t, sc, refusedMetric); n < 2 {
				t.Errorf("%s = %d, want at least 2 (one from the raw caller, one from Go's client)", refusedMetric, n)
			}
		}
		// each request to ratings once: the raw caller's (unless refused) and Go's two
		if want := map[bool]int64{false: 2, true: 3}[goroutines]; h1n.Load() != want {
			t.Errorf("the HTTP/1 backend saw %d requests, want %d (each once)", h1n.Load(), want)
		}
	})
}

// The first request on a connection is a 1 MiB upload to a route the relay hands to
// net/http: what follows its HEADERS is read by net/http, under net/http's windows, and
// comes through whole, as do concurrent requests on the same connection.
func TestFrameRelayFallbackWithALargeFirstUpload(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		h2be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(w, r.Body) })
		h1be := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(w, r.Body) })
		sc, base := relaySidecar(t, goroutines, relayHosts(h2be.URL, h1be.URL, nil))
		cl := rawH2()
		var wg sync.WaitGroup
		firstSent := make(chan struct{})
		for i := range 6 {
			if i == 1 {
				<-firstSent // the first request's HEADERS are out: its body is being read
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				host := []string{"ratings", "reviews"}[i%2]
				body := bytes.Repeat([]byte{byte('A' + i)}, 1<<20)
				var r io.Reader = bytes.NewReader(body)
				if i == 0 {
					r = io.MultiReader(&signalReader{ch: firstSent}, r)
				}
				req, _ := http.NewRequest(http.MethodPost, base+"/up", r)
				req.ContentLength = int64(len(body))
				req.Host = host
				resp, err := cl.Do(req)
				if err != nil {
					t.Errorf("upload %d to %s: %v", i, host, err)
					return
				}
				got, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || err != nil || !bytes.Equal(got, body) {
					t.Errorf("upload %d to %s: %d, %d bytes back (%v)", i, host, resp.StatusCode, len(got), err)
				}
			}()
		}
		wg.Wait()
		wantRelayed(t, sc, goroutines, 0)
	})
}

// A refused POST whose body was already on its way (HEADERS, then DATA before the caller
// can have seen the RST_STREAM): the DATA of a refused stream is not a connection error
// (RFC 9113 §5.1: a stream the server reset is closed, its frames are answered with
// STREAM_CLOSED or ignored), so the streams in flight on the connection go on. Refused
// because the route is not relay-able, and because 100 streams are open.
func TestFrameRelayRefusedPostWithBodyInFlightDoesNotKillTheConnection(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		// the /block handlers wait on the current case's channel
		var relMu sync.Mutex
		var release chan struct{}
		var once *sync.Once
		current := func() chan struct{} { relMu.Lock(); defer relMu.Unlock(); return release }
		free := func() {
			relMu.Lock()
			ch, o := release, once
			relMu.Unlock()
			if o != nil {
				o.Do(func() { close(ch) })
			}
		}
		defer free()
		h2be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/block" {
				<-current()
			}
			_, _ = io.Copy(io.Discard, r.Body)
			_, _ = io.WriteString(w, "ok")
		})
		h1be := st.Backend(t, "", echoHandler(nil))
		_, base := relaySidecar(t, goroutines, relayHosts(h2be.URL, h1be.URL, nil))
		var bugs []string
		for _, tc := range []struct {
			name    string
			blocked int
			host    string
		}{
			{"a POST to a route the relay does not serve", 1, "ratings"},
			{"a POST past the 100 streams allowed", 100, "reviews"},
		} {
			// (with goroutines net/http serves the POST to "ratings": nothing is refused)
			free() // the previous case's handlers, if any are left
			relMu.Lock()
			release, once = make(chan struct{}), &sync.Once{}
			relMu.Unlock()
			c := dialFC(t, base, true)
			c.get("reviews", "/ok", "ok")
			max := int(c.settings[http2.SettingMaxConcurrentStreams])
			blocked := tc.blocked
			if blocked > 1 {
				blocked = max
			}
			var ids []uint32
			for range blocked {
				ids = append(ids, c.open(reqFields("GET", "/block", "reviews"), true))
			}
			time.Sleep(200 * time.Millisecond)
			id := c.open(reqFields("POST", "/post", tc.host, [2]string{"content-length", "32768"}), false)
			_ = c.data(id, bytes.Repeat([]byte("p"), 16384), false)
			_ = c.data(id, bytes.Repeat([]byte("q"), 16384), true)
			r, ok := c.wait(id, 5*time.Second)
			r.body = fmt.Sprintf("<%d bytes>", len(r.body))
			t.Logf("%s: %v ended=%v", tc.name, r, ok)
			c.goAway(300 * time.Millisecond)
			time.Sleep(100 * time.Millisecond)
			c.mu.Lock()
			var g *http2.GoAwayFrame
			if len(c.goaways) > 0 {
				g = &c.goaways[len(c.goaways)-1] // the last one says why the connection ended
			}
			c.mu.Unlock()
			free()
			var lost []string
			for _, bid := range ids {
				if r, ok := c.wait(bid, 10*time.Second); !ok || r.rst != nil || r.status != "200" {
					lost = append(lost, fmt.Sprintf("stream %d: %v ended=%v", bid, r, ok))
				}
			}
			if len(lost) > 0 {
				msg := fmt.Sprintf("%s (HEADERS, then 32 KiB of DATA) on a connection with %d streams in flight: "+
					"the POST got %v, GOAWAY %v, and %d stream(s) in flight were lost (first: %s)",
					tc.name, len(ids), r, goAwayString(g), len(lost), lost[0])
				if !goroutines && g != nil && g.ErrCode == http2.ErrCodeProtocol {
					bugs = append(bugs, msg)
					continue
				}
				t.Error(msg)
			}
		}
		if len(bugs) > 0 {
			t.Errorf("regression (fixed in session 12): %s. The relay does not record a stream it refuses (REFUSED_STREAM) as used (fconn.lastID "+
				"is not raised), so the DATA the caller had already sent on it counts as DATA on an idle stream, "+
				"a connection error: GOAWAY(PROTOCOL_ERROR) ends every stream in flight. It should answer that DATA "+
				"with RST_STREAM(STREAM_CLOSED) or drop it (returning its connection window)", strings.Join(bugs, "; and "))
		}
	})
}

func goAwayString(g *http2.GoAwayFrame) string {
	if g == nil {
		return "none"
	}
	return fmt.Sprintf("(last stream %d, %v)", g.LastStreamID, g.ErrCode)
}

// The same through Go's HTTP/2 client: on one connection, a call in flight to a relay-able
// route and a POST with a body to a route the relay does not serve. The POST is refused
// and retried on a new connection; the call in flight must still be answered.
func TestFrameRelayGoClientPostToANonRelayableHostDoesNotFailCallsInFlight(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		release := make(chan struct{})
		entered := make(chan struct{}, 1)
		h2be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/block" {
				entered <- struct{}{}
				<-release
			}
			_, _ = io.WriteString(w, "ok")
		})
		h1be := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%d", len(b))
		})
		_, base := relaySidecar(t, goroutines, relayHosts(h2be.URL, h1be.URL, nil))
		cl := rawH2()
		blocked := make(chan string, 1)
		go func() {
			req, _ := http.NewRequest(http.MethodGet, base+"/block", nil)
			req.Host = "reviews"
			resp, err := cl.Do(req)
			if err != nil {
				blocked <- err.Error()
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			blocked <- fmt.Sprintf("%d %s %v", resp.StatusCode, b, err)
		}()
		select {
		case <-entered:
		case <-time.After(5 * time.Second):
			t.Fatal("the first call did not reach the upstream")
		}
		body := bytes.Repeat([]byte("b"), 64<<10)
		req, _ := http.NewRequest(http.MethodPost, base+"/post", bytes.NewReader(body))
		req.Host = "ratings"
		resp, err := cl.Do(req)
		post := ""
		if err != nil {
			post = err.Error()
		} else {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			post = fmt.Sprintf("%d %s", resp.StatusCode, b)
		}
		time.Sleep(100 * time.Millisecond)
		close(release)
		var got string
		select {
		case got = <-blocked:
		case <-time.After(10 * time.Second):
			got = "no answer within 10 s"
		}
		if post != "200 65536" {
			t.Errorf("the POST to the HTTP/1 route: %s, want 200 65536", post)
		}
		if got != "200 ok <nil>" {
			if !goroutines {
				t.Errorf("regression (fixed in session 12) (see TestFrameRelayRefusedPostWithBodyInFlightDoesNotKillTheConnection; timing-dependent, seen in "+
					"7 of 8 runs): with Go's HTTP/2 client, a POST with a body to a route the relay does not serve, sent while a call is in flight on the "+
					"same relayed connection, made the relay end the connection with GOAWAY(PROTOCOL_ERROR): the call in "+
					"flight failed (%q) instead of being answered 200 ok; the POST itself got %q", got, post)
			}
			t.Errorf("the call in flight: %q, want 200 ok", got)
		}
	})
}
