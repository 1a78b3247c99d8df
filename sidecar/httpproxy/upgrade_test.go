package httpproxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// wsEcho is a WebSocket server that echoes every message (up to 4 MiB); a message
// "bye" makes it close the session itself. ended counts handlers that returned.
func wsEcho(t *testing.T, ended *atomic.Int64) string {
	be := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) {
		defer ended.Add(1)
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(4 << 20)
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if string(msg) == "bye" {
				_ = c.Close(websocket.StatusNormalClosure, "server says bye")
				return
			}
			if err := c.Write(r.Context(), typ, msg); err != nil {
				return
			}
		}
	})
	return be.URL
}

func wsDial(t *testing.T, base string) *websocket.Conn {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "ws://"+st.HostPort(base)+"/ws", &websocket.DialOptions{Host: "reviews"})
	if err != nil {
		t.Fatalf("WebSocket handshake through the sidecar: %v (response %v)", err, resp)
	}
	c.SetReadLimit(4 << 20)
	return c
}

func statsOf(sc *st.Sidecar) string {
	var b bytes.Buffer
	sc.Proxy.WritePrometheus(&b)
	return b.String()
}

func TestWebSocketEchoThroughTheSidecar(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var ended atomic.Int64
		be := wsEcho(t, &ended)
		cp := st.StartControlPlane(t)
		// Retries on the route: an Upgrade answered 101 must never be sent again.
		snap, _ := oneBackend([]string{be}, []st.RouteOption{st.Retries("5xx,reset,connect-failure", 3, 0)})
		cp.Set(snap)
		sc := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
		base := sc.URL(t, st.OutboundListenerName)
		if code, _, _ := st.Get(t, client, base, "reviews", "/warm"); code != 426 && code != 400 {
			t.Logf("plain GET to the WebSocket server: %d", code)
		}
		client.CloseIdleConnections()
		time.Sleep(50 * time.Millisecond)
		before := runtime.NumGoroutine()

		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c := wsDial(t, base)
		big := make([]byte, 3<<20) // larger than every buffer on the way: streams through in pieces
		_, _ = rand.Read(big)
		for _, msg := range [][]byte{[]byte("hello"), big} {
			if err := c.Write(ctx, websocket.MessageBinary, msg); err != nil {
				t.Fatalf("write %d bytes: %v", len(msg), err)
			}
			_, got, err := c.Read(ctx)
			if err != nil || !bytes.Equal(got, msg) {
				t.Fatalf("echo of %d bytes came back as %d bytes, err %v", len(msg), len(got), err)
			}
		}
		if v := promValue(t, statsOf(sc), `weft_listener_tunnels_active{listener="outbound_http"}`); v != "1" {
			t.Errorf("tunnels_active during the session = %q, want 1", v)
		}
		// The server ends the session: the client sees its close frame.
		if err := c.Write(ctx, websocket.MessageText, []byte("bye")); err != nil {
			t.Fatal(err)
		}
		_, _, err := c.Read(ctx)
		if websocket.CloseStatus(err) != websocket.StatusNormalClosure {
			t.Errorf("after the server closed: %v, want a normal closure", err)
		}
		c.CloseNow()
		s := statsOf(sc)
		if v := promValue(t, s, `weft_listener_upgrades_total{listener="outbound_http"}`); v != "1" {
			t.Errorf("upgrades_total = %q, want 1", v)
		}
		st.Eventually(t, 5*time.Second, func() bool {
			return promValue(t, statsOf(sc), `weft_listener_tunnels_active{listener="outbound_http"}`) == "0"
		}, "the tunnel never closed after the server ended the session")
		if ended.Load() < 1 {
			t.Error("the server handler did not end")
		}
		st.Eventually(t, 5*time.Second, func() bool { return runtime.NumGoroutine() <= before+2 },
			"goroutines %d after the session, %d before: the tunnel leaked", runtime.NumGoroutine(), before)
	})
}

