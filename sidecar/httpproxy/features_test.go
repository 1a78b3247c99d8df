package httpproxy_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/weftmesh/weft/sidecar/httpproxy"
	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

func withFault(f *faultv3.HTTPFault) st.RouteOption {
	return st.Edit(func(r *routev3.Route) {
		a, _ := anypb.New(f)
		r.TypedPerFilterConfig = map[string]*anypb.Any{"envoy.filters.http.fault": a}
	})
}

func percent(n uint32) *typev3.FractionalPercent {
	return &typev3.FractionalPercent{Numerator: n, Denominator: typev3.FractionalPercent_HUNDRED}
}

// parallel runs n requests over 16 workers and returns each one's result.
func parallel(t *testing.T, n int, do func(i int)) {
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				do(i)
			}
		}()
	}
	wg.Wait()
}

func TestFaultAbortPercentageHolds(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var reached atomic.Int64
		be := st.Backend(t, "", func(w http.ResponseWriter, _ *http.Request) { reached.Add(1) })
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{be.URL}, []st.RouteOption{withFault(&faultv3.HTTPFault{
			Abort: &faultv3.FaultAbort{ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: 418}, Percentage: percent(30)}})})
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		var aborted atomic.Int64
		parallel(t, 1000, func(int) {
			if code, _, _ := st.Get(t, client, base, "reviews", "/"); code == 418 {
				aborted.Add(1)
			}
		})
		if a := aborted.Load(); a < 250 || a > 350 {
			t.Errorf("30%% abort over 1000 requests aborted %d, want 250..350", a)
		}
		if reached.Load()+aborted.Load() != 1000 {
			t.Errorf("backend saw %d requests and %d were aborted; aborted requests must never reach upstream", reached.Load(), aborted.Load())
		}
	})
}

func TestFaultDelayPercentageHolds(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := st.Backend(t, "ok", nil)
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{be.URL}, []st.RouteOption{withFault(&faultv3.HTTPFault{
			Delay: &faultcommonv3.FaultDelay{FaultDelaySecifier: &faultcommonv3.FaultDelay_FixedDelay{FixedDelay: durationpb.New(300 * time.Millisecond)},
				Percentage: percent(50)}})})
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		var delayed atomic.Int64
		parallel(t, 400, func(int) {
			start := time.Now()
			st.Get(t, client, base, "reviews", "/")
			if time.Since(start) >= 300*time.Millisecond {
				delayed.Add(1)
			}
		})
		// 50% of 400 = 200; ±10 points leaves room for an undelayed request slowed past 300 ms
		// on a loaded machine.
		if d := delayed.Load(); d < 160 || d > 240 {
			t.Errorf("50%% delay over 400 requests delayed %d, want 160..240", d)
		}
	})
}

func TestMirroredRequestsReachTheShadow(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		hosts := make(chan string, 100)
		shadow := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) { hosts <- r.Host; http.Error(w, "shadow fails", 500) })
		main := st.Backend(t, "main", nil)
		shadowCluster := st.OutboundClusterName(9080, "", "reviews-shadow", "default", "default", "reviews")
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{main.URL}, []st.RouteOption{st.Edit(func(r *routev3.Route) {
			r.GetRoute().RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: shadowCluster,
				RuntimeFraction: &corev3.RuntimeFractionalPercent{DefaultValue: percent(100)}}}
		})})
		snap.Clusters = append(snap.Clusters, st.EDSCluster(shadowCluster))
		snap.Endpoints = append(snap.Endpoints, st.Endpoints(shadowCluster, st.Endpoint{Addr: st.HostPort(shadow.URL)}))
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		for range 10 {
			if code, body, _ := st.Get(t, client, base, "reviews:9080", "/"); code != 200 || body != "main" {
				t.Fatalf("mirrored route answered %d %q, want the primary's 200 main (shadow failures never reach the caller)", code, body)
			}
		}
		for i := range 10 {
			select {
			case h := <-hosts:
				if h != "reviews-shadow:9080" {
					t.Errorf("shadow saw Host %q, want reviews-shadow:9080", h)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("shadow received %d of 10 mirrored requests", i)
			}
		}
	})
}

