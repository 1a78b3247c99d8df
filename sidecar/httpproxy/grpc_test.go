package httpproxy_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpupv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/weftmesh/weft/contract"
	st "github.com/weftmesh/weft/sidecar/sidecartest"
	"github.com/weftmesh/weft/testenv"
)

// h2Upstream makes a cluster speak HTTP/2 with prior knowledge (what the control plane
// emits for a grpc/http2/h2c port), with at most streams per connection (0: default).
func h2Upstream(streams uint32) st.ClusterOption {
	return func(c *clusterv3.Cluster) {
		h2 := &corev3.Http2ProtocolOptions{}
		if streams > 0 {
			h2.MaxConcurrentStreams = wrapperspb.UInt32(streams)
		}
		po, _ := anypb.New(&httpupv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpupv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &httpupv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpupv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: h2}}}})
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{contract.HTTPProtocolOptionsKey: po}
	}
}

// downstreamProtocol makes a cluster speak what the caller spoke (use_downstream_protocol_config).
func downstreamProtocol() st.ClusterOption {
	return func(c *clusterv3.Cluster) {
		po, _ := anypb.New(&httpupv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpupv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
			UseDownstreamProtocolConfig: &httpupv3.HttpProtocolOptions_UseDownstreamHttpConfig{
				HttpProtocolOptions: &corev3.Http1ProtocolOptions{}, Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}}}})
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{contract.HTTPProtocolOptionsKey: po}
	}
}

// healthServer is grpc-go's health service with behaviour picked by the service name:
// "unavailable-once" fails its first call UNAVAILABLE, "internal" always fails INTERNAL,
// "slow" waits for its context; anything else is SERVING. Every call sets a trailer.
type healthServer struct {
	healthpb.UnimplementedHealthServer
	mu    sync.Mutex
	calls map[string]int
	ended chan error // the context error of each "slow" call, as it ends
}

func newHealthServer() *healthServer {
	return &healthServer{calls: map[string]int{}, ended: make(chan error, 16)}
}

func (s *healthServer) count(svc string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[svc]
}

func (s *healthServer) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	s.mu.Lock()
	s.calls[req.Service]++
	n := s.calls[req.Service]
	s.mu.Unlock()
	_ = grpc.SetTrailer(ctx, metadata.Pairs("x-echo-trailer", "t-"+req.Service))
	switch req.Service {
	case "unavailable-once":
		if n == 1 {
			return nil, status.Error(codes.Unavailable, "warming up")
		}
	case "internal":
		return nil, status.Error(codes.Internal, "broken")
	case "slow":
		<-ctx.Done()
		s.ended <- ctx.Err()
		return nil, ctx.Err()
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func (s *healthServer) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	if req.Service == "forever" { // one update, then nothing until the caller goes
		if err := stream.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}); err != nil {
			return err
		}
		<-stream.Context().Done()
		s.ended <- stream.Context().Err()
		return nil
	}
	for _, st := range []healthpb.HealthCheckResponse_ServingStatus{healthpb.HealthCheckResponse_SERVING,
		healthpb.HealthCheckResponse_NOT_SERVING, healthpb.HealthCheckResponse_SERVING} {
		if err := stream.Send(&healthpb.HealthCheckResponse{Status: st}); err != nil {
			return err
		}
	}
	stream.SetTrailer(metadata.Pairs("x-echo-trailer", "watch-done"))
	return status.Error(codes.ResourceExhausted, "enough")
}

// grpcBackend serves hs with grpc-go on a loopback port.
func grpcBackend(t *testing.T, hs *healthServer) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

// grpcClient dials the sidecar's listener at base with :authority host.
func grpcClient(t *testing.T, base, host string) healthpb.HealthClient {
	cc, err := grpc.NewClient("passthrough:///"+st.HostPort(base), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithAuthority(host))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return healthpb.NewHealthClient(cc)
}

