package httpproxy_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpupv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"golang.org/x/net/http2"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/weftmesh/weft/contract"
	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// maxConnections on HTTP/2 clusters. The frame relay keeps one upstream connection per
// caller connection and endpoint, so before it counted them against the cluster's cap a
// callee behind maxConnections: 2 saw one connection per caller connection. Now every
// HTTP/2 connection holds a slot; a caller connection that would need one past the cap is
// left to the goroutine path's pool, which opens a host's first connection even then (as
// Envoy does) and otherwise waits for a stream. So the backend sees at most the cap plus
// one per endpoint with the relay, and one fewer on the goroutine path alone.

// h2PeakBackends are HTTP/2 endpoints that answer their name after hold, counting the
// connections open at all of them together and the peak.
type h2PeakBackends struct {
	urls       []string
	open, peak atomic.Int64
}

func newH2PeakBackends(t *testing.T, hold time.Duration, names ...string) *h2PeakBackends {
	b := &h2PeakBackends{}
	for _, name := range names {
		srv := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			n, _ := io.Copy(io.Discard, r.Body)
			time.Sleep(hold)
			if n != r.ContentLength {
				http.Error(w, fmt.Sprintf("got %d bytes of %d", n, r.ContentLength), http.StatusBadRequest)
				return
			}
			_, _ = io.WriteString(w, name)
		}, func(s *http.Server) {
			s.ConnState = func(_ net.Conn, cs http.ConnState) {
				switch cs {
				case http.StateNew:
					n := b.open.Add(1)
					for p := b.peak.Load(); n > p && !b.peak.CompareAndSwap(p, n); p = b.peak.Load() {
					}
				case http.StateClosed, http.StateHijacked:
					b.open.Add(-1)
				}
			}
		})
		b.urls = append(b.urls, srv.URL)
	}
	return b
}

// h2cCaller is a Go HTTP/2 client with its own connection (it re-sends a refused request
// on a new one, as grpc-go does).
func h2cCaller() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p}, Timeout: 20 * time.Second}
}

