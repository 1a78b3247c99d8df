package httpproxy_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// Slow consumers must not starve the other streams of a caller's connection. Several
// uploads on one caller connection go to an upstream whose handler reads nothing (a
// client-streaming RPC whose server is behind: per-stream back-pressure, not a fault),
// and a request with a body then goes, on the same connection, to another upstream. It
// must be answered while the uploads stay held. Before, the relay gave the caller back
// connection window only for bytes that went upstream, so four held uploads (each up to
// its 256 KiB stream window) used up the connection's 1 MiB and no other stream on it
// could send a byte of body until the slow handler read; on the goroutine path one did
// (net/http's server: 1 MiB per stream and per connection). The connection windows now
// hold every stream's window at once (frames.go, frameConnWindow).
func TestHeldUploadsDoNotStarveTheCallerConnectionsOtherStreams(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		release := make(chan struct{})
		slow := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
			_, _ = io.Copy(io.Discard, r.Body)
			_, _ = io.WriteString(w, "slow")
		})
		t.Cleanup(func() { close(release) })
		fast := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			n, _ := io.Copy(io.Discard, r.Body)
			_, _ = fmt.Fprintf(w, "fast %d", n)
		})
		snap := relayHosts(slow.URL, fast.URL, nil, st.Timeout(120*time.Second))
		snap.Clusters[1] = st.EDSCluster(st.OutboundClusterName(9080, "", "ratings", "default", "default", "ratings"), h2Upstream(0))
		sc, base := relaySidecar(t, goroutines, snap)
		c := h2cCaller()
		c.Timeout = 0
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		// 60 held streams: past the 16 that use up a 1 MiB connection window at Envoy's
		// 64 KiB stream window, within the 100 a connection may carry.
		const uploads = 60
		bodies := make([]*countingReader, uploads)
		for i := range bodies {
			bodies[i] = &countingReader{n: 64 << 20}
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/upload", bodies[i])
			req.Host = "reviews"
			go func() {
				if resp, err := c.Do(req); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}()
		}
		// Wait until every upload is held.
		total := func() (n int64) {
			for _, b := range bodies {
				n += b.read.Load()
			}
			return n
		}
		waitStill(t, total, "the uploads")
		for i, b := range bodies {
			if b.read.Load() == 0 {
				t.Fatalf("upload %d never started", i)
			}
		}
		const size = 256 << 10
		req, _ := http.NewRequest(http.MethodPost, base+"/other", strings.NewReader(strings.Repeat("x", size)))
		req.Host = "ratings"
		rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer rcancel()
		resp, err := c.Do(req.WithContext(rctx))
		if err != nil {
			t.Fatalf("a POST to another upstream, on the connection the held uploads are on: %v (%d bytes of uploads held)", err, total())
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(b) != fmt.Sprintf("fast %d", size) {
			t.Fatalf("the POST to the other upstream got %d %q; want 200 \"fast %d\"", resp.StatusCode, b, size)
		}
		t.Logf("answered with %d bytes of uploads held by the slow handler's streams", total())
		wantRelayed(t, sc, goroutines, 1)
	})
}

// The response direction: streaming responses the caller does not read (a server-streaming
// RPC whose client is behind) must not starve the other streams of the upstream connection
// they share. Several such streams and then a small GET go, on one caller connection, to
// one upstream; the GET must be answered. Before, the sidecar granted the upstream 256 KiB
// per stream and 1 MiB per connection and returned connection window only for what the
// caller took, so four held responses stalled every other response on the upstream
// connection — on the goroutine path a connection shared by every caller of the endpoint.
func TestUnreadResponsesDoNotStarveTheUpstreamConnectionsOtherStreams(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		unreadResponsesThenAGet(t, goroutines, 0, 1, 8)
	})
}

// A cluster may allow more streams per upstream connection than the default 100
// (http2_protocol_options.max_concurrent_streams): the window granted a connection must
// hold that many streams' windows, or more than 100 unread responses on it stall the rest.
// Two caller connections (a caller connection carries at most 100 streams) hold 120
// between them; on the goroutine path they share one upstream connection. Before, its
// window was fixed at 100 × 64 KiB and the GET stalled.
func TestUnreadResponsesPastOneHundredDoNotStarveAClusterAllowingMoreStreams(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		unreadResponsesThenAGet(t, goroutines, 200, 2, 60)
	})
}

// unreadResponsesThenAGet opens perCaller streaming GETs on each of callers h2c
// connections to one upstream (whose cluster allows maxStreams per connection; 0 the
// default) and reads none of them, then sends a small GET on the last connection, which
// must be answered.
func unreadResponsesThenAGet(t *testing.T, goroutines bool, maxStreams uint32, callers, perCaller int) {
	be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/stream" {
			_, _ = io.WriteString(w, "small")
			return
		}
		chunk := strings.Repeat("s", 16<<10)
		for range 1024 { // 16 MiB, past every window on the way
			if _, err := io.WriteString(w, chunk); err != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	})
	snap, _ := oneBackend([]string{be.URL}, []st.RouteOption{st.Timeout(120 * time.Second)}, h2Upstream(maxStreams))
	sc, base := relaySidecar(t, goroutines, snap)
	var c *http.Client
	for range callers {
		c = h2cCaller()
		c.Timeout = 0
		// The caller's windows are small too, so every window on the way fills within
		// the wait below (Go's client takes 4 MiB per stream by default).
		c.Transport.(*http.Transport).HTTP2 = &http.HTTP2Config{MaxReceiveBufferPerStream: 64 << 10}
		for i := range perCaller {
			ctx, cancel := context.WithCancel(t.Context())
			stalled := time.AfterFunc(10*time.Second, cancel) // its headers, not its body
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/stream", nil)
			req.Host = "reviews"
			resp, err := c.Do(req)
			if !stalled.Stop() || err != nil {
				cancel()
				t.Fatalf("streaming GET %d: %v", i, err)
			}
			t.Cleanup(func() { resp.Body.Close(); cancel() }) // read nothing of it
		}
	}
	time.Sleep(500 * time.Millisecond) // the windows on the way fill
	req, _ := http.NewRequest(http.MethodGet, base+"/small", nil)
	req.Host = "reviews"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatalf("a GET to the upstream %d unread responses are on: %v", callers*perCaller, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || string(b) != "small" {
		t.Fatalf("the GET got %d %q (%v); want 200 \"small\"", resp.StatusCode, b, err)
	}
	wantRelayed(t, sc, goroutines, int64(callers))
}
