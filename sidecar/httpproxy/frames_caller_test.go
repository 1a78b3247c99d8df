package httpproxy_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// The frame relay against callers that misbehave (a raw HTTP/2 client, fc): malformed
// requests, protocol violations, frames before the first request, and the windows, header
// tables and GOAWAYs a caller sets.

// 3. Malformed requests on a relayed connection are reset with PROTOCOL_ERROR, each its
// own stream only, and never reach the upstream; a well-formed request on the same
// connection afterwards is answered.
func TestFrameRelayMalformedRequestsResetOnlyTheirStream(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var n, bad atomic.Int64
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/bad" {
				// a body with a content-length goes upstream as it comes: the HEADERS may
				// have reached the upstream before the excess did, but never the whole
				if _, err := io.ReadAll(r.Body); err == nil {
					bad.Add(1)
				}
				return
			}
			echoHandler(&n)(w, r)
		})
		sc, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))
		c := dialFC(t, base, false)
		c.get("reviews", "/ok", "GET /ok body=")
		cases := []struct {
			name string
			fs   fields
			body []string // DATA frames after HEADERS; nil: HEADERS ends the stream
		}{
			{"uppercase header name", reqFields("GET", "/bad", "reviews", [2]string{"X-Upper", "1"}), nil},
			{"connection: keep-alive", reqFields("GET", "/bad", "reviews", [2]string{"connection", "keep-alive"}), nil},
			{"transfer-encoding: chunked", reqFields("POST", "/bad", "reviews", [2]string{"transfer-encoding", "chunked"}), []string{"abc"}},
			{"te: gzip", reqFields("GET", "/bad", "reviews", [2]string{"te", "gzip"}), nil},
			{"missing :method", fields{{":scheme", "http"}, {":path", "/bad"}, {":authority", "reviews"}}, nil},
			{"missing :path", fields{{":method", "GET"}, {":scheme", "http"}, {":authority", "reviews"}}, nil},
			{"missing :scheme", fields{{":method", "GET"}, {":path", "/bad"}, {":authority", "reviews"}}, nil},
			{"unknown pseudo-header", reqFields("GET", "/bad", "reviews", [2]string{":protocol2", "x"}), nil},
			{"content-length 10, 13 bytes sent", reqFields("POST", "/bad", "reviews", [2]string{"content-length", "10"}), []string{"0123456789", "abc"}},
		}
		for _, tc := range cases {
			var id uint32
			if tc.body == nil {
				id = c.open(tc.fs, true)
			} else {
				id = c.open(tc.fs, false)
				for i, p := range tc.body {
					_ = c.data(id, []byte(p), i == len(tc.body)-1)
				}
			}
			r, ok := c.wait(id, 5*time.Second)
			switch {
			case !ok:
				t.Errorf("%s: no end within 5 s (%v)", tc.name, r)
			case goroutines && r.rst == nil && r.status == "400":
				// net/http's server answers some malformed requests 400 instead of resetting them
			case !isCode(r, http2.ErrCodeProtocol):
				t.Errorf("%s: %v, want RST_STREAM(PROTOCOL_ERROR)", tc.name, r)
			}
			c.get("reviews", "/after", "GET /after body=")
		}
		if g := c.goAway(100 * time.Millisecond); g != nil {
			t.Errorf("malformed requests ended the connection: GOAWAY %v", g.ErrCode)
		}
		if got := n.Load(); got != int64(1+len(cases)) {
			t.Errorf("the upstream answered %d well-formed requests, want %d", got, 1+len(cases))
		}
		if bad.Load() != 0 {
			t.Errorf("%d malformed requests reached the upstream whole", bad.Load())
		}
		wantRelayed(t, sc, goroutines, 1)
	})
}

