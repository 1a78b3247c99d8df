package httpproxy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// busyUpstream is an HTTP/2 endpoint that grants the largest windows HTTP/2 allows, reads
// the frames of one GET and then of one upload, and then stops reading, as a backend whose
// reader falls behind does. Its hooks: sawGet when the GET's HEADERS arrived, acked when
// the sidecar acknowledged its SETTINGS (so the sidecar knows the connection takes more
// than one stream and sends the upload on it too), stalled when
// the upload's did (from then on it reads nothing), and answer, which writes a PING and
// then the GET's response, as grpc-go's server sends a BDP PING ahead of a response.
type busyUpstream struct {
	url     string
	sawGet  chan struct{}
	acked   chan struct{}
	stalled chan struct{}
	answer  chan struct{}
	wrote   chan time.Time // when the response's frames were about to be written
}

func startBusyUpstream(t *testing.T) *busyUpstream { return startBusyUpstreamOn(t, "127.0.0.1:0", nil) }

// startBusyUpstreamOn is startBusyUpstream listening on addr, over TLS with cfg unless nil
// (a meshed endpoint: another sidecar's inbound port, mutual TLS, ALPN h2).
func startBusyUpstreamOn(t *testing.T, addr string, cfg *tls.Config) *busyUpstream {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	u := &busyUpstream{url: "http://" + ln.Addr().String(), sawGet: make(chan struct{}), acked: make(chan struct{}), stalled: make(chan struct{}),
		answer: make(chan struct{}), wrote: make(chan time.Time, 1)}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		t.Cleanup(func() { c.Close() })
		_ = c.(*net.TCPConn).SetReadBuffer(64 << 10)
		if cfg != nil {
			tc := tls.Server(c, cfg)
			if err := tc.Handshake(); err != nil {
				t.Errorf("TLS handshake with the sidecar: %v", err)
				return
			}
			c = tc
		}
		if _, err := io.ReadFull(c, make([]byte, len(http2.ClientPreface))); err != nil {
			return
		}
		fr := http2.NewFramer(c, c)
		_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
		_ = fr.WriteWindowUpdate(0, 1<<31-1-65535)
		var get uint32
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					_ = fr.WriteSettingsAck()
				} else {
					close(u.acked)
				}
			case *http2.HeadersFrame:
				if f.StreamEnded() {
					get = f.StreamID
					close(u.sawGet)
					continue
				}
				close(u.stalled) // the upload: read nothing more
				<-u.answer
				var hb bytes.Buffer
				enc := hpack.NewEncoder(&hb)
				_ = enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
				_ = enc.WriteField(hpack.HeaderField{Name: "content-type", Value: "text/plain"})
				_ = fr.WritePing(false, [8]byte{'b', 'd', 'p'})
				time.Sleep(100 * time.Millisecond) // read apart from the response
				u.wrote <- time.Now()
				_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: get, BlockFragment: hb.Bytes(), EndHeaders: true})
				_ = fr.WriteData(get, true, []byte("answered"))
				<-t.Context().Done()
				return
			}
		}
	}()
	return u
}

// Head-of-line blocking across the streams of one upstream connection: the upstream stops
// reading while the sidecar writes an upload to it, then answers another stream on the same
// connection with a PING 100 ms ahead of the response (grpc-go's server pings as it
// receives data, to estimate bandwidth). The response must reach its caller at once; the
// PING's ACK waits for the upstream to read again, as the upload does. Before, both paths
// waited to write the ACK behind the stalled upload, so the response behind the PING was
// not read until the write timeout (10 s) cut the connection and failed it with the rest:
// the frame relay's upstream reader wrote the ACK itself, waiting for the socket; net/http's
// HTTP/2 client writes it from its read loop under the connection's write lock, which the
// upload's writer held while waiting for the socket (golang/go#33425).
func TestUpstreamStalledByAnUploadStillDeliversItsOtherResponses(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		up := startBusyUpstream(t)
		sc, base := relaySidecar(t, goroutines, relayHosts(up.url, "", nil, st.Timeout(120*time.Second)))
		stalledUpstreamHoldsOnlyTheUpload(t, up, base, nil)
		wantRelayed(t, sc, goroutines, 1)
	})
}

