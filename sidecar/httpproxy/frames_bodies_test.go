package httpproxy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// The frame relay's request and response bodies when a side goes away or lags: resets both
// ways, trailers, retried bodies, content-length mismatches and slow readers.

// 6. A caller that resets its stream mid-request: the upstream's request is cancelled.
func TestFrameRelayCallerResetCancelsTheUpstreamRequest(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		entered := make(chan struct{}, 1)
		ended := make(chan error, 1)
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/hang" {
				return
			}
			entered <- struct{}{}
			<-r.Context().Done()
			ended <- r.Context().Err()
		})
		_, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))
		c := dialFC(t, base, false)
		c.get("reviews", "/ok", "")
		id := c.open(reqFields("POST", "/hang", "reviews"), false)
		_ = c.data(id, []byte("some of the body"), false)
		select {
		case <-entered:
		case <-time.After(5 * time.Second):
			t.Fatal("the request did not reach the upstream")
		}
		if err := c.reset(id, http2.ErrCodeCancel); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-ended:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("upstream request ended with %v, want canceled", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the caller reset its stream; the upstream request was not cancelled within 5 s")
		}
		c.get("reviews", "/after", "")
	})
}

// 10. Request trailers after a body reach the upstream frame by frame: a raw upstream sees
// the trailer HEADERS (ending the stream) after the body.
func TestFrameRelayRequestTrailersAreSentUpstreamAfterTheBody(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		up := startRawUp(t, func(u *rawUpConn, _, _ int, id uint32) {})
		_, base := relaySidecar(t, goroutines, relayHosts("http://"+up.addr, "", nil))
		c := dialFC(t, base, false)
		id := c.open(reqFields("POST", "/tr", "reviews", [2]string{"trailer", "x-checksum"}, [2]string{"content-type", "application/grpc"}, [2]string{"te", "trailers"}), false)
		_ = c.data(id, []byte("raw body"), false)
		_ = c.trailers(id, fields{{"x-checksum", "raw-sum"}})
		r, ok := c.wait(id, 10*time.Second)
		if !ok || r.rst != nil || r.status != "200" || r.body != "got trailers" {
			t.Fatalf("request with trailers: %v ended=%v", r, ok)
		}
		up.mu.Lock()
		gotBody, gotTr, gotHdr := up.body.String(), up.trailers, up.reqHdr
		up.mu.Unlock()
		// trailers with a pseudo-header are malformed: that stream only is reset
		id2 := c.open(reqFields("POST", "/tr", "reviews"), false)
		_ = c.data(id2, []byte("raw"), false)
		_ = c.trailers(id2, fields{{":path", "/x"}})
		r, ok = c.wait(id2, 10*time.Second)
		if !ok || !isCode(r, http2.ErrCodeProtocol) {
			t.Errorf("trailers with a pseudo-header: %v, want RST_STREAM(PROTOCOL_ERROR)", r)
		}
		id3 := c.open(reqFields("POST", "/tr", "reviews", [2]string{"trailer", "x-checksum"}), false)
		_ = c.data(id3, []byte("x"), false)
		_ = c.trailers(id3, fields{{"x-checksum", "y"}})
		if r, ok := c.wait(id3, 10*time.Second); !ok || r.rst != nil || r.body != "got trailers" {
			t.Errorf("second request with trailers: %v ended=%v", r, ok)
		}
		if g := c.goAway(100 * time.Millisecond); g != nil {
			t.Errorf("GOAWAY %v after a malformed trailer block", g.ErrCode)
		}
		if gotBody != "raw body" {
			t.Errorf("the upstream got body %q, want %q", gotBody, "raw body")
		}
		if len(gotTr) != 1 || gotTr[0].Name != "x-checksum" || gotTr[0].Value != "raw-sum" {
			t.Errorf("the upstream got trailers %v, want x-checksum: raw-sum", gotTr)
		}
		var declared string
		for _, f := range gotHdr {
			if f.Name == "trailer" {
				declared = f.Value
			}
		}
		if !strings.EqualFold(declared, "x-checksum") {
			// See TestFrameRelayRequestTrailersReachTheUpstream.
			t.Logf("the upstream request's header fields: %v", gotHdr)
			t.Error(bugTrailerDeclaration)
		}
	})
}