// 3b. A request body shorter than its content-length: the relay resets the stream with
// PROTOCOL_ERROR; net/http's server fails the handler's body read. Either way the caller
// must not get a success for a truncated body, and the upstream must not take it as whole.
func TestFrameRelayShortBodyForContentLengthIsNotPassedOffAsWhole(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var whole atomic.Int64
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			b, err := io.ReadAll(r.Body)
			if err == nil && r.URL.Path == "/short" {
				whole.Add(1)
				t.Logf("the upstream read a complete body %q for content-length %d", b, r.ContentLength)
			}
			fmt.Fprintf(w, "got %q", b)
		})
		_, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))
		c := dialFC(t, base, false)
		c.get("reviews", "/ok", `got ""`)
		id := c.open(reqFields("POST", "/short", "reviews", [2]string{"content-length", "10"}), false)
		_ = c.data(id, []byte("abc"), true)
		r, ok := c.wait(id, 10*time.Second)
		if !ok {
			t.Fatalf("content-length 10 with 3 bytes: no end within 10 s: %v", r)
		}
		if !goroutines && !isCode(r, http2.ErrCodeProtocol) {
			t.Errorf("content-length 10 with 3 bytes then END_STREAM: %v, want RST_STREAM(PROTOCOL_ERROR)", r)
		}
		if r.rst == nil && r.status == "200" {
			t.Errorf("content-length 10 with 3 bytes: %v, want a reset or an error status", r)
		}
		if whole.Load() != 0 {
			t.Error("the upstream took a 3-byte body as a whole 10-byte one")
		}
		c.get("reviews", "/after", `got ""`)
	})
}

// The caller's SETTINGS_INITIAL_WINDOW_SIZE 0: nothing of a response body is sent until
// the caller raises it by a later SETTINGS; then the whole body comes.
func TestFrameRelayCallerInitialWindowZeroThenRaisedBySettings(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		body := strings.Repeat("w", 100<<10)
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, body) })
		_, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))
		c := dialFCWith(t, base, false, nil, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
		id := c.open(reqFields("GET", "/big", "reviews"), true)
		time.Sleep(300 * time.Millisecond)
		c.mu.Lock()
		got := c.streams[id].body.Len()
		c.mu.Unlock()
		if got != 0 {
			t.Errorf("the sidecar sent %d DATA bytes into a stream window of 0", got)
		}
		_ = c.write(func() error {
			return c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
		})
		r, ok := c.wait(id, 10*time.Second)
		if !ok || r.rst != nil || r.status != "200" || r.body != body {
			t.Fatalf("after the window was raised: ended=%v status %q, %d of %d bytes, reset %v", ok, r.status, len(r.body), len(body), r.rst)
		}
	})
}

// A response header block larger than one frame (CONTINUATIONs from the upstream and to
// the caller) comes through whole.
func TestFrameRelayLargeResponseHeadersSpanContinuationFrames(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		big := strings.Repeat("h", 40<<10)
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Big", big)
			w.Header().Set("X-After", "after")
			_, _ = io.WriteString(w, "body")
		})
		_, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))
		req, _ := http.NewRequest(http.MethodGet, base+"/h", nil)
		req.Host = "reviews"
		resp, err := rawH2().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("X-Big") != big || resp.Header.Get("X-After") != "after" || string(b) != "body" {
			t.Errorf("a 40 KiB response header: %d, X-Big %d bytes, X-After %q, body %q", resp.StatusCode, len(resp.Header.Get("X-Big")), resp.Header.Get("X-After"), b)
		}
	})
}

// Connection errors from the caller end the connection with GOAWAY(PROTOCOL_ERROR): a
// HEADERS on an even stream, on a stream id below one already used, and DATA on a stream
// never opened. DATA on a stream the caller already ended is a stream error only.
func TestFrameRelayCallerProtocolViolations(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var n atomic.Int64
		be := h2cBackend(t, echoHandler(&n))
		_, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))

		c := dialFC(t, base, false)
		c.get("reviews", "/ok", "GET /ok body=")
		_ = c.data(1, []byte("late"), false) // stream 1 is closed
		c.get("reviews", "/after-closed-data", "GET /after-closed-data body=")
		if g := c.goAway(100 * time.Millisecond); g != nil && !goroutines {
			t.Errorf("DATA on a closed stream ended the relayed connection: GOAWAY %v, want RST_STREAM(STREAM_CLOSED) only", g.ErrCode)
		}

		for _, tc := range []struct {
			name string
			do   func(c *fc)
		}{
			{"HEADERS on an even stream", func(c *fc) { c.next = 4; c.open(reqFields("GET", "/even", "reviews"), true) }},
			{"HEADERS on a stream below the last", func(c *fc) { c.next = 1; c.open(reqFields("GET", "/reused", "reviews"), true) }},
			{"DATA on an idle stream", func(c *fc) { _ = c.data(101, []byte("x"), true) }},
		} {
			c := dialFC(t, base, false)
			c.get("reviews", "/ok", "GET /ok body=")
			c.get("reviews", "/ok2", "GET /ok2 body=")
			tc.do(c)
			g := c.goAway(5 * time.Second)
			if g == nil || g.ErrCode != http2.ErrCodeProtocol {
				t.Errorf("%s: GOAWAY %+v, want PROTOCOL_ERROR", tc.name, g)
			}
			if !c.closedWithin(5 * time.Second) {
				t.Errorf("%s: the connection was not closed", tc.name)
			}
		}
		dialFC(t, base, false).get("reviews", "/still", "GET /still body=")
	})
}

