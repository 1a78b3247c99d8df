package httpproxy_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpupv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/httpproxy"
	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// Stated bounds of the HTTP/2 paths that need a caller or an upstream to misbehave for
// seconds: the request bodies one relayed connection keeps for retries, and a caller that
// stops reading its responses.

// Six concurrent POSTs of 900 KiB on one connection, each answered 503 on its first attempt
// once all six bodies are upstream, under a route retrying 5xx. The relay keeps request
// bodies for retries up to 1 MiB per stream but 4 MiB per connection: at most four whole
// bodies are kept, so at most four requests are sent again (with the whole body) and the
// others get the upstream's 503; none is sent again with a partial body. The goroutine path
// bounds a kept body per request only (1 MiB): every request is retried there.
func TestFrameRelayKeepsAtMostFourMiBOfBodiesForRetriesPerConnection(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		const calls, size = 6, 900 << 10
		var mu sync.Mutex
		attempts := map[string][]int{} // path → body sizes seen, in order
		allIn := make(chan struct{})
		var firsts atomic.Int64
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			mu.Lock()
			attempts[r.URL.Path] = append(attempts[r.URL.Path], len(b))
			first := len(attempts[r.URL.Path]) == 1
			want := bytes.Equal(b, retryBody(r.URL.Path, size))
			mu.Unlock()
			if !want {
				http.Error(w, "body differs", http.StatusBadRequest)
				return
			}
			if first {
				// Answer only once every first attempt's body is upstream, so the relay
				// holds all six at once.
				if firsts.Add(1) == calls {
					close(allIn)
				}
				select {
				case <-allIn:
				case <-time.After(5 * time.Second):
				}
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			_, _ = io.WriteString(w, "second")
		})
		snap := relayHosts(be.URL, "", nil, st.Retries("5xx", 1, 0))
		// Envoy's default allows 3 concurrent retries per cluster; raised so only the
		// kept bodies bound them.
		snap.Clusters[0].(*clusterv3.Cluster).CircuitBreakers = &clusterv3.CircuitBreakers{
			Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{MaxRetries: wrapperspb.UInt32(100)}}}
		sc, base := relaySidecar(t, goroutines, snap)
		client := rawH2() // one connection carries all six
		statuses := make([]int, calls)
		var wg sync.WaitGroup
		for i := range calls {
			wg.Go(func() {
				p := fmt.Sprintf("/k%d", i)
				req, _ := http.NewRequest(http.MethodPost, base+p, bytes.NewReader(retryBody(p, size)))
				req.Host = "reviews"
				resp, err := client.Do(req)
				if err != nil {
					t.Errorf("%s: %v", p, err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				statuses[i] = resp.StatusCode
			})
		}
		wg.Wait()
		retried := 0
		mu.Lock()
		defer mu.Unlock()
		for i := range calls {
			p := fmt.Sprintf("/k%d", i)
			seen := attempts[p]
			switch {
			case len(seen) == 2 && statuses[i] == 200:
				retried++
			case len(seen) == 1 && statuses[i] == 503:
			default:
				t.Errorf("%s: caller got %d, upstream saw bodies of %v bytes; want 200 after two whole attempts, or 503 after one", p, statuses[i], seen)
			}
			for _, n := range seen {
				if n != size {
					t.Errorf("%s: an attempt carried %d bytes of the %d-byte body", p, n, size)
				}
			}
		}
		if goroutines {
			if retried != calls {
				t.Errorf("goroutine path: %d of %d requests retried, want all (it bounds kept bodies per request only)", retried, calls)
			}
			return
		}
		wantRelayed(t, sc, goroutines, 1)
		if retried > 4 || retried == 0 {
			t.Errorf("relay: %d of %d requests of %d KiB retried on one connection; want 1 to 4 (4 MiB kept per connection)", retried, calls, size>>10)
		}
		t.Logf("relay: %d of %d retried", retried, calls)
	})
}

// retryBody is the body of path's request: distinct per path, so a body sent to the wrong
// stream or cut short is seen.
func retryBody(path string, size int) []byte {
	return bytes.Repeat([]byte(path+"-"), size/(len(path)+1)+1)[:size]
}