func TestHTTP2MaxConnectionsCapsUpstreamConnectionsAcrossCallerConnections(t *testing.T) {
	const (
		maxConns = 2
		callers  = 8
		calls    = 3
	)
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := newH2PeakBackends(t, 150*time.Millisecond, "a", "b")
		cn := st.OutboundClusterName(9080, "", "reviews", "default", "default", "reviews")
		snap := relayHosts(be.urls[0], "", nil)
		cl := st.EDSCluster(cn, h2Upstream(1), limits(maxConns, -1)) // one stream per connection: load wants many
		po := &httpupv3.HttpProtocolOptions{}
		if err := cl.TypedExtensionProtocolOptions[contract.HTTPProtocolOptionsKey].UnmarshalTo(po); err != nil {
			t.Fatal(err)
		}
		po.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(300 * time.Millisecond)}
		cl.TypedExtensionProtocolOptions[contract.HTTPProtocolOptionsKey], _ = anypb.New(po)
		snap.Clusters = []types.Resource{cl}
		snap.Endpoints = []types.Resource{st.Endpoints(cn, st.Endpoint{Addr: st.HostPort(be.urls[0])}, st.Endpoint{Addr: st.HostPort(be.urls[1])})}
		sc, base := relaySidecar(t, goroutines, snap)

		body := strings.Repeat("x", 64<<10) // a refused POST is sent again whole
		post := func(c *http.Client) error {
			req, _ := http.NewRequest("POST", base+"/", strings.NewReader(body))
			req.Host = "reviews"
			resp, err := c.Do(req)
			if err != nil {
				return err
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || (string(body) != "a" && string(body) != "b") {
				return fmt.Errorf("status %d body %q", resp.StatusCode, body)
			}
			return nil
		}
		clients := make([]*http.Client, callers)
		var wg sync.WaitGroup
		errs := make(chan error, callers*calls)
		for i := range clients {
			clients[i] = h2cCaller()
			wg.Go(func() {
				for range calls {
					if err := post(clients[i]); err != nil {
						errs <- err
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("a call failed: %v", err)
		}
		c := sc.Upstreams.Get(cn)
		// The goroutine path's one pool opens a connection past the cap only as a host's
		// first (Envoy's rule): when the calls to "a" that came first took both slots while
		// a's first connection was being dialed, b's first makes 3. So the cap plus one per
		// endpoint but the one holding the cap: 3. (CI saw 3 once under -race, likely so; the
		// alternating picks of round robin usually give each host one connection: 2.)
		want := int64(maxConns + 1)
		if !goroutines {
			want = maxConns + 2 // the relay's connections, then the goroutine path's first one to each endpoint
		}
		t.Logf("%d callers × %d POSTs of 64 KiB: peak %d upstream connections (maxConnections %d), %d connection overflows, %d caller connections relayed",
			callers, calls, be.peak.Load(), maxConns, c.Stats.ConnOverflow.Load(), statValue(t, sc, relayedMetric))
		if p := be.peak.Load(); p > want {
			t.Errorf("the endpoints had %d connections open at once; maxConnections is %d, so at most %d", p, maxConns, want)
		}
		if c.Stats.ConnOverflow.Load() == 0 {
			t.Errorf("weft_cluster_overflow_total{breaker=\"connections\"} is 0; %d callers met a cap of %d connections", callers, maxConns)
		}
		if !goroutines && statValue(t, sc, relayedMetric) == 0 {
			t.Errorf("the relay took no caller connection")
		}

		// The slots come back: with the callers gone and the idle timeout passed, no
		// connection is open or counted, and a new caller is relayed again.
		for _, cl := range clients {
			cl.CloseIdleConnections()
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			open, _, _ := c.ConnStats()
			if open == 0 && be.open.Load() == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("10 s after the callers left, the cluster counts %d open connections and the endpoints have %d", open, be.open.Load())
			}
			time.Sleep(20 * time.Millisecond)
		}
		relayed := statValue(t, sc, relayedMetric)
		if err := post(h2cCaller()); err != nil {
			t.Fatalf("a call after the slots came back: %v", err)
		}
		if !goroutines && statValue(t, sc, relayedMetric) != relayed+1 {
			t.Errorf("a new caller connection with every slot free was not relayed")
		}
		if open, _, _ := c.ConnStats(); open != 1 {
			t.Errorf("one connection open after one call, the cluster counts %d", open)
		}
	})
}

// twoEndpoints is an HTTP/2 cluster "reviews" of endpoints answering their names (a, b)
// under maxConnections: 1, plus route options; the handler sees the endpoint's name.
func twoEndpoints(t *testing.T, handler func(name string, w http.ResponseWriter, r *http.Request), ropts ...st.RouteOption) (st.Snapshot, string, *atomic.Int64) {
	var reqs atomic.Int64
	var urls []string
	for _, name := range []string{"a", "b"} {
		srv := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			reqs.Add(1)
			handler(name, w, r)
		})
		urls = append(urls, srv.URL)
	}
	cn := st.OutboundClusterName(9080, "", "reviews", "default", "default", "reviews")
	snap := relayHosts(urls[0], "", nil, ropts...)
	snap.Clusters = []types.Resource{st.EDSCluster(cn, h2Upstream(0), limits(1, -1))}
	snap.Endpoints = []types.Resource{st.Endpoints(cn, st.Endpoint{Addr: st.HostPort(urls[0])}, st.Endpoint{Addr: st.HostPort(urls[1])})}
	return snap, cn, &reqs
}

func answerName(name string, w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, name) }