const bugTrailerDeclaration = "regression (fixed in session 12): the frame relay drops the request's `trailer` header field " +
	"(appendFields skips \"Trailer\" when building the upstream HEADERS), so a net/http upstream, which keeps only " +
	"declared trailers, discards the caller's trailers: r.Trailer.Get(\"X-Checksum\") is \"\" instead of \"abc123\". " +
	"The trailer HEADERS frame itself is forwarded. The goroutine path passes `trailer: X-Checksum` and the trailers arrive; " +
	"the relay should forward the declaration too"

// 10b. The same with net/http upstream and Go's client: http.Request.Trailer reaches the
// handler's r.Trailer.
func TestFrameRelayRequestTrailersReachTheUpstream(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			b, err := io.ReadAll(r.Body)
			fmt.Fprintf(w, "body=%s err=%v trailer=%s", b, err, r.Trailer.Get("X-Checksum"))
		})
		sc, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))
		pr, pw := io.Pipe()
		req, _ := http.NewRequest(http.MethodPost, base+"/tr", pr)
		req.Host = "reviews"
		req.Trailer = http.Header{"X-Checksum": nil}
		go func() {
			_, _ = io.WriteString(pw, "payload")
			req.Trailer.Set("X-Checksum", "abc123")
			pw.Close()
		}()
		resp, err := rawH2().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := "body=payload err=<nil> trailer=abc123"; string(b) != want {
			if !goroutines && string(b) == "body=payload err=<nil> trailer=" {
				t.Error(bugTrailerDeclaration)
			}
			t.Errorf("Go client with a trailer: %d %q, want %q", resp.StatusCode, b, want)
		}

		c := dialFC(t, base, false)
		c.get("reviews", "/first", "body= err=<nil> trailer=")
		id := c.open(reqFields("POST", "/tr", "reviews", [2]string{"trailer", "x-checksum"}), false)
		_ = c.data(id, []byte("raw"), false)
		_ = c.trailers(id, fields{{"x-checksum", "raw-sum"}})
		r, ok := c.wait(id, 10*time.Second)
		if want := "body=raw err=<nil> trailer=raw-sum"; !ok || r.rst != nil || r.body != want {
			t.Errorf("raw caller with a trailer: %v, want %q", r, want)
		}
		wantRelayed(t, sc, goroutines, 0+map[bool]int64{false: 2, true: 0}[goroutines])
	})
}

// An upstream response whose body is shorter or longer than its content-length is
// malformed (RFC 9113 §8.1.1): the caller's stream must not end cleanly as if the body
// were whole.
func TestFrameRelayUpstreamBodyNotMatchingContentLengthIsNotPassedOffAsWhole(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		up := startRawUp(t, func(u *rawUpConn, _, _ int, id uint32) {
			u.headers(id, false, [2]string{":status", "200"}, [2]string{"content-length", "10"})
			if id%4 == 1 { // alternate: short, then long
				u.data(id, "abc", true)
			} else {
				u.data(id, "0123456789-and-more", true)
			}
		})
		_, base := relaySidecar(t, goroutines, relayHosts("http://"+up.addr, "", nil))
		c := dialFC(t, base, false)
		var passed []string
		for _, what := range []string{"3 bytes for content-length 10", "19 bytes for content-length 10"} {
			id := c.open(reqFields("GET", "/cl", "reviews"), true)
			r, ok := c.wait(id, 10*time.Second)
			if !ok {
				t.Fatalf("%s: no end within 10 s: %v", what, r)
			}
			if r.rst == nil && r.status == "200" {
				passed = append(passed, fmt.Sprintf("%s: %v", what, r))
			}
		}
		if len(passed) > 0 {
			if !goroutines {
				t.Errorf("regression (fixed in session 12): the frame relay passes an upstream response whose DATA does not match its content-length "+
					"to the caller as a clean 200 ending with END_STREAM (%s); it should reset the caller's stream "+
					"(RST_STREAM), as the goroutine path does, so a truncated body is never taken for a whole one",
					strings.Join(passed, "; "))
			}
			t.Errorf("want the caller's stream reset, got a clean end: %s", strings.Join(passed, "; "))
		}
	})
}