// A caller that asks for a large response, grants window for all of it and then stops
// reading: once the sidecar's writes to it have made no progress for the write timeout
// (10 s), the connection is cut and the upstream's response stream is reset, on both
// paths, instead of the sidecar holding the connection (and the upstream's stream) forever.
func TestFrameRelayCallerThatStopsReadingIsCutAfterTheWriteTimeout(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		upstreamErr := make(chan error, 1)
		var written atomic.Int64
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			chunk := bytes.Repeat([]byte("z"), 64<<10)
			for range 1024 { // 64 MiB, far more than socket buffers hold
				n, err := w.Write(chunk)
				written.Add(int64(n))
				if err != nil {
					upstreamErr <- err
					return
				}
			}
			upstreamErr <- nil
		})
		_, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))
		conn, err := net.DialTimeout("tcp", st.HostPort(base), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.(*net.TCPConn).SetReadBuffer(64 << 10)
		fr := http2.NewFramer(conn, conn)
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		for _, f := range reqFields("GET", "/endless", "reviews") {
			_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		_, _ = io.WriteString(conn, http2.ClientPreface)
		_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
		_ = fr.WriteWindowUpdate(0, 1<<31-1-65535)
		_ = fr.WriteSettingsAck() // for the sidecar's SETTINGS, never read
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		// Read nothing. The upstream's writes stop when the socket buffers on the way and
		// the sidecar's windows are full.
		start := time.Now()
		var upErr error
		select {
		case upErr = <-upstreamErr:
		case <-time.After(25 * time.Second):
			t.Fatalf("the upstream was still blocked writing 25 s after the caller stopped reading (%d bytes written): the sidecar never cut the stalled caller", written.Load())
		}
		took := time.Since(start)
		if upErr == nil {
			t.Fatalf("the upstream wrote all %d bytes to a caller that reads nothing: something buffered it all", written.Load())
		}
		if took < 8*time.Second {
			t.Errorf("the upstream's stream ended after %v, before the 10 s write timeout could have passed", took)
		}
		t.Logf("upstream write failed after %v (%d bytes written): %v", took.Round(time.Millisecond), written.Load(), upErr)
		// What is buffered for the caller is bounded, and then the connection ends.
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := io.Copy(io.Discard, conn)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("the caller's connection was still open after the upstream's stream ended (read %d bytes, then nothing for 10 s)", n)
		}
		if n > 32<<20 {
			t.Errorf("the caller could still read %d bytes after it stalled", n)
		}
	})
}

// stalledH2Upstream is an HTTP/2 endpoint that grants the largest windows HTTP/2 allows and
// then reads nothing: a peer whose process hangs, or whose receive queue never drains. Its
// accepted connections arrive on the channel.
func stalledH2Upstream(t *testing.T) (string, <-chan net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	conns := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			_ = c.(*net.TCPConn).SetReadBuffer(64 << 10)
			fr := http2.NewFramer(c, nil)
			_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
			_ = fr.WriteSettingsAck() // for the client's SETTINGS, never read
			_ = fr.WriteWindowUpdate(0, 1<<31-1-65535)
			conns <- c
		}
	}()
	return "http://" + ln.Addr().String(), conns
}

// uploadToStalledSize is far more than the socket buffers on the way hold.
const uploadToStalledSize = 256 << 20

// uploadToStalledUpstream starts a sidecar in front of stalledH2Upstream and POSTs
// uploadToStalledSize bytes through it in the background: the body (its count of bytes
// read), how the request ends, and the upstream's end of the connection.
func uploadToStalledUpstream(t *testing.T, goroutines bool) (*countingReader, <-chan callResult, net.Conn) {
	t.Helper()
	url, accepted := stalledH2Upstream(t)
	_, base := relaySidecar(t, goroutines, relayHosts(url, "", nil, st.Timeout(120*time.Second)))
	body := &countingReader{n: uploadToStalledSize}
	req, _ := http.NewRequest(http.MethodPost, base+"/upload", body)
	req.Host = "reviews"
	c := h2cCaller()
	c.Timeout = 0
	done := callAsync(c, req)
	select {
	case up := <-accepted:
		return body, done, up
	case <-time.After(10 * time.Second):
		t.Fatal("the sidecar never connected to the upstream")
		return nil, nil, nil
	}
}

