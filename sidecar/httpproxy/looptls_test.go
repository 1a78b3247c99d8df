package httpproxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/identity/identitytest"
	st "github.com/weftmesh/weft/sidecar/sidecartest"
	"github.com/weftmesh/weft/sidecar/tlsrec"
)

// Mutual TLS on the event loop (looptls.go): connections whose handshake crypto/tls did
// are carried on by the loops of both sidecars, with everything the loop hands to the
// goroutine path (large bodies, chunked responses) still inside the same TLS streams.

// loopApp answers /big with 1 MiB (Content-Length), /chunked with a chunked body,
// /echo with the request body's length and digest, and anything else with its path.
func loopApp(t *testing.T) string {
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16)
	app := st.Backend(t, "cart-app", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/big":
			w.Header().Set("Content-Length", strconv.Itoa(len(big)))
			_, _ = w.Write(big)
		case "/chunked":
			w.(http.Flusher).Flush() // no Content-Length: chunked
			_, _ = io.WriteString(w, "chunk one,")
			w.(http.Flusher).Flush()
			_, _ = io.WriteString(w, "chunk two")
		case "/echo":
			b, _ := io.ReadAll(r.Body)
			_, _ = fmt.Fprintf(w, "%d %x", len(b), sha256.Sum256(b))
		default:
			_, _ = io.WriteString(w, "cart-app "+r.URL.Path)
		}
	})
	return st.HostPort(app.URL)
}

// warm makes the callee's app seen (the loop hands a listener's requests to the goroutine
// path until the app has answered once), so the connections opened after it stay on the
// callee's loop.
func warm(t *testing.T, p *meshPair) {
	t.Helper()
	if code, body, _ := st.Get(t, client, p.outbound, "cart", "/warm"); code != 200 || body != "cart-app /warm" {
		t.Fatalf("warm-up: %d %q", code, body)
	}
}