func TestKilledControlPlaneLeavesTrafficFlowingAndSidecarReconnects(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		cp := st.StartControlPlane(t)
		snap, ca, cb := twoBackends(t)
		snap.Routes = []types.Resource{st.RouteConfig(st.VirtualHost("default/reviews", "reviews", "default", nil,
			st.Route("r", st.Prefix("/"), st.To(ca))))}
		cp.Set(snap)
		sc := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
		base := sc.URL(t, st.OutboundListenerName)
		st.Eventually(t, 10*time.Second, func() bool { return sc.Client.Status().Connected }, "never connected")
		cp.Stop()
		st.Eventually(t, 10*time.Second, func() bool { return !sc.Client.Status().Connected }, "never noticed the outage")
		for range 20 {
			if code, body, _ := st.Get(t, client, base, "reviews", "/"); code != 200 || body != "A" {
				t.Fatalf("during the outage: %d %q, want the last config's 200 A", code, body)
			}
		}
		cp.Restart()
		snap.Routes = []types.Resource{st.RouteConfig(st.VirtualHost("default/reviews", "reviews", "default", nil,
			st.Route("r", st.Prefix("/"), st.To(cb))))}
		v := cp.Set(snap)
		sc.WaitForVersion(t, resourcev3.RouteType, v)
		if code, body, _ := st.Get(t, client, base, "reviews", "/"); code != 200 || body != "B" {
			t.Fatalf("after reconnecting: %d %q, want the new config's 200 B", code, body)
		}
	})
}

func TestInboundListenerForwardsToAppAndCounts(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		release := make(chan struct{})
		app := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/block" {
				<-release
			}
			_, _ = w.Write([]byte("app"))
		})
		port, _ := strconv.Atoi(app.URL[len("http://127.0.0.1:"):])
		cp := st.StartControlPlane(t)
		cp.Set(st.Snapshot{Listeners: []types.Resource{st.InboundListener(uint32(port))},
			Clusters: []types.Resource{st.InboundCluster(uint32(port))}})
		sc := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
		base := sc.URL(t, st.InboundListenerName)
		for range 5 {
			if code, body, _ := st.Get(t, client, base, "anything", "/"); code != 200 || body != "app" {
				t.Fatalf("inbound: %d %q, want 200 app", code, body)
			}
		}
		go st.Get(t, client, base, "anything", "/block")
		in := sc.Proxy.Listener(st.InboundListenerName)
		st.Eventually(t, 10*time.Second, func() bool { n, _ := in.Stats(); return n == 1 }, "in-flight never reached 1")
		close(release)
		st.Eventually(t, 10*time.Second, func() bool { n, total := in.Stats(); return n == 0 && total == 6 }, "stats never settled at 0 in flight, 6 total")
	})
}

// A pod is published once its sidecar started and its app runs, which can be a moment
// before the app listens: the inbound listener waits for the app's first answer instead
// of failing the request. Once the app has answered, a refused connection fails at once.
func TestInboundListenerWaitsForTheAppToStart(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close() // the app has not started yet
		cp := st.StartControlPlane(t)
		cp.Set(st.Snapshot{Listeners: []types.Resource{st.InboundListener(uint32(port))},
			Clusters: []types.Resource{st.InboundCluster(uint32(port))}})
		sc := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
		base := sc.URL(t, st.InboundListenerName)

		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("app")) })}
		go func() {
			time.Sleep(300 * time.Millisecond)
			l, err := net.Listen("tcp", ln.Addr().String())
			if err != nil {
				t.Errorf("app could not listen: %v", err)
				return
			}
			_ = srv.Serve(l)
		}()
		start := time.Now()
		if code, body, _ := st.Get(t, client, base, "anything", "/"); code != 200 || body != "app" {
			t.Fatalf("request sent before the app listened: %d %q, want 200 app once it starts", code, body)
		}
		if waited := time.Since(start); waited < 250*time.Millisecond {
			t.Fatalf("answered after %v, before the app could have started", waited)
		}

		_ = srv.Close() // the app goes away after it has answered
		start = time.Now()
		if code, _, _ := st.Get(t, client, base, "anything", "/"); code != http.StatusServiceUnavailable {
			t.Fatalf("app gone after it answered: %d, want 503", code)
		}
		if waited := time.Since(start); waited > 2*time.Second {
			t.Fatalf("a refused connection after the app answered took %v, want an immediate 503", waited)
		}
	})
}