// A caller connection whose streams go to two upstreams, one of which stops reading while
// the sidecar writes an upload to it: the other upstream's calls on the same caller
// connection go on. Before, the frame relay's reader of the caller's connection waited for
// the stalled upstream's socket to take the upload, and read nothing more from the caller —
// every stream of the connection waited for the write timeout (10 s) to cut the stalled
// upstream. The upload's bytes now stay with its stream (at most its 256 KiB window) and
// the caller is not given that window back until the upstream reads again.
func TestUpstreamStalledByAnUploadDoesNotHoldTheCallersOtherUpstreams(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		up := startBusyUpstream(t)
		other := h2cBackend(t, func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ratings") })
		snap := relayHosts(up.url, other.URL, nil, st.Timeout(120*time.Second))
		snap.Clusters[1] = st.EDSCluster(st.OutboundClusterName(9080, "", "ratings", "default", "default", "ratings"), h2Upstream(0))
		sc, base := relaySidecar(t, goroutines, snap)
		stalledUpstreamHoldsOnlyTheUpload(t, up, base, func(c *http.Client, uploadDone <-chan struct{}) {
			for i := range 3 {
				req, _ := http.NewRequest(http.MethodGet, base+"/other", nil)
				req.Host = "ratings"
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				resp, err := c.Do(req.WithContext(ctx))
				if err != nil {
					cancel()
					t.Fatalf("call %d to the other upstream, on the caller connection the stalled upload is on: %v", i, err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				cancel()
				if resp.StatusCode != http.StatusOK || string(b) != "ratings" {
					t.Fatalf("call %d to the other upstream got %d %q; want 200 \"ratings\"", i, resp.StatusCode, b)
				}
			}
			select {
			case <-uploadDone:
				t.Fatal("the upload ended before the upstream read it again: its connection was cut")
			default:
			}
		})
		wantRelayed(t, sc, goroutines, 1)
	})
}

// The same with the upstream another sidecar (a meshed endpoint), so the connection is
// mutual TLS: the relay's writes go through crypto/tls, which cannot write without
// waiting, and net/http's client writes TLS records to a socket that never waits.
func TestMeshedUpstreamStalledByAnUploadStillDeliversItsOtherResponses(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		_, callerID, calleeID := webAndCartIDs(t, 0, "")
		cfg := calleeID.ServerConfig()
		cfg.NextProtos = []string{"h2"}
		up := startBusyUpstreamOn(t, meshedAddress(t), cfg)
		cp := st.StartControlPlane(t)
		cp.Set(relayHosts(up.url, "", nil, st.Timeout(120*time.Second)))
		sc := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines, MeshTLS: callerID})
		stalledUpstreamHoldsOnlyTheUpload(t, up, sc.URL(t, st.OutboundListenerName), nil)
		wantRelayed(t, sc, goroutines, 1)
	})
}

// stalledUpstreamHoldsOnlyTheUpload sends a GET and then an upload through the sidecar at
// base to up, lets up stall on the upload and answer the GET behind a PING, and checks the
// GET's response arrives while the upload is still held. meanwhile, unless nil, runs once
// the upload is held, with the caller's client (one connection) and the upload's end.
func stalledUpstreamHoldsOnlyTheUpload(t *testing.T, up *busyUpstream, base string, meanwhile func(c *http.Client, uploadDone <-chan struct{})) {
	{
		c := h2cCaller()
		c.Timeout = 0
		get, _ := http.NewRequest(http.MethodGet, base+"/get", nil)
		get.Host = "reviews"
		got := callAsync(c, get)
		for _, ch := range []chan struct{}{up.sawGet, up.acked} {
			select {
			case <-ch:
			case <-time.After(10 * time.Second):
				t.Fatal("the GET never reached the upstream, or the sidecar never acknowledged its SETTINGS")
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		body := &countingReader{n: 1 << 30}
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/upload", body)
		req.Host = "reviews"
		uploadDone := make(chan struct{})
		var upload callResult
		go func() {
			defer close(uploadDone)
			upload = <-callAsync(c, req)
		}()
		select {
		case <-up.stalled:
		case <-time.After(10 * time.Second):
			t.Fatal("the upload never reached the upstream on the GET's connection")
		}
		// Wait until the upload is held back all the way to the caller: the socket to the
		// upstream, the sidecar's buffers and the windows on the way are full.
		waitStill(t, body.read.Load, "the upload")
		select {
		case <-uploadDone:
			t.Fatalf("the upload ended before the upstream answered anything: %d %q, error %v", upload.code, upload.body, upload.err)
		default:
		}
		if meanwhile != nil {
			meanwhile(c, uploadDone)
		}
		close(up.answer)
		wrote := <-up.wrote
		var r callResult
		select {
		case r = <-got:
		case <-time.After(30 * time.Second):
			t.Fatal("the GET's response was not delivered in 30 s")
		}
		if r.err != nil || r.code != http.StatusOK || r.body != "answered" {
			t.Fatalf("the GET got %d %q (error %v) %v after the upstream wrote its response; want 200 \"answered\": "+
				"the response behind the PING waited for the stalled upload", r.code, r.body, r.err, r.at.Sub(wrote).Round(time.Millisecond))
		}
		t.Logf("the GET's response arrived %v after the upstream wrote it, with %d bytes of the upload held back", r.at.Sub(wrote).Round(time.Microsecond), body.read.Load())
	}
}

// callResult is how a request made in the background ended, and when.
type callResult struct {
	code int
	body string
	err  error
	at   time.Time
}

// callAsync sends req with c in the background; the channel gets how it ended.
func callAsync(c *http.Client, req *http.Request) <-chan callResult {
	done := make(chan callResult, 1)
	go func() {
		resp, err := c.Do(req)
		if err != nil {
			done <- callResult{err: err, at: time.Now()}
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- callResult{code: resp.StatusCode, body: string(b), at: time.Now()}
	}()
	return done
}

// waitStill waits until count has not moved for 300 ms — an upload held back all the way
// to its caller — and fails the test if it still moves after 20 s.
func waitStill(t *testing.T, count func() int64, what string) {
	t.Helper()
	last, still := int64(-1), 0
	for deadline := time.Now().Add(20 * time.Second); still < 3; {
		if time.Now().After(deadline) {
			t.Fatalf("%s kept moving for 20 s (%d bytes) toward an upstream that reads nothing", what, count())
		}
		time.Sleep(100 * time.Millisecond)
		if n := count(); n == last {
			still++
		} else {
			last, still = n, 0
		}
	}
}