// A route with a retry policy: a POST whose first attempt gets 503 is sent again with the
// same body, and the caller gets the second answer.
func TestFrameRelayRetriedPostCarriesTheWholeBodyAgain(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var mu sync.Mutex
		var bodies []string
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			mu.Lock()
			bodies = append(bodies, string(b))
			n := len(bodies)
			mu.Unlock()
			if n%2 == 1 {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintf(w, "got %d bytes", len(b))
		})
		sc, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil, st.Retries("5xx", 2, 0)))
		body := strings.Repeat("0123456789abcdef", 6<<10) // 96 KiB: several DATA frames
		req, _ := http.NewRequest(http.MethodPost, base+"/retry", strings.NewReader(body))
		req.Host = "reviews"
		resp, err := rawH2().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != fmt.Sprintf("got %d bytes", len(body)) {
			t.Errorf("retried POST: %d %q", resp.StatusCode, b)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(bodies) != 2 || bodies[0] != body || bodies[1] != body {
			var sizes []int
			for _, b := range bodies {
				sizes = append(sizes, len(b))
			}
			t.Errorf("the upstream got %d attempts with bodies of %v bytes, want 2 × %d", len(bodies), sizes, len(body))
		}
		wantRelayed(t, sc, goroutines, 1)
	})
}

// 50 streams on one connection to a streaming upstream; the caller resets every other one
// mid-response and reads the rest whole. The rest are intact, every reset reaches the
// upstream, and nothing stays in flight.
func TestFrameRelayManyStreamsHalfResetMidResponseLeakNothing(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var cancelled atomic.Int64
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			chunk := strings.Repeat(r.URL.Path[1:2], 4<<10)
			for i := range 64 { // 256 KiB
				if r.URL.Path[2] == 'r' && i == 4 {
					<-r.Context().Done() // wait for the caller's reset
					cancelled.Add(1)
					return
				}
				if _, err := io.WriteString(w, chunk); err != nil {
					// The reset came while this stream's writes waited for the connection's
					// window, which the 25 whole responses share: the write fails instead.
					if r.URL.Path[2] == 'r' {
						<-r.Context().Done()
						cancelled.Add(1)
					}
					return
				}
				w.(http.Flusher).Flush()
			}
		})
		sc, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))
		c := dialFC(t, base, false)
		c.get("reviews", "/xk", strings.Repeat("x", 256<<10))
		ids := map[uint32]string{}
		for i := range 50 {
			mode := "k"
			if i%2 == 1 {
				mode = "r"
			}
			path := fmt.Sprintf("/%c%s", 'a'+i%26, mode)
			ids[c.open(reqFields("GET", path, "reviews"), true)] = path
		}
		// reset the "r" streams once they have some data
		for id, path := range ids {
			if path[2] != 'r' {
				continue
			}
			st.Eventually(t, 10*time.Second, func() bool {
				c.mu.Lock()
				defer c.mu.Unlock()
				return c.streams[id].body.Len() > 0
			}, "stream %d (%s) got no data", id, path)
			_ = c.reset(id, http2.ErrCodeCancel)
		}
		for id, path := range ids {
			if path[2] != 'k' {
				continue
			}
			r, ok := c.wait(id, 10*time.Second)
			if want := strings.Repeat(path[1:2], 256<<10); !ok || r.rst != nil || r.status != "200" || r.body != want {
				t.Errorf("stream %d (%s): ended=%v status %q reset %v, %d bytes, want 200 and 256 KiB", id, path, ok, r.status, r.rst, len(r.body))
			}
		}
		// CI saw 24 of 25 twice (once per path) before the handler counted a reset that
		// failed a write; a reset that never reaches the upstream leaves its handler waiting.
		st.Eventually(t, 15*time.Second, func() bool { return cancelled.Load() == 25 }, "%d of 25 reset streams were cancelled upstream", cancelled.Load())
		st.Eventually(t, 5*time.Second, func() bool {
			return promValue(t, statsOf(sc), `weft_listener_requests_inflight{listener="outbound_http"}`) == "0"
		}, "requests still in flight after every stream ended")
		c.get("reviews", "/zk", strings.Repeat("z", 256<<10))
		wantRelayed(t, sc, goroutines, 1)
	})
}