// PING, WINDOW_UPDATE and PRIORITY before the first request are answered once, whether the
// connection is then relayed or handed to net/http (with those frames replayed).
func TestFrameRelayFramesBeforeTheFirstRequestAreAnsweredOnce(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		h2be := h2cBackend(t, echoHandler(nil))
		h1be := st.Backend(t, "", echoHandler(nil))
		_, base := relaySidecar(t, goroutines, relayHosts(h2be.URL, h1be.URL, nil))
		for _, host := range []string{"reviews", "ratings"} {
			ping := [8]byte{'p', 'i', 'n', 'g', host[0], host[1], 0, 1}
			c := dialFCWith(t, base, false, func(fr *http2.Framer) {
				_ = fr.WritePing(false, ping)
				_ = fr.WriteWindowUpdate(0, 1000)
				_ = fr.WritePriority(1, http2.PriorityParam{Weight: 10})
			}, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20}, http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 20})
			c.get(host, "/first", "GET /first body=")
			c.get(host, "/second", "GET /second body=")
			select {
			case got := <-c.pingAcks:
				if got != ping {
					t.Errorf("%s: PING ACK %q, want %q", host, got, ping)
				}
			case <-time.After(5 * time.Second):
				t.Errorf("%s: the PING before the first request was not answered", host)
			}
			select {
			case got := <-c.pingAcks:
				t.Errorf("%s: a second PING ACK %q for one PING", host, got)
			case <-time.After(200 * time.Millisecond):
			}
			if g := c.goAway(100 * time.Millisecond); g != nil {
				t.Errorf("%s: GOAWAY %v", host, g.ErrCode)
			}
		}
	})
}

// A caller's GOAWAY: its stream in flight is answered, and the sidecar then closes the
// connection.
func TestFrameRelayCallerGoAwayFinishesStreamsThenCloses(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				time.Sleep(300 * time.Millisecond)
			}
			_, _ = io.WriteString(w, "ok")
		})
		_, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))
		c := dialFC(t, base, false)
		c.get("reviews", "/ok", "ok")
		id := c.open(reqFields("GET", "/slow", "reviews"), true)
		_ = c.write(func() error { return c.fr.WriteGoAway(0, http2.ErrCodeNo, nil) })
		if r, ok := c.wait(id, 5*time.Second); !ok || r.rst != nil || r.status != "200" || r.body != "ok" {
			t.Errorf("the stream in flight when the caller sent GOAWAY: %v ended=%v, want 200 ok", r, ok)
		}
		if !c.closedWithin(5 * time.Second) {
			t.Error("the connection stayed open after the caller's GOAWAY and its last stream")
		}
	})
}

// A caller that allows no HPACK dynamic table (SETTINGS_HEADER_TABLE_SIZE 0) can decode
// every response: the sidecar's encoder must not index fields.
func TestFrameRelayCallerHeaderTableSizeZeroIsRespected(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Repeated", "the same value every time")
			w.Header().Set("Content-Type", "application/x-custom-type")
			_, _ = io.WriteString(w, "ok")
		})
		_, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))
		c := dialFCWith(t, base, false, nil, http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
		for i := range 5 {
			id := c.open(reqFields("GET", fmt.Sprintf("/%d", i), "reviews"), true)
			r, ok := c.wait(id, 5*time.Second)
			if !ok || r.rst != nil || r.status != "200" || r.body != "ok" {
				t.Fatalf("response %d to a caller with a 0-byte HPACK table: %v ended=%v (connection: %v)", i, r, ok, c.err())
			}
		}
	})
}