// Through two sidecars on their event loops, many callers at once: the caller's loop dials
// the callee over mutual TLS, the callee's loop serves the connections after their
// handshakes, with the caller's identity; 1 MiB responses, chunked responses (finished by
// a goroutine over the same TLS stream) and request bodies over the loop's limit (handed
// to the goroutine path, record state and all) arrive whole.
func TestLoopTLSBetweenTwoSidecars(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		p := sidecarPairTo(t, goroutines, 0, "", 0, true, loopApp(t))
		warm(t, p)
		bigBody := bytes.Repeat([]byte("x"), 200<<10)
		wantEcho := fmt.Sprintf("%d %x", len(bigBody), sha256.Sum256(bigBody))
		wantBig := fmt.Sprintf("%x", sha256.Sum256(bytes.Repeat([]byte("0123456789abcdef"), 1<<16)))
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for w := range 8 {
			wg.Go(func() {
				c := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
				for i := range 12 {
					var path string
					var body io.Reader
					switch (w + i) % 4 {
					case 0:
						path = "/big"
					case 1:
						path = "/chunked"
					case 2:
						path, body = "/echo", bytes.NewReader(bigBody)
					default:
						path = "/p" + strconv.Itoa(i)
					}
					method := http.MethodGet
					if body != nil {
						method = http.MethodPost
					}
					req, _ := http.NewRequest(method, p.outbound+path, body)
					req.Host = "cart"
					resp, err := c.Do(req)
					if err != nil {
						errs <- fmt.Errorf("%s: %w", path, err)
						return
					}
					got, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					want := "cart-app " + path
					switch path {
					case "/big":
						got, want = fmt.Appendf(nil, "%x", sha256.Sum256(got)), wantBig
					case "/chunked":
						want = "chunk one,chunk two"
					case "/echo":
						want = wantEcho
					}
					if err != nil || resp.StatusCode != 200 || string(got) != want {
						errs <- fmt.Errorf("%s: %d %.80q (%w), want %.80q", path, resp.StatusCode, got, err, want)
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		conns, _, _ := p.callee.Proxy.LoopTLSCounts(st.InboundListenerName)
		_, dials, dialErrs := p.caller.Proxy.LoopTLSCounts(st.OutboundListenerName)
		hs, herr, plain, _ := p.callee.Proxy.MTLSCounts()
		if !goroutines && (conns < 2 || dials < 2 || dialErrs != 0) {
			t.Errorf("callee loop took %d TLS connections, caller loop dialled %d (%d failed); want several of each, no failure", conns, dials, dialErrs)
		}
		if hs == 0 || herr != 0 || plain != 0 {
			t.Errorf("callee: %d handshakes, %d refused, %d plaintext: want TLS only", hs, herr, plain)
		}
		for _, id := range p.callee.Proxy.MTLSPeers() {
			if id != webID {
				t.Errorf("callee lists peer %s, want only %s", id, webID)
			}
		}
	})
}

// dialCallee opens a mutual TLS connection of our own to the callee's inbound listener
// with id's certificate, offering HTTP/1.1.
func dialCallee(t *testing.T, p *meshPair, cfg *tls.Config) *tls.Conn {
	t.Helper()
	conn, err := tls.Dial("tcp", p.calleeAddr, cfg)
	if err != nil {
		t.Fatalf("TLS to the callee: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// One TLS connection on the callee's loop, driven by hand: keep-alive requests, two
// requests pipelined in one write, a body over the loop's limit (the connection moves to
// the goroutine path mid-stream, with its TLS state) and requests after it on the same
// connection. And the verified peer is the principal MeshPolicy decides on, on the loop.
func TestLoopTLSInboundConnection(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		p := sidecarPairTo(t, goroutines, 0, "", 0, true, loopApp(t))
		warm(t, p)
		before, _, _ := p.callee.Proxy.LoopTLSCounts(st.InboundListenerName)
		conn := dialCallee(t, p, p.callerID.ClientConfig([]string{"http/1.1"}))
		br := bufio.NewReader(conn)
		read := func(what string) (int, string) {
			t.Helper()
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode, string(b)
		}
		for i := range 10 {
			fmt.Fprintf(conn, "GET /k%d HTTP/1.1\r\nHost: cart\r\n\r\n", i)
			if code, body := read("keep-alive"); code != 200 || body != "cart-app /k"+strconv.Itoa(i) {
				t.Fatalf("request %d: %d %q", i, code, body)
			}
		}
		if after, _, _ := p.callee.Proxy.LoopTLSCounts(st.InboundListenerName); !goroutines && after != before+1 {
			t.Fatalf("the callee's loop took %d connections, want 1 (ours)", after-before)
		}
		_, _ = io.WriteString(conn, "GET /a HTTP/1.1\r\nHost: cart\r\n\r\nGET /b HTTP/1.1\r\nHost: cart\r\n\r\n")
		for _, want := range []string{"cart-app /a", "cart-app /b"} {
			if code, body := read("pipelined"); code != 200 || body != want {
				t.Fatalf("pipelined: %d %q, want %q", code, body, want)
			}
		}
		big := bytes.Repeat([]byte("y"), 300<<10)
		fmt.Fprintf(conn, "POST /echo HTTP/1.1\r\nHost: cart\r\nContent-Length: %d\r\n\r\n", len(big))
		_, _ = conn.Write(big)
		if code, body := read("large body"); code != 200 || body != fmt.Sprintf("%d %x", len(big), sha256.Sum256(big)) {
			t.Fatalf("large body: %d %q", code, body)
		}
		for i := range 3 {
			fmt.Fprintf(conn, "GET /after%d HTTP/1.1\r\nHost: cart\r\n\r\n", i)
			if code, body := read("after the hand-off"); code != 200 || body != "cart-app /after"+strconv.Itoa(i) {
				t.Fatalf("after the hand-off: %d %q", code, body)
			}
		}
	})
}

// MeshPolicy on the loop decides on the TLS peer: web is allowed, cart (another identity)
// refused with the policy's 403, each on a connection the loop serves.
func TestLoopTLSAuthorizesThePeer(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		p := policedPair(t, goroutines)
		if code, body, _ := st.Get(t, client, p.outbound, "cart", "/items"); code != 200 { // the app answers once
			t.Fatalf("warm-up through the caller: %d %q", code, body)
		}
		before, _, _ := p.callee.Proxy.LoopTLSCounts(st.InboundListenerName)
		web := dialCallee(t, p, p.callerID.ClientConfig([]string{"http/1.1"}))
		if code, body := rawRequest(t, web, "GET", "/items"); code != 200 {
			t.Errorf("web on the loop: %d %q, want 200", code, body)
		}
		cart := dialCallee(t, p, p.calleeID.ClientConfig([]string{"http/1.1"}))
		if code, body := rawRequest(t, cart, "GET", "/items"); code != http.StatusForbidden || !strings.Contains(body, "cart") {
			t.Errorf("cart on the loop: %d %q, want 403 naming the principal", code, body)
		}
		if after, _, _ := p.callee.Proxy.LoopTLSCounts(st.InboundListenerName); !goroutines && after != before+2 {
			t.Errorf("the callee's loop took %d of the 2 connections", after-before)
		}
	})
}

// blackHole listens on a meshed address and accepts connections without ever answering
// a handshake.
func blackHole(t *testing.T) string {
	addr := meshedAddress(t)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	return addr
}

// The caller's loop waiting on a handshake: a callee that never answers it gets the
// route's timeout (504), not the 10 s handshake budget, and the connection slot comes
// back (max_connections 1: the next request dials again instead of queueing for ever); a
// callee whose certificate is from another CA is a connect failure (503), counted.
func TestLoopTLSDialFailures(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		p := sidecarPairTo(t, goroutines, 0, "", 0, true, loopApp(t))
		cluster := st.OutboundClusterName(80, "", "cart", "shop", "shop", "cart")
		hole := blackHole(t)
		snap := p.snap
		snap.Routes = []types.Resource{st.RouteConfig(st.VirtualHost("shop/cart", "cart", "shop", []int{80},
			st.Route("r", st.Prefix("/"), st.To(cluster), st.Timeout(300*time.Millisecond))))}
		snap.Clusters = append([]types.Resource{st.EDSCluster(cluster, limits(1, 0))}, snap.Clusters[1:]...)
		// The route's timeout and the limit first, then the endpoint: a request must never meet
		// the black hole under the old route, which has no timeout.
		v := p.cp.Set(snap)
		p.caller.WaitForVersion(t, resourcev3.RouteType, v)
		p.caller.WaitForVersion(t, resourcev3.ClusterType, v)
		snap.Endpoints = []types.Resource{st.Endpoints(cluster, st.Endpoint{Addr: hole})}
		p.caller.WaitForVersion(t, resourcev3.EndpointType, p.cp.Set(snap))
		for range 3 {
			start := time.Now()
			code, _, _ := st.Get(t, client, p.outbound, "cart", "/")
			if took := time.Since(start); code != http.StatusGatewayTimeout || took > 3*time.Second {
				t.Fatalf("stalled handshake: %d after %v, want 504 after ~300ms", code, took)
			}
		}

		// A callee from another CA: the handshake fails, the attempt is a connect failure.
		other, err := identitytest.New(cartID)
		if err != nil {
			t.Fatal(err)
		}
		foreignID := idManager(t, other, 0, "")
		foreign := st.StartSidecar(t, p.cp, st.SidecarOptions{GoroutinePerConnection: goroutines, InboundAddress: meshedAddress(t), InboundTLS: foreignID, MeshTLS: foreignID})
		_ = foreign
		_, _, errsBefore := p.caller.Proxy.LoopTLSCounts(st.OutboundListenerName)
		snap.Endpoints = []types.Resource{st.Endpoints(cluster, st.Endpoint{Addr: foreignAddr(t, foreign)})}
		p.cp.Set(snap)
		st.Eventually(t, 10*time.Second, func() bool {
			code, _, _ := st.Get(t, client, p.outbound, "cart", "/")
			return code == http.StatusServiceUnavailable
		}, "a callee with an untrusted certificate was not a connect failure")
		if _, _, errsAfter := p.caller.Proxy.LoopTLSCounts(st.OutboundListenerName); !goroutines && errsAfter <= errsBefore {
			t.Errorf("failed dials counted %d → %d", errsBefore, errsAfter)
		}
	})
}