// A caller whose connection drops (TCP close) with streams in flight: every upstream
// request is cancelled and nothing stays in flight.
func TestFrameRelayCallerConnectionDroppedCancelsEveryUpstreamRequest(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var entered, cancelled atomic.Int64
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/hang" {
				return
			}
			entered.Add(1)
			<-r.Context().Done()
			cancelled.Add(1)
		})
		sc, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))
		c := dialFC(t, base, false)
		c.get("reviews", "/ok", "")
		for range 10 {
			c.open(reqFields("GET", "/hang", "reviews"), true)
		}
		id := c.open(reqFields("POST", "/hang", "reviews"), false)
		_ = c.data(id, []byte("half a body"), false)
		st.Eventually(t, 5*time.Second, func() bool { return entered.Load() == 11 }, "%d of 11 requests reached the upstream", entered.Load())
		c.conn.Close()
		st.Eventually(t, 5*time.Second, func() bool { return cancelled.Load() == 11 }, "%d of 11 upstream requests cancelled after the caller's connection dropped", cancelled.Load())
		st.Eventually(t, 5*time.Second, func() bool {
			return promValue(t, statsOf(sc), `weft_listener_requests_inflight{listener="outbound_http"}`) == "0"
		}, "requests still in flight after the caller's connection dropped")
		// The max_connections slots come back: the relay's upstream connection ends with
		// the caller's; the goroutine path's shared pool keeps its one.
		cn := st.OutboundClusterName(9080, "", "reviews", "default", "default", "reviews")
		want := 0
		if goroutines {
			want = 1
		}
		st.Eventually(t, 5*time.Second, func() bool {
			open, _, _ := sc.Upstreams.Get(cn).ConnStats()
			return open == want
		}, "the cluster still counts connections held for the dropped caller, want %d", want)
	})
}

// An 8 MiB upload to an upstream that reads slowly: the relay's windows go back as the
// upstream takes the body, and all of it arrives in order.
func TestFrameRelaySlowReadingUpstreamGetsAnEightMiBUploadWhole(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			var n int64
			var bad bool
			buf := make([]byte, 32<<10)
			for {
				k, err := r.Body.Read(buf)
				for _, b := range buf[:k] {
					if b != byte('a'+(n>>16)%26) {
						bad = true
					}
					n++
				}
				if err != nil {
					break
				}
				time.Sleep(200 * time.Microsecond)
			}
			fmt.Fprintf(w, "%d bad=%v", n, bad)
		})
		_, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))
		body := make([]byte, 8<<20)
		for i := range body {
			body[i] = byte('a' + (i>>16)%26)
		}
		req, _ := http.NewRequest(http.MethodPost, base+"/up", bytes.NewReader(body))
		req.Host = "reviews"
		resp, err := rawH2().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := fmt.Sprintf("%d bad=false", len(body)); resp.StatusCode != 200 || string(got) != want {
			t.Errorf("8 MiB upload: %d %q, want %q", resp.StatusCode, got, want)
		}
	})
}

// signalReader closes ch at its first Read and returns EOF.
type signalReader struct {
	ch   chan struct{}
	once sync.Once
}

func (s *signalReader) Read([]byte) (int, error) {
	s.once.Do(func() { close(s.ch) })
	return 0, io.EOF
}

// An upstream that answers a POST before reading its body: the caller gets the whole
// answer, then (on the relay) RST_STREAM(NO_ERROR) telling it to stop sending the rest
// (RFC 9113 §8.1), never an error code; DATA it had in flight does not end the connection,
// which serves the next request.
func TestFrameRelayAnswerBeforeTheRequestEndsStopsTheUploadCleanly(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/early" {
				_, _ = io.WriteString(w, "early")
				return
			}
			_, _ = io.Copy(io.Discard, r.Body)
			_, _ = io.WriteString(w, "late")
		})
		_, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))
		c := dialFC(t, base, true)
		id := c.open(reqFields("POST", "/early", "reviews"), false)
		if err := c.data(id, bytes.Repeat([]byte("a"), 1000), false); err != nil {
			t.Fatal(err)
		}
		r, ok := c.wait(id, 5*time.Second)
		if !ok || r.status != "200" || r.body != "early" {
			t.Fatalf("answer before the request's end: %v (ended %v), want 200 early", r, ok)
		}
		// The caller goes on sending a little more; then the connection carries another request.
		_ = c.data(id, bytes.Repeat([]byte("b"), 1000), false)
		if !goroutines && r.rst != nil && *r.rst != http2.ErrCodeNo {
			t.Errorf("the relay reset the answered stream with %v, want NO_ERROR", *r.rst)
		}
		id2 := c.open(reqFields("POST", "/next", "reviews"), false)
		if err := c.data(id2, []byte("x"), true); err != nil {
			t.Fatal(err)
		}
		if r2, ok := c.wait(id2, 5*time.Second); !ok || r2.status != "200" || r2.body != "late" {
			t.Errorf("the next request on the connection: %v (ended %v), want 200 late", r2, ok)
		}
	})
}