type refusal struct{}

func (refusal) Error() string {
	return "function default/fn is cold and its hold queue is full; retry later"
}
func (refusal) RetryAfter() time.Duration { return 2 * time.Second }

type holderFunc func(ctx context.Context, fn httpproxy.FunctionRef) (func(), time.Duration, error)

func (f holderFunc) Hold(ctx context.Context, fn httpproxy.FunctionRef) (func(), time.Duration, error) {
	return f(ctx, fn)
}

func functionSnapshot(eps ...st.Endpoint) (st.Snapshot, string) {
	cn := "function|default/fn"
	return st.Snapshot{
		Listeners: []types.Resource{st.OutboundListener()},
		Routes: []types.Resource{st.RouteConfig(st.VirtualHost("default/fn", "fn", "default", []int{80},
			st.Route("default/fn/0/0", st.Prefix("/"), st.To(cn))))},
		Clusters:  []types.Resource{st.EDSCluster(cn, st.FunctionMeta("default", "fn", 30*time.Second, 7))},
		Endpoints: []types.Resource{st.Endpoints(cn, eps...)},
	}, cn
}

func TestFunctionWithoutEndpointsAndNoHolderAnswers503(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		cp := st.StartControlPlane(t)
		snap, _ := functionSnapshot()
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		code, body, _ := st.Get(t, client, base, "fn", "/")
		if code != 503 || body != "no ready endpoint for function default/fn; it may be scaled to zero, retry later\n" {
			t.Errorf("got %d %q", code, body)
		}
	})
}

func TestHolderRefusalBecomes503WithRetryAfter(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		cp := st.StartControlPlane(t)
		snap, _ := functionSnapshot()
		cp.Set(snap)
		h := holderFunc(func(context.Context, httpproxy.FunctionRef) (func(), time.Duration, error) {
			return nil, 0, refusal{}
		})
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines, Holder: h}).URL(t, st.OutboundListenerName)
		code, body, hdr := st.Get(t, client, base, "fn", "/")
		if code != 503 || hdr.Get("Retry-After") != "2" || body != (refusal{}).Error()+"\n" {
			t.Errorf("got %d %q Retry-After=%q", code, body, hdr.Get("Retry-After"))
		}
	})
}