// foreignAddr is the inbound address a sidecar listens on.
func foreignAddr(t *testing.T, s *st.Sidecar) string {
	t.Helper()
	return strings.TrimPrefix(s.URL(t, contract.InboundListenerName), "http://")
}

// A WebSocket session over mutual TLS: the callee's loop takes the connection after its
// handshake and hands the Upgrade to the goroutine path with its TLS state, which tunnels
// it; a 1 MiB message and the close handshake go through both ways.
func TestLoopTLSWebSocketTunnel(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var ended atomic.Int64
		p := sidecarPairTo(t, goroutines, 0, "", 0, true, st.HostPort(wsEcho(t, &ended)))
		_, _, _ = st.Get(t, client, p.outbound, "cart", "/") // the app answers once (not an Upgrade: refused)
		before, _, _ := p.callee.Proxy.LoopTLSCounts(st.InboundListenerName)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, resp, err := websocket.Dial(ctx, "ws://"+st.HostPort(p.outbound)+"/ws", &websocket.DialOptions{Host: "cart"})
		if err != nil {
			t.Fatalf("WebSocket through two sidecars over mutual TLS: %v (response %v)", err, resp)
		}
		c.SetReadLimit(4 << 20)
		for _, msg := range [][]byte{[]byte("hello"), bytes.Repeat([]byte("w"), 1<<20)} {
			if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
				t.Fatal(err)
			}
			_, got, err := c.Read(ctx)
			if err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("echo of %d bytes: %d bytes, %v", len(msg), len(got), err)
			}
		}
		if err := c.Write(ctx, websocket.MessageText, []byte("bye")); err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusNormalClosure {
			t.Fatalf("close: %v, want the server's normal closure", err)
		}
		if after, _, _ := p.callee.Proxy.LoopTLSCounts(st.InboundListenerName); !goroutines && after <= before {
			t.Errorf("the session's TLS connection did not join the callee's loop (%d → %d)", before, after)
		}
		st.Eventually(t, 5*time.Second, func() bool { return ended.Load() >= 1 }, "the app's WebSocket handler did not end")
	})
}

