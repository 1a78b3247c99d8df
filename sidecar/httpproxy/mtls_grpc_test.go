package httpproxy_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/weftmesh/weft/contract"
	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// grpcMeshPair runs a caller sidecar (web) whose route "cart" is an HTTP/2 cluster (a grpc
// port) to the callee sidecar (cart)'s inbound listener on a meshed address, in front of a
// real grpc-go health server; the callee's inbound cluster speaks what its caller spoke
// (the control plane's inbound cluster), so HTTP/2 reaches the app.
func grpcMeshPair(t *testing.T, goroutines bool, mode string, inboundFilters ...*rbacv3.RBAC) (*meshPair, *healthServer) {
	t.Helper()
	p := &meshPair{}
	p.ca, p.callerID, p.calleeID = webAndCartIDs(t, 0, mode)
	hs := newHealthServer()
	app := grpcBackend(t, hs)
	_, port, _ := net.SplitHostPort(app)
	appPort, _ := strconv.Atoi(port)
	p.calleeAddr = meshedAddress(t)
	cluster := st.OutboundClusterName(80, "", "cart", "shop", "shop", "cart")
	inbound := st.InboundCluster(uint32(appPort))
	downstreamProtocol()(inbound)
	cp := st.StartControlPlane(t)
	in := st.InboundListener(uint32(appPort))
	if len(inboundFilters) > 0 {
		in = withRBAC(t, in, inboundFilters...)
	}
	cp.Set(st.Snapshot{
		Listeners: []types.Resource{st.OutboundListener(), in},
		Routes:    []types.Resource{st.RouteConfig(st.VirtualHost("shop/cart", "cart", "shop", []int{80}, st.Route("r", st.Prefix("/"), st.To(cluster))))},
		Clusters:  []types.Resource{st.EDSCluster(cluster, h2Upstream(0)), inbound},
		Endpoints: []types.Resource{st.Endpoints(cluster, st.Endpoint{Addr: p.calleeAddr})},
	})
	p.callee = st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines, InboundAddress: p.calleeAddr,
		InboundTLS: p.calleeID, MeshTLS: p.calleeID})
	p.caller = st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines, InboundTLS: p.callerID, MeshTLS: p.callerID})
	p.outbound = p.caller.URL(t, st.OutboundListenerName)
	_ = p.callee.URL(t, st.InboundListenerName)
	return p, hs
}

// grpc-go client (h2c) → caller sidecar → HTTP/2 over mutual TLS (ALPN h2) → callee
// sidecar → grpc-go server: unary and server-streaming calls keep their messages,
// trailers and status; the callee verified the caller's certificate on every connection
// and saw no plaintext, and a strict callee refuses a plaintext gRPC client. Both HTTP
// paths of the sidecars (the event loop hands h2c callers and meshed clusters to the
// goroutine path; the callee's TLS connections always run there).
func TestMTLSGRPCBetweenTwoSidecars(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		p, hs := grpcMeshPair(t, goroutines, contract.MTLSStrict)
		hc := grpcClient(t, p.outbound, "cart")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for i := range 20 {
			var tr metadata.MD
			resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "a"}, grpc.Trailer(&tr))
			if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("call %d through two sidecars over mutual TLS: %v, %v", i, resp, err)
			}
			if got := tr.Get("x-echo-trailer"); len(got) != 1 || got[0] != "t-a" {
				t.Fatalf("call %d: trailer x-echo-trailer = %q, want [t-a]", i, got)
			}
		}
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "internal"}); status.Code(err) != codes.Internal {
			t.Errorf("Trailers-Only INTERNAL over mutual TLS came through as %v", err)
		}
		stream, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "w"})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for {
			if _, err := stream.Recv(); err != nil {
				if s, _ := status.FromError(err); s.Code() != codes.ResourceExhausted || s.Message() != "enough" {
					t.Errorf("server stream ended with %v, want RESOURCE_EXHAUSTED enough", err)
				}
				break
			}
			n++
		}
		if n != 3 {
			t.Errorf("server stream delivered %d messages, want 3", n)
		}
		if hs.count("a") != 20 {
			t.Errorf("the app saw %d calls, want 20", hs.count("a"))
		}

		hsk, herr, plain, refused := p.callee.Proxy.MTLSCounts()
		if hsk == 0 || herr != 0 || plain != 0 || refused != 0 {
			t.Errorf("callee counts: %d handshakes, %d errors, %d plaintext, %d refused; want only handshakes", hsk, herr, plain, refused)
		}
		// HTTP/2 multiplexes: the 22 calls shared a handful of connections (≤ MaxH2ConnsPerHost).
		if hsk > 4 {
			t.Errorf("%d handshakes for 22 calls: HTTP/2 connections over TLS are not reused", hsk)
		}
		for _, id := range p.callee.Proxy.MTLSPeers() {
			if id != webID {
				t.Errorf("callee sees peer %s, want %s", id, webID)
			}
		}

		// A plaintext gRPC client straight at the strict callee: refused, the app sees nothing.
		cc, err := grpc.NewClient("passthrough:///"+p.calleeAddr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority("cart"))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
		defer pcancel()
		if _, err := healthpb.NewHealthClient(cc).Check(pctx, &healthpb.HealthCheckRequest{Service: "plain"}); err == nil {
			t.Error("a strict callee answered a plaintext gRPC call")
		}
		if hs.count("plain") != 0 {
			t.Error("a plaintext gRPC call reached the strict callee's app")
		}
		if _, _, _, refused := p.callee.Proxy.MTLSCounts(); refused == 0 {
			t.Error("the strict callee counted no refused plaintext connection")
		}
	})
}