// upgradeRequest is a WebSocket handshake written by hand.
const upgradeRequest = "GET /ws HTTP/1.1\r\nHost: reviews\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
	"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"

func TestWebSocketClientVanishingMidSessionLeaksNothing(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var ended atomic.Int64
		be := wsEcho(t, &ended)
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{be}, nil)
		cp.Set(snap)
		sc := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
		base := sc.URL(t, st.OutboundListenerName)
		st.Get(t, client, base, "reviews", "/warm")
		client.CloseIdleConnections()
		time.Sleep(50 * time.Millisecond)
		before := runtime.NumGoroutine()
		const sessions = 5
		for range sessions {
			conn, err := net.Dial("tcp", st.HostPort(base))
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.WriteString(conn, upgradeRequest)
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("handshake: %v %v", resp, err)
			}
			if resp.Header.Get("Sec-Websocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" || !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") {
				t.Errorf("101 headers lost on the way: %v", resp.Header)
			}
			// Half a frame (a 1 KiB masked binary frame announced, 10 bytes sent), then gone.
			_, _ = conn.Write([]byte{0x82, 0xFE, 0x04, 0x00, 1, 2, 3, 4, 5, 6})
			conn.Close()
		}
		st.Eventually(t, 10*time.Second, func() bool { return ended.Load() == sessions+1 }, // and the warm-up GET
			"the upstream saw %d of %d sessions end after their callers vanished", ended.Load()-1, sessions)
		st.Eventually(t, 10*time.Second, func() bool {
			return promValue(t, statsOf(sc), `weft_listener_tunnels_active{listener="outbound_http"}`) == "0"
		}, "tunnels still open after every caller vanished")
		st.Eventually(t, 10*time.Second, func() bool { return runtime.NumGoroutine() <= before+2 },
			"goroutines %d after %d vanished sessions, %d before: tunnels leaked", runtime.NumGoroutine(), sessions, before)
	})
}

func TestUpgradeRefusedUpstreamIsRelayedAsAResponse(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var hits atomic.Int64
		be := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			if r.Header.Get("Upgrade") != "websocket" || !strings.Contains(strings.ToLower(r.Header.Get("Connection")), "upgrade") {
				t.Errorf("upstream got Upgrade %q Connection %q", r.Header.Get("Upgrade"), r.Header.Get("Connection"))
			}
			w.Header().Set("Upgrade", "h2c") // a server advertising an upgrade on an ordinary answer
			w.Header().Set("Connection", "Upgrade")
			w.WriteHeader(http.StatusForbidden)
			_, _ = io.WriteString(w, "no sockets for you")
		})
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{be.URL}, []st.RouteOption{st.Retries("5xx", 2, 0)})
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		conn, err := net.Dial("tcp", st.HostPort(base))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, _ = io.WriteString(conn, upgradeRequest)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusForbidden || string(body) != "no sockets for you" {
			t.Errorf("refused upgrade came back as %d %q", resp.StatusCode, body)
		}
		if resp.Header.Get("Upgrade") != "" {
			t.Errorf("the upstream's Upgrade: %q reached an HTTP/1.1 caller on a non-101 answer", resp.Header.Get("Upgrade"))
		}
	})
}

func TestUpgradeIsNotRetriedAfter101(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var hits atomic.Int64
		be := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			conn, bw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			bw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
			bw.Flush()
			conn.Close() // and gone at once: a reset after the switch, which no retry may repeat
		})
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{be.URL}, []st.RouteOption{st.Retries("5xx,reset,gateway-error", 3, 0)})
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		conn, err := net.Dial("tcp", st.HostPort(base))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, _ = io.WriteString(conn, upgradeRequest)
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("handshake: %v %v", resp, err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
			t.Errorf("after the upstream closed the tunnel the caller read %v, want EOF", err)
		}
		if n := hits.Load(); n != 1 {
			t.Errorf("the upstream saw the upgrade %d times; after a 101 nothing may be retried", n)
		}
	})
}