func promValue(t *testing.T, stats, series string) string {
	for _, line := range strings.Split(stats, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}

func TestGRPCUnaryAndStreamingCarryTrailersAndStatus(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		hs := newHealthServer()
		addr := grpcBackend(t, hs)
		cp := st.StartControlPlane(t)
		snap, cn := oneBackend([]string{addr}, nil, h2Upstream(0))
		cp.Set(snap)
		sc := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
		hc := grpcClient(t, sc.URL(t, st.OutboundListenerName), "reviews")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()

		var tr metadata.MD
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "a"}, grpc.Trailer(&tr))
		if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("unary Check through the sidecar: %v, %v", resp, err)
		}
		if got := tr.Get("x-echo-trailer"); len(got) != 1 || got[0] != "t-a" {
			t.Errorf("unary trailer x-echo-trailer = %q, want [t-a]", got)
		}

		// A status error before any message: a Trailers-Only response.
		_, err = hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "internal"}, grpc.Trailer(&tr))
		if s, _ := status.FromError(err); s.Code() != codes.Internal || s.Message() != "broken" {
			t.Errorf("Trailers-Only INTERNAL came through as %v", err)
		}

		stream, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "w"})
		if err != nil {
			t.Fatal(err)
		}
		var got []healthpb.HealthCheckResponse_ServingStatus
		for {
			m, err := stream.Recv()
			if err != nil {
				if s, _ := status.FromError(err); s.Code() != codes.ResourceExhausted || s.Message() != "enough" {
					t.Errorf("server stream ended with %v, want RESOURCE_EXHAUSTED enough", err)
				}
				break
			}
			got = append(got, m.Status)
		}
		if len(got) != 3 || got[1] != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Errorf("server stream delivered %v, want SERVING NOT_SERVING SERVING", got)
		}
		if v := stream.Trailer().Get("x-echo-trailer"); len(v) != 1 || v[0] != "watch-done" {
			t.Errorf("stream trailer = %q, want [watch-done]", v)
		}

		var stats bytes.Buffer
		sc.Proxy.WritePrometheus(&stats)
		for code, want := range map[string]string{"0": "1", "13": "1", "8": "1"} {
			series := `weft_cluster_grpc_responses_total{cluster="` + cn + `",grpc_status="` + code + `"}`
			if v := promValue(t, stats.String(), series); v != want {
				t.Errorf("%s = %q, want %s", series, v, want)
			}
		}
	})
}

func TestGRPCCallerCancellingAStreamResetsItUpstream(t *testing.T) {
	hs := newHealthServer()
	addr := grpcBackend(t, hs)
	cp := st.StartControlPlane(t)
	snap, _ := oneBackend([]string{addr}, nil, h2Upstream(0))
	cp.Set(snap)
	sc := st.StartSidecar(t, cp, st.SidecarOptions{})
	hc := grpcClient(t, sc.URL(t, st.OutboundListenerName), "reviews")
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "forever"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("first update: %v", err)
	}
	cancel()
	select {
	case err := <-hs.ended:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("upstream stream ended with %v, want canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the caller cancelled its stream, but the upstream stream is still open after 5 s")
	}
	st.Eventually(t, 5*time.Second, func() bool {
		return promValue(t, statsOf(sc), `weft_listener_requests_inflight{listener="outbound_http"}`) == "0"
	}, "the cancelled stream is still counted in flight")
}

func TestGRPCUnavailableIsRetriedAndInternalIsNot(t *testing.T) {
	hs := newHealthServer()
	addr := grpcBackend(t, hs)
	cp := st.StartControlPlane(t)
	snap, _ := oneBackend([]string{addr}, []st.RouteOption{st.Retries("unavailable,cancelled", 2, 0)}, downstreamProtocol())
	cp.Set(snap)
	sc := st.StartSidecar(t, cp, st.SidecarOptions{})
	hc := grpcClient(t, sc.URL(t, st.OutboundListenerName), "reviews")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "unavailable-once"})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("an UNAVAILABLE first try with retryOn unavailable: %v, %v", resp, err)
	}
	if n := hs.count("unavailable-once"); n != 2 {
		t.Errorf("server saw %d calls, want 2 (one retry)", n)
	}
	_, err = hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "internal"})
	if s, _ := status.FromError(err); s.Code() != codes.Internal {
		t.Errorf("INTERNAL answered %v", err)
	}
	if n := hs.count("internal"); n != 1 {
		t.Errorf("INTERNAL is not in retryOn, yet the server saw %d calls", n)
	}
}

func TestGRPCCallToClusterWithoutEndpointsGetsUnavailable(t *testing.T) {
	cp := st.StartControlPlane(t)
	snap, _ := oneBackend(nil, nil, h2Upstream(0))
	cp.Set(snap)
	sc := st.StartSidecar(t, cp, st.SidecarOptions{})
	hc := grpcClient(t, sc.URL(t, st.OutboundListenerName), "reviews")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
	s, _ := status.FromError(err)
	if s.Code() != codes.Unavailable || !strings.Contains(s.Message(), "no healthy upstream") {
		t.Fatalf("call to a cluster with no endpoints: %v; want UNAVAILABLE saying no healthy upstream", err)
	}
}

// rawH2 is an HTTP/2 (h2c) client that sends what it is told, with no deadline of its own.
func rawH2() *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: &p}, Timeout: 20 * time.Second}
}