func TestColdStartHoldForwardsWhenEndpointsArrive(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		fnPod := st.Backend(t, "warm", nil)
		cp := st.StartControlPlane(t)
		snap, cn := functionSnapshot()
		cp.Set(snap)
		ready := make(chan struct{})
		var once sync.Once
		watcher := httpproxy.EndpointWatcherFunc(func(cluster string, n int) {
			if cluster == cn && n > 0 {
				once.Do(func() { close(ready) })
			}
		})
		var gotRef httpproxy.FunctionRef
		var released atomic.Bool
		h := holderFunc(func(ctx context.Context, fn httpproxy.FunctionRef) (func(), time.Duration, error) {
			gotRef = fn
			// The autoscaler would scale up here; the test plays the control plane.
			withEP, _ := functionSnapshot(st.Endpoint{Addr: st.HostPort(fnPod.URL)})
			cp.Set(withEP)
			select {
			case <-ready:
				return func() { released.Store(true) }, 1500 * time.Millisecond, nil
			case <-ctx.Done():
				return nil, 0, errors.New("caller left")
			}
		})
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines, Holder: h, Watcher: watcher}).URL(t, st.OutboundListenerName)
		code, body, hdr := st.Get(t, client, base, "fn.default:80", "/")
		if code != 200 || body != "warm" || hdr.Get("X-Weft-Cold-Start") != "1.500" {
			t.Errorf("got %d %q X-Weft-Cold-Start=%q, want 200 warm 1.500", code, body, hdr.Get("X-Weft-Cold-Start"))
		}
		want := httpproxy.FunctionRef{Namespace: "default", Name: "fn", Cluster: cn, HoldTimeout: 30 * time.Second, MaxPending: 7}
		if gotRef != want {
			t.Errorf("holder got %+v, want %+v", gotRef, want)
		}
		if !released.Load() {
			t.Error("release was not called when the request completed")
		}
	})
}

func TestCallerHangingUpEndsTheHold(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		cp := st.StartControlPlane(t)
		snap, _ := functionSnapshot()
		cp.Set(snap)
		holding := make(chan struct{})
		ended := make(chan error, 1)
		h := holderFunc(func(ctx context.Context, fn httpproxy.FunctionRef) (func(), time.Duration, error) {
			close(holding)
			select {
			case <-ctx.Done():
				ended <- ctx.Err()
			case <-time.After(20 * time.Second):
				ended <- errors.New("hold outlived its caller")
			}
			return nil, 0, errors.New("caller left")
		})
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines, Holder: h}).URL(t, st.OutboundListenerName)
		conn, err := net.Dial("tcp", st.HostPort(base))
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: fn\r\n\r\n")
		<-holding
		conn.Close()
		if err := <-ended; !errors.Is(err, context.Canceled) {
			t.Errorf("hold ended with %v, want its context canceled when the caller hung up", err)
		}
	})
}

// asyncFunc records the calls the proxy hands to the async path and answers 202.
type asyncFunc func(w http.ResponseWriter, r *http.Request, ns, name string)

func (f asyncFunc) ServeAsync(w http.ResponseWriter, r *http.Request, ns, name string) {
	f(w, r, ns, name)
}

// "Prefer: respond-async" to a function goes to the async path before any hold (a queued
// call needs no endpoint); other calls, and calls to plain services, do not.
func TestPreferRespondAsyncGoesToTheQueue(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		cp := st.StartControlPlane(t)
		snap, _ := functionSnapshot(st.Endpoint{Addr: st.HostPort(st.Backend(t, "sync", nil).URL)})
		cp.Set(snap)
		var queued []string
		var mu sync.Mutex
		a := asyncFunc(func(w http.ResponseWriter, r *http.Request, ns, name string) {
			mu.Lock()
			queued = append(queued, ns+"/"+name+" "+r.URL.Path)
			mu.Unlock()
			w.WriteHeader(http.StatusAccepted)
		})
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines, Async: a}).URL(t, st.OutboundListenerName)

		req, _ := http.NewRequest(http.MethodPost, base+"/orders", strings.NewReader("{}"))
		req.Host = "fn"
		req.Header.Set("Prefer", "wait=5, respond-async")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("async call answered %d, want 202 from the queue", resp.StatusCode)
		}
		if code, body, _ := st.Get(t, client, base, "fn", "/orders"); code != 200 || body != "sync" {
			t.Fatalf("a plain call answered %d %q, want the function's own 200", code, body)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(queued) != 1 || queued[0] != "default/fn /orders" {
			t.Fatalf("queued %v, want exactly the one async call", queued)
		}
	})
}