// A caller connection holding the cluster's only slot (a connection to one endpoint) asks
// for the other endpoint. The relay, which may not open a second connection, refuses the
// request unprocessed (RST_STREAM REFUSED_STREAM under GOAWAY NO_ERROR) and leaves the
// caller's next connection to the goroutine path; net/http's pool opens the endpoint's
// first connection past the cap, as Envoy does, and serves it on the same connection.
func TestHTTP2RequestNeedingAConnectionPastMaxConnections(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		snap, cn, _ := twoEndpoints(t, answerName)
		sc, base := relaySidecar(t, goroutines, snap)
		c := dialFC(t, base, true)
		id := c.open(reqFields("GET", "/", "reviews"), true)
		first, ok := c.wait(id, 10*time.Second)
		if !ok || first.status != "200" {
			t.Fatalf("first call: %v", first)
		}
		other := map[string]string{"a": "b", "b": "a"}[first.body]
		id = c.open(reqFields("GET", "/", "reviews"), true) // round robin: the other endpoint
		r, ok := c.wait(id, 10*time.Second)
		if !ok {
			t.Fatalf("second call: no end within 10 s: %v", r)
		}
		if goroutines {
			if r.status != "200" || r.body != other {
				t.Fatalf("second call: %v, want 200 %q", r, other)
			}
			if n := sc.Upstreams.Get(cn).Stats.ConnOverflow.Load(); n != 1 {
				t.Errorf("connection overflows %d, want 1 (the second endpoint's first connection, past the cap)", n)
			}
			return
		}
		if !isCode(r, http2.ErrCodeRefusedStream) {
			t.Fatalf("second call: %v, want RST_STREAM REFUSED_STREAM (no connection may be opened to %s)", r, other)
		}
		if g := c.goAway(5 * time.Second); g == nil || g.ErrCode != http2.ErrCodeNo || g.LastStreamID < id {
			t.Fatalf("GOAWAY after the refusal: %s, want NO_ERROR naming stream %d", goAwayString(g), id)
		}
		if n := statValue(t, sc, refusedMetric); n != 1 {
			t.Errorf("%s = %d, want 1", refusedMetric, n)
		}
		// The caller's client sends it again on a new connection: net/http's path serves it
		// (the relay has no slot for that connection), and the round robin goes on.
		c2 := dialFC(t, base, true)
		c2.get("reviews", "/", first.body)
		c2.get("reviews", "/", other)
		wantRelayed(t, sc, goroutines, 1)
	})
}

// A retry that needs a connection past the cap: on the relay it is answered by the pool as
// the event loop's HTTP/1.1 pool does (503, x-weft-overloaded, a body naming the cap), since
// an attempt was already processed and the request cannot be refused unprocessed; on the
// goroutine path the other endpoint's first connection is opened and the retry goes out.
func TestHTTP2RetryNeedingAConnectionPastMaxConnections(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		snap, _, reqs := twoEndpoints(t, func(_ string, w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusServiceUnavailable)
		}, st.Retries("5xx", 1, 0))
		sc, base := relaySidecar(t, goroutines, snap)
		c := dialFC(t, base, true)
		id := c.open(reqFields("GET", "/", "reviews"), true)
		r, ok := c.wait(id, 10*time.Second)
		if !ok || r.status != "503" {
			t.Fatalf("call: %v, want 503", r)
		}
		overloaded := ""
		for _, f := range r.fields {
			if f.Name == "x-weft-overloaded" {
				overloaded = f.Value
			}
		}
		if goroutines {
			if reqs.Load() != 2 || overloaded != "" {
				t.Errorf("the endpoints saw %d attempts (want 2: the retry went to the other one) and x-weft-overloaded is %q", reqs.Load(), overloaded)
			}
			return
		}
		if reqs.Load() != 1 || overloaded != "true" || !strings.Contains(r.body, "maxConnections") {
			t.Errorf("the endpoints saw %d attempts, want 1; x-weft-overloaded %q, body %q: want the pool's 503 for the retry", reqs.Load(), overloaded, r.body)
		}
		wantRelayed(t, sc, goroutines, 1)
	})
}
