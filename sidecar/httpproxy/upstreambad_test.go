package httpproxy_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// Upstreams that answer HTTP/1.1 badly: malformed heads, bodies that end short or run on.

// rawBackend answers each request on a connection with the response its path names, and
// counts connections the sidecar closed after a response.
type rawBackend struct {
	ln       net.Listener
	conns    atomic.Int64
	hungUp   atomic.Int64 // connections the sidecar closed
	response map[string]string
}

func newRawBackend(t *testing.T, response map[string]string) *rawBackend {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &rawBackend{ln: ln, response: response}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			b.conns.Add(1)
			go b.serve(conn)
		}
	}()
	return b
}

func (b *rawBackend) serve(conn net.Conn) {
	defer conn.Close()
	br := bufioReader(conn)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			b.hungUp.Add(1)
			return
		}
		_, _ = io.Copy(io.Discard, req.Body)
		if _, err := io.WriteString(conn, b.response[req.URL.Path]); err != nil {
			return
		}
	}
}

// TestMalformedUpstreamResponsesAre502AndNotReused: a response whose framing two parsers
// could read differently must not desynchronise the pooled connection: the caller gets
// 502 and the connection is closed.
func TestMalformedUpstreamResponsesAre502AndNotReused(t *testing.T) {
	const next = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nnext!"
	bad := map[string]string{
		"/cl-te":  "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + next,
		"/cl-cl":  "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok" + next,
		"/fold":   "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok" + next,
		"/bare":   "HTTP/1.1 200 OK\nContent-Length: 2\n\nok" + next,
		"/te-zip": "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx" + next,
		"/good":   "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood",
	}
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := newRawBackend(t, bad)
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{"http://" + be.ln.Addr().String()}, nil)
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		c := dialRaw(t, base)
		n := 0
		for path := range bad {
			if path == "/good" {
				continue
			}
			n++
			c.write("GET " + path + " HTTP/1.1\r\nHost: reviews\r\n\r\n")
			resp, body := c.read("GET")
			if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "malformed") {
				t.Errorf("%s: %d %q, want 502 saying the response is malformed", path, resp.StatusCode, body)
			}
			if resp.Close {
				c = dialRaw(t, base)
			}
		}
		st.Eventually(t, 10*time.Second, func() bool { return be.hungUp.Load() == int64(n) },
			"the sidecar closed %d of %d upstream connections that sent malformed responses", be.hungUp.Load(), n)
		c.write("GET /good HTTP/1.1\r\nHost: reviews\r\n\r\n")
		if resp, body := c.read("GET"); resp.StatusCode != 200 || body != "good" {
			t.Errorf("/good after them: %d %q", resp.StatusCode, body)
		}
		if got := be.conns.Load(); got != int64(n+1) {
			t.Errorf("%d upstream connections, want %d: one per malformed response and one for /good", got, n+1)
		}
	})
}

func bufioReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }

// TestBrokenUpstreamBodyIsNotPassedOffAsWhole: a response whose chunked body breaks (an
// invalid chunk size) used to be ended as if whole (a last chunk was written, the
// caller's connection kept): the caller took a truncated body for the full one. Its head was already sent, so the caller's connection
// is closed without ending the body; the upstream connection is closed too, and the
// next request is answered correctly on a new one.
func TestBrokenUpstreamBodyIsNotPassedOffAsWhole(t *testing.T) {
	const next = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nnext!"
	responses := map[string]string{
		"/bad-chunk": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n" + next,
		"/good":      "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood",
	}
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := newRawBackend(t, responses)
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{"http://" + be.ln.Addr().String()}, nil)
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		c := dialRaw(t, base)
		c.write("GET /bad-chunk HTTP/1.1\r\nHost: reviews\r\n\r\n")
		_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(c.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		if err == nil {
			t.Errorf("a broken chunked body reached the caller as a whole body %q", b)
		}
		c.closedSoon("the caller's connection after a broken body")
		st.Eventually(t, 10*time.Second, func() bool { return be.hungUp.Load() == 1 },
			"the upstream connection that sent a broken body is still open")
		c = dialRaw(t, base)
		c.write("GET /good HTTP/1.1\r\nHost: reviews\r\n\r\n")
		if resp, body := c.read("GET"); resp.StatusCode != 200 || body != "good" {
			t.Errorf("/good after it: %d %q", resp.StatusCode, body)
		}
	})
}
