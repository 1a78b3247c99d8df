package httpproxy_test

import (
	"bytes"
	"context"
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
		// 64 KiB the sidecar grants per upstream stream + 32 KiB in the copy buffer + the
		// caller's window + 64 KiB for the upstream server's and the frames' own buffering.
		const bound = 64<<10 + 32<<10 + window + 64<<10
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

// stingyUpstream is an HTTP/2 server written frame by frame that grants its callers only
// the protocol's initial windows and never sends a WINDOW_UPDATE, reading every frame so
// TCP never pushes back. It answers nothing; it counts the DATA it gets and reports a
// stream reset.
type stingyUpstream struct {
	addr string
	data atomic.Int64
	rst  chan http2.ErrCode
}

func startStingyUpstream(t *testing.T) *stingyUpstream {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	u := &stingyUpstream{addr: ln.Addr().String(), rst: make(chan http2.ErrCode, 4)}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { conn.Close() })
			go func() {
				preface := make([]byte, len(http2.ClientPreface))
				if _, err := io.ReadFull(conn, preface); err != nil {
					return
				}
				fr := http2.NewFramer(conn, conn)
				if fr.WriteSettings() != nil {
					return
				}
				for {
					f, err := fr.ReadFrame()
					if err != nil {
						return
					}
					switch f := f.(type) {
					case *http2.SettingsFrame:
						if !f.IsAck() {
							_ = fr.WriteSettingsAck()
						}
					case *http2.PingFrame:
						if !f.IsAck() {
							_ = fr.WritePing(true, f.Data)
						}
					case *http2.DataFrame:
						u.data.Add(int64(len(f.Data())))
					case *http2.RSTStreamFrame:
						u.rst <- f.ErrCode
					}
				}
			}()
		}
	}()
	return u
}

// countingReader is a request body of n bytes that counts what has been read of it.
type countingReader struct {
	n    int64
	read atomic.Int64
}

func (r *countingReader) Read(p []byte) (int, error) {
	left := r.n - r.read.Load()
	if left <= 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), left)]
	for i := range p {
		p[i] = 'u'
	}
	r.read.Add(int64(len(p)))
	return len(p), nil
}

// The other direction: an upstream that never grants window for a caller's upload. The
// sidecar sends it no more than its initial window and stops reading the caller, whose
// client then stops too: the sidecar holds at most the window its h2c server grants a
// caller (net/http's default, 1 MiB per connection) and the upstream client's body buffer.
// When the caller gives up, the upstream stream is reset.
func TestH2UpstreamThatNeverSendsWindowUpdateCannotMakeTheSidecarBuffer(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		up := startStingyUpstream(t)
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{"http://" + up.addr}, nil, h2Upstream(0))
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		body := &countingReader{n: 64 << 20}
		req, _ := http.NewRequest(http.MethodPost, base+"/upload", body)
		req.Host = "reviews"
		req.Header.Set("Content-Type", "application/grpc") // a client-streaming call's shape
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		req = req.WithContext(ctx)
		done := make(chan error, 1)
		go func() {
			resp, err := rawH2().Do(req)
			if err == nil {
				resp.Body.Close()
			}
			done <- err
		}()

		last, still := int64(-1), 0
		for deadline := time.Now().Add(10 * time.Second); still < 5; {
			if time.Now().After(deadline) {
				t.Fatalf("the caller's body kept being read for 10 s (%d bytes): nothing held it back", body.read.Load())
			}
			time.Sleep(100 * time.Millisecond)
			if n := body.read.Load(); n == last && n > 0 {
				still++
			} else {
				last, still = n, 0
			}
		}
		t.Logf("stalled: the caller's client read %d bytes of its body, the upstream got %d", body.read.Load(), up.data.Load())
		const window = 65535
		if got := up.data.Load(); got > window {
			t.Errorf("the sidecar sent %d DATA bytes to an upstream that granted %d", got, window)
		}
		// 1 MiB the sidecar's h2c server grants a caller + the upstream's window + 512 KiB
		// for the body buffers of the sidecar's upstream client and of the caller's client
		// (seen: 1 MiB + 64 KiB + 16 KiB).
		const bound = 1<<20 + window + 512<<10
		if n := body.read.Load(); n > bound {
			t.Errorf("the caller sent %d bytes into a stalled stream; the sidecar may hold at most %d", n, bound)
		}
		select {
		case err := <-done:
			t.Fatalf("the call ended (%v) while the upload was stalled", err)
		default:
		}

		cancel() // the caller gives up: RST_STREAM(CANCEL) to the sidecar
		select {
		case <-up.rst:
		case <-time.After(5 * time.Second):
			t.Fatal("the caller reset its stalled upload, but the upstream stream was not reset within 5 s")
		}
	})
}