// An HTTP/1.1 caller to an HTTP/2 cluster whose endpoint is meshed: the caller's sidecar
// sends HTTP/2 over mutual TLS (the grpc-go server answers an HTTP/2 request that is no
// gRPC call with 415, which HTTP/1.1 never reaches), on both paths.
func TestMTLSHTTP1CallerToHTTP2MeshedCluster(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		p, _ := grpcMeshPair(t, goroutines, contract.MTLSStrict)
		code, body, _ := st.Get(t, client, p.outbound, "cart", "/")
		if code != http.StatusUnsupportedMediaType {
			t.Errorf("HTTP/1.1 GET through an HTTP/2 meshed cluster: %d %q; want grpc-go's 415 over HTTP/2", code, body)
		}
		if hsk, _, plain, _ := p.callee.Proxy.MTLSCounts(); hsk == 0 || plain != 0 {
			t.Errorf("callee: %d handshakes, %d plaintext; want mutual TLS only", hsk, plain)
		}
	})
}

// A callee whose TLS offers no h2 (an older sidecar, or not a sidecar at all): the HTTP/2
// connection fails as a connect failure, so the gRPC caller gets UNAVAILABLE from the
// caller's sidecar, never a plaintext or HTTP/1.1 fallback.
func TestMTLSGRPCToCalleeWithoutH2IsUnavailable(t *testing.T) {
	_, callerID, calleeID := webAndCartIDs(t, 0, "")
	addr := meshedAddress(t)
	cfg := calleeID.ServerConfig()
	cfg.NextProtos = []string{"http/1.1"}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Errorf("a request reached the HTTP/1.1-only callee: %s", r.Proto)
	})}
	srv.TLSConfig = cfg
	srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){} // HTTP/1.1 only: ServeTLS would add h2
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	defer srv.Close()
	cluster := st.OutboundClusterName(80, "", "cart", "shop", "shop", "cart")
	cp := st.StartControlPlane(t)
	cp.Set(st.Snapshot{
		Listeners: []types.Resource{st.OutboundListener()},
		Routes:    []types.Resource{st.RouteConfig(st.VirtualHost("shop/cart", "cart", "shop", []int{80}, st.Route("r", st.Prefix("/"), st.To(cluster))))},
		Clusters:  []types.Resource{st.EDSCluster(cluster, h2Upstream(0))},
		Endpoints: []types.Resource{st.Endpoints(cluster, st.Endpoint{Addr: addr})},
	})
	caller := st.StartSidecar(t, cp, st.SidecarOptions{MeshTLS: callerID})
	hc := grpcClient(t, caller.URL(t, st.OutboundListenerName), "cart")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, err = hc.Check(ctx, &healthpb.HealthCheckRequest{})
	if s, _ := status.FromError(err); s.Code() != codes.Unavailable {
		t.Fatalf("gRPC to a callee without h2: %v; want UNAVAILABLE", err)
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Error("the call waited out its deadline instead of failing the connection")
	}
}

