package httpproxy_test

import (
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// oneBackend returns a snapshot routing host "reviews" to one cluster with the given
// backend, route options and cluster options.
func oneBackend(urls []string, ropts []st.RouteOption, copts ...st.ClusterOption) (st.Snapshot, string) {
	cn := st.OutboundClusterName(9080, "", "reviews", "default", "default", "reviews")
	var eps []st.Endpoint
	for _, u := range urls {
		eps = append(eps, st.Endpoint{Addr: st.HostPort(u)})
	}
	rt := st.Route("default/reviews/0/0", append([]st.RouteOption{st.Prefix("/"), st.To(cn)}, ropts...)...)
	return st.Snapshot{
		Listeners: []types.Resource{st.OutboundListener()},
		Routes:    []types.Resource{st.RouteConfig(st.VirtualHost("default/reviews", "reviews", "default", []int{9080}, rt))},
		Clusters:  []types.Resource{st.EDSCluster(cn, copts...)},
		Endpoints: []types.Resource{st.Endpoints(cn, eps...)},
	}, cn
}

// flaky fails the first `fails` attempts of every request id (header X-Id) with 503.
type flaky struct {
	fails int
	mu    sync.Mutex
	seen  map[string]int
	slow  time.Duration // the first attempt of each id sleeps this long instead of failing
}

func (f *flaky) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	n := f.seen[r.Header.Get("X-Id")]
	f.seen[r.Header.Get("X-Id")] = n + 1
	f.mu.Unlock()
	if f.slow > 0 && n == 0 {
		select {
		case <-time.After(f.slow):
		case <-r.Context().Done():
		}
		return
	}
	if n < f.fails {
		http.Error(w, "flaky", http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ok"))
}

func getWithID(t *testing.T, base, id string) (int, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+"/", nil)
	req.Host = "reviews"
	req.Header.Set("X-Id", id)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header
}

func TestRetriesTurnFlakyFailuresIntoSuccesses(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		f := &flaky{fails: 2, seen: map[string]int{}}
		be := st.Backend(t, "", f.ServeHTTP)
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{be.URL}, []st.RouteOption{st.Retries("5xx", 3, 0)})
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		for i := range 20 {
			id := string(rune('a' + i))
			if code, _ := getWithID(t, base, id); code != 200 {
				t.Fatalf("request %s: status %d, want 200 after retries", id, code)
			}
			f.mu.Lock()
			if f.seen[id] != 3 {
				t.Errorf("request %s reached the backend %d times, want 3 (2 failures + 1 success)", id, f.seen[id])
			}
			f.mu.Unlock()
		}
	})
}

func TestRetriesGiveUpAfterNumRetries(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		f := &flaky{fails: 5, seen: map[string]int{}}
		be := st.Backend(t, "", f.ServeHTTP)
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{be.URL}, []st.RouteOption{st.Retries("gateway-error", 2, 0)})
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		if code, _ := getWithID(t, base, "x"); code != 503 {
			t.Fatalf("status %d, want the upstream's 503 once retries are exhausted", code)
		}
		if f.seen["x"] != 3 {
			t.Errorf("backend saw %d attempts, want 1 + num_retries 2 = 3", f.seen["x"])
		}
	})
}

func TestPerTryTimeoutAbandonsSlowAttemptAndRetries(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		f := &flaky{seen: map[string]int{}, slow: 10 * time.Second}
		be := st.Backend(t, "", f.ServeHTTP)
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{be.URL}, []st.RouteOption{st.Retries("5xx", 2, 200*time.Millisecond), st.Timeout(8 * time.Second)})
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		if code, _ := getWithID(t, base, "slow"); code != 200 {
			t.Fatalf("status %d, want 200 from the second attempt after the first hit its per-try timeout", code)
		}
		if f.seen["slow"] != 2 {
			t.Errorf("backend saw %d attempts, want 2", f.seen["slow"])
		}
	})
}

func TestRouteTimeoutAnswers504(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		f := &flaky{seen: map[string]int{}, slow: 10 * time.Second}
		be := st.Backend(t, "", f.ServeHTTP)
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{be.URL}, []st.RouteOption{st.Timeout(200 * time.Millisecond)})
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		if code, _ := getWithID(t, base, "t"); code != http.StatusGatewayTimeout {
			t.Fatalf("status %d, want 504 when the route timeout passes", code)
		}
	})
}