func TestCallerHangingUpCancelsTheFunctionCall(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		fnPod := newHoldingApp(t)
		cp := st.StartControlPlane(t)
		snap, _ := functionSnapshot(st.Endpoint{Addr: st.HostPort(fnPod.URL)})
		cp.Set(snap)
		sc := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
		base := sc.URL(t, st.OutboundListenerName)
		fnPod.hangUp(t, base, "POST /hold HTTP/1.1\r\nHost: fn\r\nContent-Length: 4\r\n\r\nwork", "a call with a body")
		fnPod.hangUp(t, base, "POST /hold HTTP/1.1\r\nHost: fn\r\nContent-Length: 4\r\n\r\nwork"+
			"POST / HTTP/1.1\r\nHost: fn\r\nContent-Length: 2\r\n\r\nok", "a pipelined call behind it")
		// A caller that stays gets its answer, watch or no watch.
		c := dialRaw(t, base)
		c.write("POST / HTTP/1.1\r\nHost: fn\r\nContent-Length: 2\r\n\r\nhiPOST / HTTP/1.1\r\nHost: fn\r\nContent-Length: 2\r\n\r\nyo")
		for _, want := range []string{"got hi", "got yo"} {
			if resp, body := c.read("POST"); resp.StatusCode != 200 || body != want {
				t.Fatalf("%d %q, want 200 %q", resp.StatusCode, body, want)
			}
		}
	})
}

// A queued call is the request the synchronous path would have sent: a route's header
// removals (which strip what callers may not set), additions and rewrites apply before the
// call is published, and hop-by-hop headers are gone. Without this a caller could put a
// header the route removes into a function's queue.
func TestAsyncCallGetsTheRoutesEdits(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		cp := st.StartControlPlane(t)
		cn := "function|default/fn"
		route := st.Route("default/fn/0/0", st.Prefix("/v1/"), st.To(cn), st.Edit(func(r *routev3.Route) {
			r.GetRoute().PrefixRewrite = "/api/"
			r.GetRoute().HostRewriteSpecifier = &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: "fn.internal"}
			r.RequestHeadersToRemove = []string{"x-weft-forged"}
			r.RequestHeadersToAdd = []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-added", Value: "by-route"}}}
		}))
		cp.Set(st.Snapshot{
			Listeners: []types.Resource{st.OutboundListener()},
			Routes:    []types.Resource{st.RouteConfig(st.VirtualHost("default/fn", "fn", "default", []int{80}, route))},
			Clusters:  []types.Resource{st.EDSCluster(cn, st.FunctionMeta("default", "fn", 30*time.Second, 7))},
			Endpoints: []types.Resource{st.Endpoints(cn)},
		})
		got := make(chan *http.Request, 1)
		a := asyncFunc(func(w http.ResponseWriter, r *http.Request, ns, name string) {
			got <- r.Clone(context.Background())
			w.WriteHeader(http.StatusAccepted)
		})
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines, Async: a}).URL(t, st.OutboundListenerName)

		req, _ := http.NewRequest(http.MethodPost, base+"/v1/orders?id=7", strings.NewReader("{}"))
		req.Host = "fn"
		req.Header.Set("Prefer", "respond-async")
		req.Header.Set("X-Weft-Forged", "spoofed")
		req.Header.Set("Keep-Alive", "timeout=5")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("async call answered %d, want 202 from the queue", resp.StatusCode)
		}
		r := <-got
		if r.URL.RequestURI() != "/api/orders?id=7" || r.Host != "fn.internal" {
			t.Errorf("queued %s for host %q, want /api/orders?id=7 for fn.internal (the route's rewrites)", r.URL.RequestURI(), r.Host)
		}
		if v := r.Header.Get("X-Weft-Forged"); v != "" {
			t.Errorf("a header the route removes reached the queue: %q", v)
		}
		if v := r.Header.Get("Keep-Alive"); v != "" {
			t.Errorf("a hop-by-hop header reached the queue: %q", v)
		}
		if v := r.Header.Get("X-Added"); v != "by-route" {
			t.Errorf("X-Added = %q, want the route's addition", v)
		}
	})
}