// h2cBackend is an HTTP/2 cleartext server.
func h2cBackend(t testing.TB, h http.HandlerFunc, configure ...func(*http.Server)) *httptest.Server {
	srv := httptest.NewUnstartedServer(h)
	for _, f := range configure {
		f(srv.Config)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	p.SetHTTP1(true)
	srv.Config.Protocols = &p
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

func TestGRPCTimeoutShorterThanRouteTimeoutIsHonoured(t *testing.T) {
	// The upstream ignores grpc-timeout and answers after 5 s; the caller asked for 300 ms and
	// does not enforce it itself: the sidecar must.
	upstreamEnded := make(chan error, 1)
	be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(5 * time.Second):
		case <-r.Context().Done():
			upstreamEnded <- r.Context().Err()
			return
		}
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", "0")
	})
	cp := st.StartControlPlane(t)
	snap, _ := oneBackend([]string{be.URL}, []st.RouteOption{st.Timeout(10 * time.Second)}, h2Upstream(0))
	cp.Set(snap)
	base := st.StartSidecar(t, cp, st.SidecarOptions{}).URL(t, st.OutboundListenerName)
	req, _ := http.NewRequest(http.MethodPost, base+"/grpc.health.v1.Health/Check", bytes.NewReader([]byte{0, 0, 0, 0, 0}))
	req.Host = "reviews"
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	req.Header.Set("Grpc-Timeout", "300m")
	start := time.Now()
	resp, err := rawH2().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	took := time.Since(start)
	if resp.StatusCode != 200 || resp.Header.Get("Grpc-Status") != "4" {
		t.Errorf("after the caller's grpc-timeout: HTTP %d grpc-status %q (%q); want 200 with grpc-status 4 (DEADLINE_EXCEEDED)",
			resp.StatusCode, resp.Header.Get("Grpc-Status"), resp.Header.Get("Grpc-Message"))
	}
	if took > 3*time.Second {
		t.Errorf("the call took %v: the 300m grpc-timeout was not honoured under a 10 s route timeout", took)
	}
	select {
	case <-upstreamEnded:
	case <-time.After(5 * time.Second):
		t.Error("the upstream stream was not reset when the caller's deadline passed")
	}
}

func TestH2UpstreamBoundsStreamsAndConnections(t *testing.T) {
	var inflight, peak atomic.Int64
	var conns atomic.Int64
	release := make(chan struct{})
	be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
		n := inflight.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		<-release
		inflight.Add(-1)
	}, func(s *http.Server) {
		s.ConnState = func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				conns.Add(1)
			}
		}
	})
	cp := st.StartControlPlane(t)
	snap, _ := oneBackend([]string{be.URL}, nil, h2Upstream(2))
	cp.Set(snap)
	base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: true}).URL(t, st.OutboundListenerName)
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code, _, _ := st.Get(t, client, base, "reviews", "/"); code != 200 {
				t.Errorf("status %d", code)
			}
		}()
	}
	// 2 streams × 4 connections may run at once; the other 12 wait for a slot.
	st.Eventually(t, 10*time.Second, func() bool { return inflight.Load() == 8 }, "8 requests in flight upstream (have %d)", inflight.Load())
	time.Sleep(100 * time.Millisecond)
	if p := peak.Load(); p > 8 {
		t.Errorf("%d streams upstream at once; the bound is 2 per connection × 4 connections", p)
	}
	close(release)
	wg.Wait()
	if c := conns.Load(); c > 4 {
		t.Errorf("the sidecar opened %d HTTP/2 connections to one endpoint; the bound is 4", c)
	}
}

func TestCurlH2cPriorKnowledgeThroughTheSidecar(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		testenv.Missing(t, "curl not installed")
	}
	var proto atomic.Value
	be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
		proto.Store(r.Proto)
		_, _ = io.WriteString(w, "hello over h2")
	})
	cp := st.StartControlPlane(t)
	snap, _ := oneBackend([]string{be.URL}, nil, downstreamProtocol())
	cp.Set(snap)
	base := st.StartSidecar(t, cp, st.SidecarOptions{}).URL(t, st.OutboundListenerName)
	out, err := exec.Command("curl", "-sS", "--http2-prior-knowledge", "-H", "Host: reviews", "-w", "\n%{http_version}", base+"/").CombinedOutput()
	if err != nil {
		t.Fatalf("curl: %v: %s", err, out)
	}
	if string(out) != "hello over h2\n2" {
		t.Errorf("curl --http2-prior-knowledge got %q, want the body then HTTP version 2", out)
	}
	if p, _ := proto.Load().(string); p != "HTTP/2.0" {
		t.Errorf("an HTTP/2 caller on a use_downstream_protocol_config cluster reached the upstream over %q, want HTTP/2.0", p)
	}
	// An HTTP/1.1 caller on the same cluster goes upstream over HTTP/1.1.
	if code, _, _ := st.Get(t, client, base, "reviews", "/"); code != 200 {
		t.Fatalf("HTTP/1.1 call: %d", code)
	}
	if p, _ := proto.Load().(string); p != "HTTP/1.1" {
		t.Errorf("an HTTP/1.1 caller reached the upstream over %q, want HTTP/1.1", p)
	}
}