// A peer that completes the handshake and then sends what no TLS stack sends — a record
// whose tag does not verify, a record over the size limit, a plaintext record — loses
// that connection and nothing else: the callee's loop closes it without an answer, and
// a well-behaved connection on the same loop goes on.
func TestLoopTLSBadRecordsCloseOnlyTheirConnection(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		p := sidecarPairTo(t, goroutines, 0, "", 0, true, loopApp(t))
		warm(t, p)
		good := dialCallee(t, p, p.callerID.ClientConfig([]string{"http/1.1"}))
		if code, body := rawRequest(t, good, "GET", "/before"); code != 200 || body != "cart-app /before" {
			t.Fatalf("before: %d %q", code, body)
		}
		for _, bad := range []struct {
			name string
			wire func(rec *tlsrec.State) []byte
		}{
			{"forged tag", func(rec *tlsrec.State) []byte {
				w := rec.Seal(nil, []byte("GET / HTTP/1.1\r\nHost: cart\r\n\r\n"))
				w[len(w)-1] ^= 1
				return w
			}},
			{"oversized record", func(*tlsrec.State) []byte { return []byte{23, 3, 3, 0x48, 0x01, 1, 2, 3} }},
			{"plaintext request", func(*tlsrec.State) []byte { return []byte("GET / HTTP/1.1\r\nHost: cart\r\n\r\n") }},
		} {
			t.Run(bad.name, func(t *testing.T) {
				raw, err := net.Dial("tcp", p.calleeAddr)
				if err != nil {
					t.Fatal(err)
				}
				defer raw.Close()
				var keys tlsrec.Capture
				b := &tlsrec.Boundary{Conn: raw}
				tc := tls.Client(b, keys.Config(p.callerID.ClientConfig([]string{"http/1.1"})))
				if err := tc.Handshake(); err != nil {
					t.Fatal(err)
				}
				rec, err := tlsrec.Take(tc, b, &keys, true)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := raw.Write(bad.wire(rec)); err != nil {
					t.Fatal(err)
				}
				// The connection ends with nothing but, from crypto/tls (the goroutine path), an
				// alert record: no response.
				_ = raw.SetReadDeadline(time.Now().Add(10 * time.Second))
				got, err := io.ReadAll(raw) // a reset ends it as well as a FIN; only a timeout fails
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() || len(got) > 0 && (got[0] != 21 && got[0] != 23 || len(got) > 64) {
					t.Fatalf("the callee answered % x (%v) to a bad record; want the connection closed, at most an alert", got, err)
				}
				if !goroutines && len(got) > 0 {
					t.Fatalf("the loop answered % x to a bad record; want the connection closed", got)
				}
			})
		}
		if code, body := rawRequest(t, good, "GET", "/after"); code != 200 || body != "cart-app /after" {
			t.Fatalf("the good connection after the bad ones: %d %q", code, body)
		}
	})
}

// A peer that completes its handshake and then trickles part of a record holds nothing
// past the listener's head timeout: the connection is closed at it (the partial record
// the loop keeps is bounded by one record, and the time by the head timeout).
func TestLoopTLSPartialRecordCutAtTheHeadTimeout(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		p := sidecarPairTo(t, goroutines, 0, "", 0, true, loopApp(t))
		in := p.snap.Listeners[1].(*listenerv3.Listener)
		f := in.FilterChains[0].Filters[0]
		var hcm hcmv3.HttpConnectionManager
		if err := f.GetTypedConfig().UnmarshalTo(&hcm); err != nil {
			t.Fatal(err)
		}
		hcm.RequestHeadersTimeout = durationpb.New(500 * time.Millisecond)
		a, _ := anypb.New(&hcm)
		f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
		p.callee.WaitForVersion(t, resourcev3.ListenerType, p.cp.Set(p.snap))
		warm(t, p)
		raw, err := net.Dial("tcp", p.calleeAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()
		var keys tlsrec.Capture
		b := &tlsrec.Boundary{Conn: raw}
		tc := tls.Client(b, keys.Config(p.callerID.ClientConfig([]string{"http/1.1"})))
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		rec, err := tlsrec.Take(tc, b, &keys, true)
		if err != nil {
			t.Fatal(err)
		}
		wire := rec.Seal(nil, []byte("GET /slow HTTP/1.1\r\nHost: cart\r\n\r\n"))
		if _, err := raw.Write(wire[:10]); err != nil { // the header and a few bytes, then silence
			t.Fatal(err)
		}
		start := time.Now()
		_ = raw.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.ReadAll(raw)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("a partial record held the connection open for 10 s; want it closed at the 500 ms head timeout")
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Fatalf("closed after %v, want about the 500 ms head timeout", took)
		}
	})
}
