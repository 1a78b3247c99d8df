package httpproxy_test

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// Both HTTP/2 hops write through upstream.FlushBehind, which queues frames for a
// goroutine to write: these tests pin what must not change under it (resets both ways,
// flow control toward a caller that stops granting window, the bound on what the sidecar
// holds for it).

// An upstream that resets a stream mid-body (RST_STREAM) must not look to the caller like
// a response that ended: the sidecar resets the caller's stream too.
func TestH2UpstreamResetMidBodyResetsTheCallersStream(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.WriteString(w, "first part;")
			w.(http.Flusher).Flush()
			time.Sleep(50 * time.Millisecond)
			panic(http.ErrAbortHandler) // RST_STREAM(INTERNAL_ERROR) to the sidecar
		})
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{be.URL}, nil, h2Upstream(0))
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		req, _ := http.NewRequest(http.MethodGet, base+"/reset", nil)
		req.Host = "reviews"
		resp, err := rawH2().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		got, err := io.ReadAll(resp.Body)
		if string(got) != "first part;" {
			t.Errorf("the caller got %q before the reset, want the part the upstream sent", got)
		}
		if err == nil || !strings.Contains(err.Error(), "stream error") {
			t.Fatalf("the upstream reset its stream mid-body; the caller's body ended with %v, want a stream error (RST_STREAM)", err)
		}
	})
}

// rawCaller is an HTTP/2 caller written frame by frame: it grants the sidecar only the
// protocol's initial windows (64 KiB - 1 per stream and per connection) and never sends a
// WINDOW_UPDATE, while reading every frame the sidecar sends, so TCP never pushes back:
// only HTTP/2 flow control can stop the sidecar.
type rawCaller struct {
	conn net.Conn
	fr   *http2.Framer
	data atomic.Int64 // DATA payload bytes received on stream 1
	rst  chan http2.ErrCode
}

func dialRawCaller(t *testing.T, base, path string) *rawCaller {
	t.Helper()
	conn, err := net.Dial("tcp", st.HostPort(base))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &rawCaller{conn: conn, fr: http2.NewFramer(conn, conn), rst: make(chan http2.ErrCode, 1)}
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":path", path}, {":authority", "reviews"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			f, err := c.fr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					_ = c.fr.WriteSettingsAck() // only this goroutine writes after the start
				}
			case *http2.DataFrame:
				if f.StreamID == 1 {
					c.data.Add(int64(len(f.Data())))
				}
			case *http2.RSTStreamFrame:
				c.rst <- f.ErrCode
			}
		}
	}()
	return c
}

// A caller that stops granting window must not make the sidecar read the upstream's
// response without bound: the sidecar sends the caller no more than its window, and the
// upstream can write no more than the sidecar's per-stream window to it (256 KiB), the
// handler's copy buffer (32 KiB) and the caller's window before its writes block. When the
// caller then goes away, the upstream stream is reset.
func TestH2CallerThatNeverSendsWindowUpdateCannotMakeTheSidecarBuffer(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var written atomic.Int64
		ended := make(chan error, 1)
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			chunk := bytes.Repeat([]byte("z"), 16<<10)
			for range 1024 { // 16 MiB, far past every window on the way
				if _, err := w.Write(chunk); err != nil {
					ended <- err
					return
				}
				written.Add(int64(len(chunk)))
				w.(http.Flusher).Flush()
			}
			ended <- nil
		})
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{be.URL}, nil, h2Upstream(0))
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		c := dialRawCaller(t, base, "/stream")

		// Wait for the upstream to stall: its count stops moving.
		last, still := int64(-1), 0
		for deadline := time.Now().Add(10 * time.Second); still < 5; {
			if time.Now().After(deadline) {
				t.Fatalf("the upstream kept writing for 10 s (%d bytes): nothing held it back", written.Load())
			}
			time.Sleep(100 * time.Millisecond)
			if n := written.Load(); n == last && n > 0 {
				still++
			} else {
				last, still = n, 0
			}
		}
		t.Logf("stalled: the upstream wrote %d bytes, the caller got %d", written.Load(), c.data.Load())
		const window = 65535 // the caller's initial stream and connection windows
		if got := c.data.Load(); got > window {
			t.Errorf("the sidecar sent %d DATA bytes to a caller that granted %d", got, window)
		}
		// 256 KiB the sidecar grants per upstream stream + 32 KiB in the copy buffer + the
		// caller's window + 64 KiB for the upstream server's and the frames' own buffering.
		const bound = 256<<10 + 32<<10 + window + 64<<10
		if n := written.Load(); n > bound {
			t.Errorf("the upstream wrote %d bytes for a stalled caller; the sidecar may hold at most %d", n, bound)
		}
		select {
		case err := <-ended:
			t.Fatalf("the upstream's writes ended (%v) while the caller was still connected", err)
		default:
		}

		c.conn.Close()
		select {
		case err := <-ended:
			if err == nil {
				t.Error("the upstream wrote its whole 16 MiB to a caller that had gone")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the caller hung up, but the upstream's stalled stream was not reset within 5 s")
		}
	})
}