// The request target (escaped path and query), repeated request fields and a HEAD or 204
// answer cross the relay as they do net/http.
func TestFrameRelayRequestTargetHeadAnd204(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case "/204":
				w.WriteHeader(http.StatusNoContent)
				return
			case "/head":
				w.Header().Set("Content-Length", "100")
				w.Header()["Set-Cookie"] = []string{"a=1", "b=2"}
				return
			}
			fmt.Fprintf(w, "%s|%s|%q", r.Method, r.RequestURI, r.Header.Values("X-Multi"))
		})
		_, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))
		c := dialFC(t, base, false)
		c.get("reviews", "/a%2Fb/c?q=1&r=%20x", `GET|/a%2Fb/c?q=1&r=%20x|[]`)
		id := c.open(reqFields("GET", "/m", "reviews", [2]string{"x-multi", "one"}, [2]string{"x-multi", "two"}), true)
		if r, ok := c.wait(id, 5*time.Second); !ok || r.body != `GET|/m|["one" "two"]` {
			t.Errorf("repeated request fields: %v", r)
		}
		id = c.open(reqFields("GET", "/204", "reviews"), true)
		if r, ok := c.wait(id, 5*time.Second); !ok || r.rst != nil || r.status != "204" || r.body != "" {
			t.Errorf("204: %v ended=%v", r, ok)
		}
		id = c.open(reqFields("HEAD", "/head", "reviews"), true)
		r, ok := c.wait(id, 5*time.Second)
		if !ok || r.rst != nil || r.status != "200" || r.body != "" {
			t.Errorf("HEAD with content-length 100: %v ended=%v, want 200, no body, no reset", r, ok)
		}
		var cl string
		var cookies []string
		for _, f := range r.fields {
			switch f.Name {
			case "content-length":
				cl = f.Value
			case "set-cookie":
				cookies = append(cookies, f.Value)
			}
		}
		if cl != "100" || len(cookies) != 2 {
			t.Errorf("HEAD response fields: content-length %q, set-cookie %q; want 100 and two cookies", cl, cookies)
		}
	})
}

// A caller WINDOW_UPDATE that takes a flow-control window past 2^31-1 is a
// FLOW_CONTROL_ERROR (RFC 9113 §6.9.1): of the connection for its window, of the stream
// for a stream's.
func TestFrameRelayWindowUpdatePastTheMaximumIsFlowControlError(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		release := make(chan struct{})
		defer close(release)
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/block" {
				<-release
			}
			_, _ = io.WriteString(w, "ok")
		})
		_, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))
		var found []string
		// the stream's window
		c := dialFC(t, base, false)
		c.get("reviews", "/ok", "ok")
		id := c.open(reqFields("GET", "/block", "reviews"), true)
		time.Sleep(100 * time.Millisecond)
		_ = c.write(func() error { return c.fr.WriteWindowUpdate(id, 1<<31-1) })
		r, ok := c.wait(id, 2*time.Second)
		g := c.goAway(100 * time.Millisecond)
		if !(ok && isCode(r, http2.ErrCodeFlowControl)) && !(g != nil && g.ErrCode == http2.ErrCodeFlowControl) {
			found = append(found, fmt.Sprintf("a stream window taken past 2^31-1: stream %v (ended %v), GOAWAY %s; want RST_STREAM(FLOW_CONTROL_ERROR)", r, ok, goAwayString(g)))
		}
		// the connection's window (the caller's initial 65535 plus 2^31-1)
		c = dialFC(t, base, false)
		c.get("reviews", "/ok", "ok")
		_ = c.write(func() error { return c.fr.WriteWindowUpdate(0, 1<<31-1) })
		g = c.goAway(2 * time.Second)
		if g == nil || g.ErrCode != http2.ErrCodeFlowControl {
			found = append(found, fmt.Sprintf("the connection window taken past 2^31-1: GOAWAY %s; want FLOW_CONTROL_ERROR", goAwayString(g)))
		}
		if len(found) > 0 {
			if !goroutines {
				t.Errorf("regression (fixed in session 12) (conformance, minor): the frame relay does not check a caller's WINDOW_UPDATE against the "+
					"2^31-1 maximum (fconn.frame adds the increment to an int64 window): %s. net/http's server answers "+
					"both with FLOW_CONTROL_ERROR", strings.Join(found, "; "))
			}
			t.Error(strings.Join(found, "; "))
		}
	})
}