// A Service endpoint podIP:targetPort (not the inbound port) that EDS marks tlsMode: weft
// gets mutual TLS from the caller's sidecar; the same endpoint unmarked gets plaintext
// (the capture-mode path: the callee's capture brings the app port to its inbound
// listener, which here listens on that address itself). HTTP/1.1 and gRPC, both paths.
func TestMTLSToServiceEndpointMarkedByEDS(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		for _, marked := range []bool{true, false} {
			_, callerID, calleeID := webAndCartIDs(t, 0, "")
			// One app port serving gRPC over HTTP/2 and plain HTTP/1.1.
			gs := grpc.NewServer()
			healthpb.RegisterHealthServer(gs, newHealthServer())
			app := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
				if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
					gs.ServeHTTP(w, r)
					return
				}
				_, _ = io.WriteString(w, "cart-app "+r.Proto)
			})
			appPort, _ := strconv.Atoi(app.URL[len("http://127.0.0.1:"):])
			// The callee's inbound listener on a loopback address and an ordinary port, as
			// podIP:8080 reaches it through capture.
			calleeAddr := loopbackAddress(t, 8080)
			h1, h2 := st.OutboundClusterName(80, "", "cart", "shop", "shop", "cart"), st.OutboundClusterName(90, "", "cart-grpc", "shop", "shop", "cart-grpc")
			inbound := st.InboundCluster(uint32(appPort))
			downstreamProtocol()(inbound)
			cp := st.StartControlPlane(t)
			cp.Set(st.Snapshot{
				Listeners: []types.Resource{st.OutboundListener(), st.InboundListener(uint32(appPort))},
				Routes: []types.Resource{st.RouteConfig(
					st.VirtualHost("shop/cart", "cart", "shop", []int{80}, st.Route("r", st.Prefix("/"), st.To(h1))),
					st.VirtualHost("shop/cart-grpc", "cart-grpc", "shop", []int{90}, st.Route("g", st.Prefix("/"), st.To(h2))))},
				Clusters: []types.Resource{st.EDSCluster(h1, st.MeshTLSMatches()), st.EDSCluster(h2, st.MeshTLSMatches(), h2Upstream(0)), inbound},
				Endpoints: []types.Resource{st.Endpoints(h1, st.Endpoint{Addr: calleeAddr, MeshTLS: marked}),
					st.Endpoints(h2, st.Endpoint{Addr: calleeAddr, MeshTLS: marked})},
			})
			callee := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines, InboundAddress: calleeAddr, InboundTLS: calleeID, MeshTLS: calleeID})
			caller := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines, InboundTLS: callerID, MeshTLS: callerID})
			outbound := caller.URL(t, st.OutboundListenerName)
			_ = callee.URL(t, st.InboundListenerName)

			if code, body, _ := st.Get(t, client, outbound, "cart", "/"); code != 200 || body != "cart-app HTTP/1.1" {
				t.Errorf("marked %v: HTTP/1.1 through the caller: %d %q", marked, code, body)
			}
			hc := grpcClient(t, outbound, "cart-grpc")
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, gerr := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "eds"})
			cancel()
			if gerr != nil {
				t.Errorf("marked %v: gRPC through the caller: %v", marked, gerr)
			}
			hsk, herr, plain, _ := callee.Proxy.MTLSCounts()
			switch {
			case marked && (hsk < 2 || plain != 0 || herr != 0):
				t.Errorf("marked endpoint: callee counted %d handshakes, %d plaintext, %d errors; want mutual TLS for HTTP/1.1 and HTTP/2", hsk, plain, herr)
			case !marked && (hsk != 0 || plain < 2):
				t.Errorf("unmarked endpoint: callee counted %d handshakes, %d plaintext; want plaintext only", hsk, plain)
			}
		}
	})
}

// MeshPolicy on gRPC over mutual TLS judges the verified peer, on the frame relay as on
// net/http's server: web's calls (through its sidecar) pass, a client holding cart's own
// certificate is refused with PERMISSION_DENIED naming the policy. With the event loop on,
// the callee's TLS connections from the caller sidecar are relayed frame by frame.
func TestMTLSGRPCPolicyJudgesTheVerifiedPeer(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		anyPath := &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Any{Any: true}}
		allow := &rbacv3.RBAC{Rules: &rbacconfigv3.RBAC{Action: rbacconfigv3.RBAC_ALLOW, Policies: map[string]*rbacconfigv3.Policy{
			"shop/web-only/0": {Permissions: []*rbacconfigv3.Permission{anyPath}, Principals: []*rbacconfigv3.Principal{principalExact(webID.String())}},
		}}}
		p, hs := grpcMeshPair(t, goroutines, contract.MTLSStrict, allow)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		hc := grpcClient(t, p.outbound, "cart")
		st.Eventually(t, 10*time.Second, func() bool {
			_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "a"})
			return err == nil
		}, "web's call through its sidecar never passed the callee's policy")
		for i := range 5 {
			if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "a"}); err != nil {
				t.Fatalf("call %d from web: %v", i, err)
			}
		}
		cc, err := grpc.NewClient("passthrough:///"+p.calleeAddr, grpc.WithTransportCredentials(credentials.NewTLS(p.calleeID.ClientConfig([]string{"h2"}))),
			grpc.WithAuthority("cart"))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		before := hs.count("a")
		_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: "a"})
		if s, _ := status.FromError(err); s.Code() != codes.PermissionDenied || !strings.Contains(s.Message(), "shop/web-only") {
			t.Errorf("a call with cart's own certificate got %v, want PERMISSION_DENIED naming shop/web-only", err)
		}
		if hs.count("a") != before {
			t.Errorf("the refused call reached the app")
		}
		relayed := metric(t, p, "weft_listener_frame_relay_connections_total", `listener="`+st.InboundListenerName+`"`)
		if goroutines && relayed != 0 || !goroutines && relayed == 0 {
			t.Errorf("the callee relayed %d TLS connections frame by frame (goroutine path: %v)", relayed, goroutines)
		}
	})
}