// An upstream that stops reading while the sidecar writes a request body to it. Its
// connection is cut once it has taken nothing for the write timeout (10 s), as a caller's is
// (TestFrameRelayCallerThatStopsReadingIsCutAfterTheWriteTimeout): the caller's request
// ends, and the connection — with every stream on it, and its max_connections slot — is not
// held for as long as the route timeout allows or, without one, forever. Before, net/http's
// HTTP/2 client connections on the goroutine path had no write timeout: the request waited
// for the route timeout and the connection stayed stuck in write(2).
func TestUpstreamThatStopsReadingIsCutAfterTheWriteTimeout(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		start := time.Now()
		_, done, up := uploadToStalledUpstream(t, goroutines)
		const size = uploadToStalledSize
		var r callResult
		select {
		case r = <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("the caller's request was still open 30 s after the upstream stopped reading: the stalled upstream connection was never cut")
		}
		took := time.Since(start)
		if r.err == nil && r.code == http.StatusOK {
			t.Fatalf("the request succeeded although the upstream read nothing")
		}
		if took < 8*time.Second {
			t.Errorf("the request ended after %v (%d, %v), before the 10 s write timeout could have passed", took, r.code, r.err)
		}
		// Nothing came back before the cut, so the caller is told why (Envoy's words).
		if r.err == nil && (r.code != http.StatusServiceUnavailable || !strings.Contains(r.body, "reset before headers. reset reason: connection termination")) {
			t.Errorf("the caller got %d %q; want 503 saying the upstream connection ended before headers", r.code, r.body)
		}
		t.Logf("the request ended after %v: status %d %q, error %v", took.Round(time.Millisecond), r.code, r.body, r.err)
		// The sidecar closed the upstream connection: reading it now gives what was
		// buffered, then its end, far short of the whole body.
		_ = up.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := io.Copy(io.Discard, up)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("the upstream connection was still open after the request ended (read %d bytes, then nothing for 10 s)", n)
		}
		if n >= size {
			t.Errorf("the upstream could read the whole body (%d bytes) after the cut", n)
		}
	})
}

// An upstream that stops reading during an upload and then resets its connection: the
// sidecar's writer waiting for that socket (the relay's finish goroutine, FlushBehind's
// flusher on the goroutine path) sees the reset at once, and the caller is told the
// upstream connection ended — now, not when the 10 s write timeout would have cut it.
func TestUpstreamResetDuringAStalledUploadEndsTheRequestAtOnce(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		body, done, up := uploadToStalledUpstream(t, goroutines)
		// Wait until the upload stops moving: the socket toward the upstream is full and
		// the sidecar's writer waits for it.
		waitStill(t, body.read.Load, "the upload")
		select {
		case r := <-done:
			t.Fatalf("the upload ended before the upstream reset: %d %q, error %v", r.code, r.body, r.err)
		default:
		}
		writers := []string{"httpproxy.(*frameOut).finish", "upstream.(*FlushBehind).flush("}
		if goroutineIn(writers...) == "" {
			t.Fatal("no writer waits for the full socket toward the upstream")
		}
		_ = up.(*net.TCPConn).SetLinger(0) // close with RST
		_ = up.Close()
		reset := time.Now()
		var r callResult
		select {
		case r = <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the request was still open 5 s after the upstream reset its connection: the writer waiting for the socket did not see the reset")
		}
		if r.err == nil && (r.code != http.StatusServiceUnavailable || !strings.Contains(r.body, "reset before headers")) {
			t.Errorf("the caller got %d %q; want 503 saying the upstream connection was reset before headers", r.code, r.body)
		}
		t.Logf("the request ended %v after the reset (%d bytes of the body read): status %d %q, error %v",
			r.at.Sub(reset).Round(time.Millisecond), body.read.Load(), r.code, r.body, r.err)
		// And the writer that waited for the socket has ended: it is not left in write(2)
		// until the write timeout, or forever.
		var stuck string
		for deadline := time.Now().Add(3 * time.Second); ; {
			if stuck = goroutineIn(writers...); stuck == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("3 s after the reset a writer still waits:\n%s", stuck)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// goroutineIn returns the stack of a goroutine of this process running any of funcs ("" if
// none does).
func goroutineIn(funcs ...string) string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, fn := range funcs {
			if strings.Contains(g, fn) {
				return g
			}
		}
	}
	return ""
}