// BenchmarkGRPCUnaryThroughSidecar measures one unary call through the outbound listener
// to an HTTP/2 cluster (grpc-go on both ends); compare with BenchmarkGRPCUnaryDirect.
func BenchmarkGRPCUnaryThroughSidecar(b *testing.B) {
	hs := newHealthServer()
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go func() { _ = srv.Serve(ln) }()
	defer srv.Stop()
	cp := st.StartControlPlane(b)
	snap, _ := oneBackend([]string{ln.Addr().String()}, nil, h2Upstream(0))
	cp.Set(snap)
	sc := st.StartSidecar(b, cp, st.SidecarOptions{})
	cc, _ := grpc.NewClient("passthrough:///"+st.HostPort(sc.URL(b, st.OutboundListenerName)), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority("reviews"))
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "a"}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGRPCUnaryDirect is BenchmarkGRPCUnaryThroughSidecar without the sidecar.
func BenchmarkGRPCUnaryDirect(b *testing.B) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, newHealthServer())
	go func() { _ = srv.Serve(ln) }()
	defer srv.Stop()
	cc, _ := grpc.NewClient("passthrough:///"+ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "a"}); err != nil {
			b.Fatal(err)
		}
	}
}

func TestH2UpstreamConnectionClosedWhileIdleIsNotUsedAgain(t *testing.T) {
	// On the event loop an HTTP/1.1 request to an HTTP/2 cluster is handed to the
	// goroutine path, which speaks HTTP/2 upstream.
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var proto atomic.Value
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			proto.Store(r.Proto)
			_, _ = io.WriteString(w, "fine")
		}, func(s *http.Server) { s.IdleTimeout = 50 * time.Millisecond })
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{be.URL}, nil, h2Upstream(0))
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		for i := range 4 {
			if code, body, _ := st.Get(t, client, base, "reviews", "/"); code != 200 || body != "fine" {
				t.Fatalf("request %d after the upstream closed its idle HTTP/2 connection: %d %q", i, code, body)
			}
			if p, _ := proto.Load().(string); p != "HTTP/2.0" {
				t.Fatalf("request %d reached the upstream over %q, want HTTP/2.0", i, p)
			}
			time.Sleep(150 * time.Millisecond) // the upstream closes the idle connection meanwhile
		}
	})
}

func TestGRPCCallToADeadEndpointIsRetriedOnConnectFailure(t *testing.T) {
	// A gRPC body has no length and streams upstream; a connect failure read none of it,
	// so the call goes to the next endpoint as it is.
	hs := newHealthServer()
	live := grpcBackend(t, hs)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	cp := st.StartControlPlane(t)
	snap, _ := oneBackend([]string{dead, live}, []st.RouteOption{st.Retries("connect-failure", 2, 0)}, h2Upstream(0))
	cp.Set(snap)
	sc := st.StartSidecar(t, cp, st.SidecarOptions{})
	hc := grpcClient(t, sc.URL(t, st.OutboundListenerName), "reviews")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 6 {
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "a"}); err != nil {
			t.Fatalf("call %d with one endpoint refusing connections: %v", i, err)
		}
	}
	if n := hs.count("a"); n != 6 {
		t.Errorf("live endpoint saw %d calls, want 6", n)
	}
}

func TestH2UpstreamLargeBodiesStreamUnderTheSidecarsWindows(t *testing.T) {
	// 8 MiB each way is 32 times the per-stream window the sidecar grants an upstream.
	payload := bytes.Repeat([]byte("0123456789abcdef"), 512<<10)
	be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
		got, _ := io.ReadAll(r.Body)
		if !bytes.Equal(got, payload) {
			http.Error(w, "request body mangled", http.StatusBadRequest)
			return
		}
		_, _ = w.Write(payload)
	})
	cp := st.StartControlPlane(t)
	snap, _ := oneBackend([]string{be.URL}, nil, h2Upstream(0))
	cp.Set(snap)
	base := st.StartSidecar(t, cp, st.SidecarOptions{}).URL(t, st.OutboundListenerName)
	req, _ := http.NewRequest(http.MethodPost, base+"/big", bytes.NewReader(payload))
	req.Host = "reviews"
	resp, err := rawH2().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 || !bytes.Equal(got, payload) {
		t.Fatalf("8 MiB through an HTTP/2 hop: status %d, %d bytes back, %v", resp.StatusCode, len(got), err)
	}
}