func TestChunkedRequestTrailersReachTheUpstreamAndResponseTrailersTheCaller(t *testing.T) {
	for _, upstreamH2 := range []bool{false, true} {
		name := "HTTP/1.1 upstream"
		if upstreamH2 {
			name = "HTTP/2 upstream"
		}
		t.Run(name, func(t *testing.T) {
			bothPaths(t, func(t *testing.T, goroutines bool) {
				trailerRoundTrip(t, goroutines, upstreamH2)
			})
		})
	}
}

func trailerRoundTrip(t *testing.T, goroutines, upstreamH2 bool) {
	h := func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "X-Sum")
		w.Header().Set("Got-Body", string(body))
		w.Header().Set("Got-Trailer", r.Trailer.Get("X-Checksum"))
		w.Header().Set("Got-Proto", r.Proto)
		w.WriteHeader(200)
		_, _ = io.WriteString(w, "ok")
		w.(http.Flusher).Flush()
		w.Header().Set("X-Sum", "s-"+string(body))
	}
	var url string
	var copts []st.ClusterOption
	if upstreamH2 {
		url = h2cBackend(t, h).URL
		copts = append(copts, h2Upstream(0))
	} else {
		url = st.Backend(t, "", h).URL
	}
	cp := st.StartControlPlane(t)
	snap, _ := oneBackend([]string{url}, []st.RouteOption{st.Retries("5xx", 1, 0)}, copts...)
	cp.Set(snap)
	base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
	conn, err := net.Dial("tcp", st.HostPort(base))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = io.WriteString(conn, "POST /up HTTP/1.1\r\nHost: reviews\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\nTE: trailers\r\n\r\n"+
		"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc123\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: "POST"})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.Header.Get("Got-Body") != "hello world" || resp.Header.Get("Got-Trailer") != "abc123" {
		t.Errorf("upstream got body %q and trailer X-Checksum %q; want hello world and abc123",
			resp.Header.Get("Got-Body"), resp.Header.Get("Got-Trailer"))
	}
	if want := map[bool]string{false: "HTTP/1.1", true: "HTTP/2.0"}[upstreamH2]; resp.Header.Get("Got-Proto") != want {
		t.Errorf("upstream spoke %q, want %s", resp.Header.Get("Got-Proto"), want)
	}
	if string(body) != "ok" || resp.Trailer.Get("X-Sum") != "s-hello world" {
		t.Errorf("caller got body %q and trailer X-Sum %q; want ok and s-hello world", body, resp.Trailer.Get("X-Sum"))
	}
}

func TestUpgradeAdvertisedOrForcedOnAnOrdinaryRequest(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/switch" { // a 101 nobody asked for
				conn, bw, err := http.NewResponseController(w).Hijack()
				if err != nil {
					return
				}
				defer conn.Close()
				bw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
				bw.Flush()
				time.Sleep(100 * time.Millisecond)
				return
			}
			w.Header().Set("Upgrade", "h2c, websocket") // advertised on an ordinary answer (RFC 9110 §7.8)
			w.Header().Set("Connection", "Upgrade")
			_, _ = io.WriteString(w, "plain")
		})
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{be.URL}, nil)
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		code, body, h := st.Get(t, client, base, "reviews", "/")
		if code != 200 || body != "plain" || h.Get("Upgrade") != "" || strings.Contains(strings.ToLower(h.Get("Connection")), "upgrade") {
			t.Errorf("ordinary answer advertising an upgrade reached the HTTP/1.1 caller as %d %q Upgrade %q Connection %q; want 200 plain without them",
				code, body, h.Get("Upgrade"), h.Get("Connection"))
		}
		code, body, _ = st.Get(t, client, base, "reviews", "/switch")
		if code != http.StatusBadGateway {
			t.Errorf("a 101 to a request that asked for no upgrade reached the caller as %d %q, want 502", code, body)
		}
	})
}