// connTracker is an HTTP/2 backend answering its name, which reports how many connections
// it has open.
type connTracker struct {
	url  string
	open atomic.Int64
}

func trackedBackend(t *testing.T, name string) *connTracker {
	ct := &connTracker{}
	be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, name) },
		func(s *http.Server) {
			s.ConnState = func(_ net.Conn, cs http.ConnState) {
				switch cs {
				case http.StateNew:
					ct.open.Add(1)
				case http.StateClosed, http.StateHijacked:
					ct.open.Add(-1)
				}
			}
		})
	ct.url = be.URL
	return ct
}

// An HTTP/2 upstream connection whose endpoint leaves the cluster (its pod is gone) is
// closed once its streams have ended, though the caller's connection stays: on the relay
// at its next sweep, on the goroutine path at the update. Before, the relay held it as
// long as the caller's connection lived (for a gRPC channel, hours), to a pod that may
// never answer again.
func TestFrameRelayConnectionToAnEndpointThatLeftIsClosed(t *testing.T) {
	t.Cleanup(httpproxy.SetHostSweep(100 * time.Millisecond))
	bothPaths(t, func(t *testing.T, goroutines bool) {
		a, b := trackedBackend(t, "a"), trackedBackend(t, "b")
		cp := st.StartControlPlane(t)
		cp.Set(relayHosts(a.url, "", nil))
		sc := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
		c := dialFC(t, sc.URL(t, st.OutboundListenerName), true)
		c.get("reviews", "/", "a")
		if n := a.open.Load(); n != 1 {
			t.Fatalf("endpoint a has %d connections after one call, want 1", n)
		}
		cp.Set(relayHosts(b.url, "", nil)) // a's pod is gone; b took its place
		deadline := time.Now().Add(10 * time.Second)
		for {
			id := c.open(reqFields("GET", "/", "reviews"), true)
			r, ok := c.wait(id, 5*time.Second)
			if ok && r.body == "b" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("calls still went to a 10 s after the update: %v", r)
			}
			time.Sleep(20 * time.Millisecond)
		}
		for a.open.Load() != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("the sidecar still holds %d connection(s) to endpoint a, which left the cluster, 10 s after the update; the caller's connection is open", a.open.Load())
			}
			time.Sleep(20 * time.Millisecond)
		}
		c.get("reviews", "/", "b") // the caller's connection goes on
		wantRelayed(t, sc, goroutines, 1)
	})
}

// An idle HTTP/2 upstream connection closes after the cluster's idle timeout
// (common_http_protocol_options.idle_timeout) while the caller's connection stays open.
func TestFrameRelayIdleUpstreamConnectionClosesAtTheClustersIdleTimeout(t *testing.T) {
	t.Cleanup(httpproxy.SetHostSweep(100 * time.Millisecond))
	bothPaths(t, func(t *testing.T, goroutines bool) {
		a := trackedBackend(t, "a")
		snap := relayHosts(a.url, "", nil)
		cl := snap.Clusters[0].(*clusterv3.Cluster)
		po := &httpupv3.HttpProtocolOptions{}
		if err := cl.TypedExtensionProtocolOptions[contract.HTTPProtocolOptionsKey].UnmarshalTo(po); err != nil {
			t.Fatal(err)
		}
		po.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(300 * time.Millisecond)}
		cl.TypedExtensionProtocolOptions[contract.HTTPProtocolOptionsKey], _ = anypb.New(po)
		sc, base := relaySidecar(t, goroutines, snap)
		c := dialFC(t, base, true)
		c.get("reviews", "/", "a")
		start := time.Now()
		for a.open.Load() != 0 {
			if time.Since(start) > 5*time.Second {
				t.Fatalf("an upstream connection idle for 5 s is still open; the cluster's idle timeout is 300 ms")
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("closed %v after the call", time.Since(start).Round(10*time.Millisecond))
		c.get("reviews", "/", "a") // a new one is dialled for the next call
		wantRelayed(t, sc, goroutines, 1)
	})
}