func TestOutlierDetectionEjectsFailingEndpointAndRestoresIt(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var failing atomic.Bool
		failing.Store(true)
		var badHits atomic.Int64
		bad := st.Backend(t, "", func(w http.ResponseWriter, _ *http.Request) {
			badHits.Add(1)
			if failing.Load() {
				http.Error(w, "broken", 500)
				return
			}
			_, _ = w.Write([]byte("bad-recovered"))
		})
		good := st.Backend(t, "good", nil)
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{bad.URL, good.URL}, nil, func(c *clusterv3.Cluster) {
			c.OutlierDetection = &clusterv3.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(3),
				Interval: durationpb.New(50 * time.Millisecond), BaseEjectionTime: durationpb.New(time.Second),
				MaxEjectionPercent: wrapperspb.UInt32(50)}
		})
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		for range 20 {
			st.Get(t, client, base, "reviews", "/")
		}
		if n := badHits.Load(); n != 3 {
			t.Errorf("failing endpoint got %d requests, want exactly consecutive_5xx = 3 before ejection", n)
		}
		for range 20 {
			if code, body, _ := st.Get(t, client, base, "reviews", "/"); code != 200 || body != "good" {
				t.Fatalf("while ejected: %d %q, want every request on the good endpoint", code, body)
			}
		}
		failing.Store(false)
		st.Eventually(t, 20*time.Second, func() bool {
			_, body, _ := st.Get(t, client, base, "reviews", "/")
			return body == "bad-recovered"
		}, "the ejected endpoint never got traffic back after base_ejection_time")
	})
}

func TestCircuitBreakerOverflowsCleanly(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		release := make(chan struct{})
		var inside atomic.Int64
		be := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) {
			inside.Add(1)
			<-release
			_, _ = w.Write([]byte("ok"))
		})
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{be.URL}, nil, func(c *clusterv3.Cluster) {
			c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
				MaxRequests: wrapperspb.UInt32(2), MaxConnections: wrapperspb.UInt32(2), MaxPendingRequests: wrapperspb.UInt32(0)}}}
		})
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		var wg sync.WaitGroup
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if code, _, _ := st.Get(t, client, base, "reviews", "/"); code != 200 {
					t.Errorf("admitted request: status %d, want 200", code)
				}
			}()
		}
		st.Eventually(t, 10*time.Second, func() bool { return inside.Load() == 2 }, "two requests never reached the backend")
		code, body, hdr := st.Get(t, client, base, "reviews", "/")
		if code != 503 || hdr.Get("X-Weft-Overloaded") != "true" {
			t.Errorf("third concurrent request: %d %q overloaded=%q, want 503 with x-weft-overloaded: true", code, body, hdr.Get("X-Weft-Overloaded"))
		}
		close(release)
		wg.Wait()
		if code, _, _ := st.Get(t, client, base, "reviews", "/"); code != 200 {
			t.Errorf("after the burst: status %d, want 200", code)
		}
	})
}

// A retry admitted by the max_retries breaker gives its slot back even when it finds no
// host to go to (the only one was just ejected); otherwise the budget drains and later
// retries overflow.
func TestRetryBudgetReturnsWhenNoHostIsLeft(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := st.Backend(t, "", func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "down", http.StatusServiceUnavailable) })
		cp := st.StartControlPlane(t)
		snap, cn := oneBackend([]string{be.URL}, []st.RouteOption{st.Retries("5xx", 1, 0)}, func(c *clusterv3.Cluster) {
			c.OutlierDetection = &clusterv3.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(1),
				Interval: durationpb.New(20 * time.Millisecond), BaseEjectionTime: durationpb.New(100 * time.Millisecond),
				MaxEjectionPercent: wrapperspb.UInt32(100)}
			c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
				MaxRetries: wrapperspb.UInt32(1)}}}
		})
		cp.Set(snap)
		sc := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
		base := sc.URL(t, st.OutboundListenerName)
		for i := range 4 {
			if code, _, _ := st.Get(t, client, base, "reviews", "/"); code != 503 {
				t.Fatalf("call %d: %d, want 503", i, code)
			}
			// Each ejection lasts base_ejection_time × its count: wait it out.
			c := sc.Upstreams.Get(cn)
			st.Eventually(t, 10*time.Second, func() bool { return c.ReadyCount() == 1 && c.Hosts()[0].Available() },
				"the host never came back from ejection")
		}
		if n := sc.Upstreams.Get(cn).Stats.OverflowRetries.Load(); n != 0 {
			t.Fatalf("%d retries refused by max_retries = 1 with one call at a time: the budget leaked", n)
		}
	})
}
