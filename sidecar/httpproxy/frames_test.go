package httpproxy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// Adversarial tests of the HTTP/2 frame relay (frames.go): real sockets on 127.0.0.1.
// With the event loop an h2c connection whose first request goes to an HTTP/2 cluster on a
// loop-safe route is relayed frame by frame; with a goroutine per connection net/http's
// HTTP/2 server serves it. Where the behaviour must be the same, bothPaths runs both.

const (
	relayedMetric = "weft_listener_frame_relay_connections_total"
	refusedMetric = "weft_listener_frame_relay_refused_total"
)

// relayHosts routes "reviews" to an HTTP/2 cluster (relay-able) at h2URL and, when h1URL
// is set, "ratings" to an HTTP/1 cluster (not relay-able) at h1URL. A nil listener is the
// default outbound listener.
func relayHosts(h2URL, h1URL string, l *listenerv3.Listener, ropts ...st.RouteOption) st.Snapshot {
	cn := st.OutboundClusterName(9080, "", "reviews", "default", "default", "reviews")
	rt := st.Route("default/reviews/0/0", append([]st.RouteOption{st.Prefix("/"), st.To(cn)}, ropts...)...)
	vhs := []*routev3.VirtualHost{st.VirtualHost("default/reviews", "reviews", "default", []int{9080}, rt)}
	clusters := []types.Resource{st.EDSCluster(cn, h2Upstream(0))}
	eps := []types.Resource{st.Endpoints(cn, st.Endpoint{Addr: st.HostPort(h2URL)})}
	if h1URL != "" {
		cn1 := st.OutboundClusterName(9080, "", "ratings", "default", "default", "ratings")
		rt1 := st.Route("default/ratings/0/0", st.Prefix("/"), st.To(cn1))
		vhs = append(vhs, st.VirtualHost("default/ratings", "ratings", "default", []int{9080}, rt1))
		clusters = append(clusters, st.EDSCluster(cn1))
		eps = append(eps, st.Endpoints(cn1, st.Endpoint{Addr: st.HostPort(h1URL)}))
	}
	if l == nil {
		l = st.OutboundListener()
	}
	return st.Snapshot{
		Listeners: []types.Resource{l},
		Routes:    []types.Resource{st.RouteConfig(vhs...)},
		Clusters:  clusters,
		Endpoints: eps,
	}
}

// echoHandler answers "<method> <path> body=<body>" and counts the requests it saw.
func echoHandler(n *atomic.Int64) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if n != nil {
			n.Add(1)
		}
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, "body: "+err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Proto", r.Proto)
		fmt.Fprintf(w, "%s %s body=%s", r.Method, r.URL.Path, b)
	}
}

// relaySidecar starts a control plane with snap and a sidecar on the given path, and
// returns the sidecar and its outbound listener's URL.
func relaySidecar(t *testing.T, goroutines bool, snap st.Snapshot) (*st.Sidecar, string) {
	t.Helper()
	cp := st.StartControlPlane(t)
	cp.Set(snap)
	sc := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
	return sc, sc.URL(t, st.OutboundListenerName)
}

// wantRelayed asserts how many connections the relay took: at least one with the event
// loop (exactly want when want > 0), none with goroutines.
func wantRelayed(t *testing.T, sc *st.Sidecar, goroutines bool, want int64) {
	t.Helper()
	n := statValue(t, sc, relayedMetric)
	switch {
	case goroutines && n != 0:
		t.Errorf("%s = %d with a goroutine per connection, want 0 (net/http serves h2c)", relayedMetric, n)
	case !goroutines && want > 0 && n != want:
		t.Errorf("%s = %d, want %d", relayedMetric, n, want)
	case !goroutines && want == 0 && n != 0:
		t.Errorf("%s = %d, want 0 (the connection should have been handed to net/http)", relayedMetric, n)
	}
}

// fc is a hand-written HTTP/2 caller (a raw framer): it sends what it is told, however
// malformed, grants window for everything it receives, and records per stream what the
// sidecar answered.
type fc struct {
	t    *testing.T
	conn net.Conn
	fr   *http2.Framer
	wmu  sync.Mutex
	enc  *hpack.Encoder
	hb   bytes.Buffer
	next uint32

	mu        sync.Mutex
	streams   map[uint32]*fcStream
	settings  map[http2.SettingID]uint32
	goaway    *http2.GoAwayFrame
	gotGoaway chan struct{}
	goaways   []http2.GoAwayFrame // every GOAWAY received, in order
	pingAcks  chan [8]byte
	gone      chan struct{} // the reader ended: the connection is closed
	readErr   error
}

type fcStream struct {
	status   string
	fields   []hpack.HeaderField
	body     bytes.Buffer
	trailers []hpack.HeaderField
	rst      *http2.ErrCode
	ended    bool
	done     chan struct{}
}

// dialFC connects to the sidecar and sends the preface and SETTINGS. With ackFirst it
// reads the sidecar's SETTINGS and ACKs them before returning; otherwise the ACK goes out
// when the reader sees them (after whatever the test sends first).
func dialFC(t *testing.T, base string, ackFirst bool) *fc {
	t.Helper()
	return dialFCWith(t, base, ackFirst, nil, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
}

// dialFCWith is dialFC with the caller's SETTINGS given, and before, frames written after
// the SETTINGS (before anything is read).
func dialFCWith(t *testing.T, base string, ackFirst bool, before func(*http2.Framer), settings ...http2.Setting) *fc {
	t.Helper()
	conn, err := net.DialTimeout("tcp", st.HostPort(base), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &fc{t: t, conn: conn, fr: http2.NewFramer(conn, conn), next: 1, streams: map[uint32]*fcStream{},
		settings: map[http2.SettingID]uint32{}, gotGoaway: make(chan struct{}), gone: make(chan struct{}), pingAcks: make(chan [8]byte, 16)}
	table := uint32(4096)
	for _, st := range settings {
		if st.ID == http2.SettingHeaderTableSize {
			table = st.Val
		}
	}
	c.fr.ReadMetaHeaders = hpack.NewDecoder(table, nil)
	c.fr.MaxHeaderListSize = 1 << 20
	c.enc = hpack.NewEncoder(&c.hb)
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteSettings(settings...); err != nil {
		t.Fatal(err)
	}
	if err := c.fr.WriteWindowUpdate(0, 16<<20); err != nil {
		t.Fatal(err)
	}
	if before != nil {
		before(c.fr)
	}
	if ackFirst {
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		f, err := c.fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading the sidecar's SETTINGS: %v", err)
		}
		sf, ok := f.(*http2.SettingsFrame)
		if !ok || sf.IsAck() {
			t.Fatalf("the sidecar's first frame is %v, want SETTINGS", f)
		}
		_ = sf.ForeachSetting(func(s http2.Setting) error { c.settings[s.ID] = s.Val; return nil })
		_ = conn.SetReadDeadline(time.Time{})
		if err := c.fr.WriteSettingsAck(); err != nil {
			t.Fatal(err)
		}
	}
	go c.read()
	return c
}

func (c *fc) read() {
	defer close(c.gone)
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) { // a header block our side cannot take: record it as a reset
				c.mu.Lock()
				if s := c.streams[se.StreamID]; s != nil && !s.ended {
					code := se.Code
					s.rst, s.ended = &code, true
					close(s.done)
				}
				c.mu.Unlock()
				continue
			}
			c.mu.Lock()
			c.readErr = err
			c.mu.Unlock()
			return
		}
		c.mu.Lock()
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = f.ForeachSetting(func(s http2.Setting) error { c.settings[s.ID] = s.Val; return nil })
				c.mu.Unlock()
				c.write(func() error { return c.fr.WriteSettingsAck() })
				continue
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				d := f.Data
				c.mu.Unlock()
				c.write(func() error { return c.fr.WritePing(true, d) })
				continue
			}
			select {
			case c.pingAcks <- f.Data:
			default:
			}
		case *http2.GoAwayFrame:
			c.t.Logf("GOAWAY from the sidecar: last stream %d, %v, %q", f.LastStreamID, f.ErrCode, f.DebugData())
			c.goaways = append(c.goaways, http2.GoAwayFrame{LastStreamID: f.LastStreamID, ErrCode: f.ErrCode})
			if c.goaway == nil {
				c.goaway = &http2.GoAwayFrame{LastStreamID: f.LastStreamID, ErrCode: f.ErrCode}
				close(c.gotGoaway)
			}
		case *http2.MetaHeadersFrame:
			if s := c.streams[f.StreamID]; s != nil && !s.ended {
				if s.status == "" || strings.HasPrefix(s.status, "1") {
					s.status = f.PseudoValue("status")
					s.fields = append([]hpack.HeaderField(nil), f.Fields...)
				} else {
					s.trailers = append([]hpack.HeaderField(nil), f.Fields...)
				}
				if f.StreamEnded() {
					s.ended = true
					close(s.done)
				}
			}
		case *http2.DataFrame:
			id, n := f.StreamID, len(f.Data())
			if s := c.streams[id]; s != nil && !s.ended {
				s.body.Write(f.Data())
				if f.StreamEnded() {
					s.ended = true
					close(s.done)
				}
			}
			c.mu.Unlock()
			if n > 0 {
				c.write(func() error {
					_ = c.fr.WriteWindowUpdate(0, uint32(n))
					return c.fr.WriteWindowUpdate(id, uint32(n))
				})
			}
			continue
		case *http2.RSTStreamFrame:
			if s := c.streams[f.StreamID]; s != nil && !s.ended {
				code := f.ErrCode
				s.rst, s.ended = &code, true
				close(s.done)
			}
		}
		c.mu.Unlock()
	}
}

func (c *fc) write(f func() error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return f()
}

// fields are a request's header fields in order, written as given (no lower-casing).
type fields [][2]string

func reqFields(method, path, host string, extra ...[2]string) fields {
	return append(fields{{":method", method}, {":scheme", "http"}, {":path", path}, {":authority", host}}, extra...)
}

// open sends a request's HEADERS on a new stream and returns its id.
func (c *fc) open(fs fields, end bool) uint32 {
	id, err := c.tryOpen(fs, end)
	if err != nil {
		c.t.Fatalf("writing HEADERS of stream %d: %v", id, err)
	}
	return id
}

// tryOpen is open, returning a write error (the sidecar may close the connection while a
// long header block is still being written).
func (c *fc) tryOpen(fs fields, end bool) (uint32, error) {
	c.wmu.Lock()
	id := c.next
	c.next += 2
	c.mu.Lock()
	c.streams[id] = &fcStream{done: make(chan struct{})}
	c.mu.Unlock()
	c.hb.Reset()
	for _, f := range fs {
		_ = c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	block := c.hb.Bytes()
	first := block[:min(len(block), 16384)]
	block = block[len(first):]
	err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: end, EndHeaders: len(block) == 0})
	for err == nil && len(block) > 0 { // CONTINUATION frames past the default frame size
		frag := block[:min(len(block), 16384)]
		block = block[len(frag):]
		err = c.fr.WriteContinuation(id, len(block) == 0, frag)
	}
	c.wmu.Unlock()
	return id, err
}

func (c *fc) data(id uint32, p []byte, end bool) error {
	return c.write(func() error {
		for len(p) > 16384 {
			if err := c.fr.WriteData(id, false, p[:16384]); err != nil {
				return err
			}
			p = p[16384:]
		}
		return c.fr.WriteData(id, end, p)
	})
}

func (c *fc) trailers(id uint32, fs fields) error {
	return c.write(func() error {
		c.hb.Reset()
		for _, f := range fs {
			_ = c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		return c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hb.Bytes(), EndStream: true, EndHeaders: true})
	})
}

func (c *fc) reset(id uint32, code http2.ErrCode) error {
	return c.write(func() error { return c.fr.WriteRSTStream(id, code) })
}

// result is what the sidecar answered on a stream.
type result struct {
	status string
	body   string
	rst    *http2.ErrCode
	fields []hpack.HeaderField
}

func (r result) String() string {
	if r.rst != nil {
		return fmt.Sprintf("RST_STREAM(%v) after status %q body %q", *r.rst, r.status, r.body)
	}
	return fmt.Sprintf("status %q body %q", r.status, r.body)
}

// wait waits up to d for stream id to end (END_STREAM or RST_STREAM).
func (c *fc) wait(id uint32, d time.Duration) (result, bool) {
	c.mu.Lock()
	s := c.streams[id]
	c.mu.Unlock()
	select {
	case <-s.done:
	case <-c.gone:
		select {
		case <-s.done:
		default:
			c.mu.Lock()
			defer c.mu.Unlock()
			return result{status: s.status, body: s.body.String()}, false
		}
	case <-time.After(d):
		c.mu.Lock()
		defer c.mu.Unlock()
		return result{status: s.status, body: s.body.String()}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return result{status: s.status, body: s.body.String(), rst: s.rst, fields: s.fields}, true
}

// get sends a GET to host and wants 200 with body want (a prefix when it ends in "*").
func (c *fc) get(host, path, want string) {
	c.t.Helper()
	id := c.open(reqFields("GET", path, host), true)
	r, ok := c.wait(id, 10*time.Second)
	if !ok {
		c.t.Fatalf("GET %s %s on stream %d: no end within 10 s (%v; connection: %v)", host, path, id, r, c.err())
	}
	if r.rst != nil || r.status != "200" || r.body != want {
		c.t.Fatalf("GET %s %s on stream %d: %v, want status 200 body %q", host, path, id, r, want)
	}
}

func (c *fc) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readErr
}

func (c *fc) goAway(d time.Duration) *http2.GoAwayFrame {
	select {
	case <-c.gotGoaway:
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.goaway
	case <-time.After(d):
		return nil
	}
}

func (c *fc) closedWithin(d time.Duration) bool {
	select {
	case <-c.gone:
		return true
	case <-time.After(d):
		return false
	}
}

func isCode(r result, code http2.ErrCode) bool { return r.rst != nil && *r.rst == code }

// 1. Many sequential and 50 concurrent gRPC calls on one connection, and plain h2c POSTs
// with bodies, all answered correctly; the event loop relays the connection (the metric
// counts it), the goroutine path does not.
func TestFrameRelaySequentialAndFiftyConcurrentGRPCCallsOnOneConnection(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		hs := newHealthServer()
		addr := grpcBackend(t, hs)
		sc, base := relaySidecar(t, goroutines, relayHosts("http://"+addr, "", nil))
		hc := grpcClient(t, base, "reviews")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for i := range 30 {
			resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: fmt.Sprintf("seq-%d", i)})
			if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("sequential call %d: %v %v", i, resp, err)
			}
		}
		var wg sync.WaitGroup
		var failed atomic.Int64
		for i := range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				svc := fmt.Sprintf("conc-%d", i)
				if i%10 == 0 {
					svc = "internal"
				}
				resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
				if svc == "internal" {
					if s, _ := status.FromError(err); s.Code() != codes.Internal || s.Message() != "broken" {
						failed.Add(1)
						t.Errorf("concurrent call %d: %v, want INTERNAL broken", i, err)
					}
					return
				}
				if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
					failed.Add(1)
					t.Errorf("concurrent call %d: %v %v", i, resp, err)
				}
			}()
		}
		wg.Wait()
		for i := range 50 {
			if i%10 != 0 && hs.count(fmt.Sprintf("conc-%d", i)) != 1 {
				t.Errorf("the upstream saw conc-%d %d times, want once", i, hs.count(fmt.Sprintf("conc-%d", i)))
			}
		}
		if hs.count("internal") != 5 {
			t.Errorf("the upstream saw %d INTERNAL calls, want 5 (not retried)", hs.count("internal"))
		}
		// grpc-go uses one connection for all of them.
		wantRelayed(t, sc, goroutines, 1)
	})
}

// 1b. Plain h2c POSTs with bodies of several sizes (up to 1 MiB, past the relay's 256 KiB
// stream window, so flow control must move) come back intact, 20 at once.
func TestFrameRelayConcurrentPostBodiesUnderTheWindowsComeBackIntact(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(w, r.Body)
		})
		sc, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))
		cl := rawH2()
		// one first request so the rest share the connection
		req, _ := http.NewRequest(http.MethodGet, base+"/warm", nil)
		req.Host = "reviews"
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				size := []int{0, 1, 16385, 300 << 10, 1 << 20}[i%5]
				body := bytes.Repeat([]byte{byte('a' + i%26)}, size)
				req, _ := http.NewRequest(http.MethodPost, base+"/echo", bytes.NewReader(body))
				req.Host = "reviews"
				resp, err := cl.Do(req)
				if err != nil {
					t.Errorf("POST %d (%d bytes): %v", i, size, err)
					return
				}
				defer resp.Body.Close()
				got, err := io.ReadAll(resp.Body)
				if err != nil || resp.StatusCode != 200 || !bytes.Equal(got, body) {
					t.Errorf("POST %d (%d bytes): %d, %d bytes back (%v), want 200 and the body echoed", i, size, resp.StatusCode, len(got), err)
				}
			}()
		}
		wg.Wait()
		wantRelayed(t, sc, goroutines, 1)
	})
}

// 2. The first request's route is not relay-able (its cluster speaks HTTP/1): the relay
// hands the connection to net/http with what it read replayed, whether the caller ACKed
// the relay's SETTINGS before its first request or after it; every later request on the
// connection, relay-able or not, is served there too.
func TestFrameRelayFallsBackToNetHTTPWhenTheFirstRequestIsNotRelayable(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var h2n, h1n atomic.Int64
		h2be := h2cBackend(t, echoHandler(&h2n))
		h1be := st.Backend(t, "", echoHandler(&h1n))
		sc, base := relaySidecar(t, goroutines, relayHosts(h2be.URL, h1be.URL, nil))
		for _, ackFirst := range []bool{false, true} {
			t.Run(fmt.Sprintf("ackFirst=%v", ackFirst), func(t *testing.T) {
				c := dialFC(t, base, ackFirst)
				// the first request carries a body over two DATA frames
				id := c.open(reqFields("POST", "/first", "ratings", [2]string{"content-length", "11"}), false)
				_ = c.data(id, []byte("hello "), false)
				_ = c.data(id, []byte("world"), true)
				r, ok := c.wait(id, 10*time.Second)
				if !ok || r.rst != nil || r.status != "200" || r.body != "POST /first body=hello world" {
					t.Fatalf("first (HTTP/1 cluster) request: ended=%v %v (connection: %v)", ok, r, c.err())
				}
				c.get("reviews", "/second", "GET /second body=")
				c.get("ratings", "/third", "GET /third body=")
				if g := c.goAway(200 * time.Millisecond); g != nil {
					t.Errorf("net/http's connection sent GOAWAY %v", g.ErrCode)
				}
			})
		}
		wantRelayed(t, sc, goroutines, 0)
		if n := statValue(t, sc, refusedMetric); n != 0 {
			t.Errorf("%s = %d, want 0: nothing was refused", refusedMetric, n)
		}
		if h1n.Load() != 4 || h2n.Load() != 2 {
			t.Errorf("the HTTP/1 backend saw %d requests (want 4), the HTTP/2 one %d (want 2)", h1n.Load(), h2n.Load())
		}
	})
}

// 2b. A relayed connection whose later request targets a route the relay does not serve
// refuses it with REFUSED_STREAM under GOAWAY (counted), unprocessed; the streams already
// open finish. Go's HTTP/2 client retries it on a new connection, which net/http serves.
func TestFrameRelayRefusesALaterNonRelayableRequestAndTheClientRetriesIt(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var h2n, h1n atomic.Int64
		release := make(chan struct{})
		h2be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				<-release
			}
			echoHandler(&h2n)(w, r)
		})
		h1be := st.Backend(t, "", echoHandler(&h1n))
		sc, base := relaySidecar(t, goroutines, relayHosts(h2be.URL, h1be.URL, nil))

		c := dialFC(t, base, false)
		c.get("reviews", "/one", "GET /one body=")
		slow := c.open(reqFields("GET", "/slow", "reviews"), true)
		time.Sleep(100 * time.Millisecond) // /slow reaches the upstream handler
		id := c.open(reqFields("GET", "/other", "ratings"), true)
		r, ok := c.wait(id, 10*time.Second)
		if !ok {
			t.Fatalf("the request to the HTTP/1 cluster did not end within 10 s: %v", r)
		}
		if goroutines {
			if r.rst != nil || r.status != "200" {
				t.Fatalf("net/http's connection: %v, want 200", r)
			}
		} else {
			if !isCode(r, http2.ErrCodeRefusedStream) {
				t.Fatalf("the relay answered a non-relay-able request with %v, want RST_STREAM(REFUSED_STREAM)", r)
			}
			g := c.goAway(5 * time.Second)
			if g == nil || g.ErrCode != http2.ErrCodeNo || g.LastStreamID < slow || g.LastStreamID >= id {
				t.Errorf("GOAWAY after the refusal: %+v, want NO_ERROR with last stream %d (the open one kept)", g, slow)
			}
			if n := statValue(t, sc, refusedMetric); n != 1 {
				t.Errorf("%s = %d, want 1", refusedMetric, n)
			}
			if h1n.Load() != 0 {
				t.Errorf("the refused request reached the HTTP/1 backend (%d)", h1n.Load())
			}
		}
		close(release)
		r, ok = c.wait(slow, 10*time.Second)
		if !ok || r.rst != nil || r.status != "200" || r.body != "GET /slow body=" {
			t.Fatalf("the stream open when the relay refused another: %v ended=%v, want 200", r, ok)
		}
		if !goroutines && !c.closedWithin(5*time.Second) {
			t.Error("the relay's connection stayed open after GOAWAY and its last stream")
		}

		// Go's client: the refused request is retried on a new connection.
		cl := rawH2()
		for i, host := range []string{"reviews", "ratings", "reviews", "ratings"} {
			req, _ := http.NewRequest(http.MethodPost, base+"/go", strings.NewReader("x"))
			req.Host = host
			req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("x")), nil }
			resp, err := cl.Do(req)
			if err != nil {
				t.Fatalf("Go client call %d to %s: %v", i, host, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != "POST /go body=x" {
				t.Fatalf("Go client call %d to %s: %d %q", i, host, resp.StatusCode, b)
			}
		}
		if !goroutines {
			if n := statValue(t, sc, refusedMetric); n < 2 {
				t.Errorf("%s = %d, want at least 2 (one from the raw caller, one from Go's client)", refusedMetric, n)
			}
		}
		// each request to ratings once: the raw caller's (unless refused) and Go's two
		if want := map[bool]int64{false: 2, true: 3}[goroutines]; h1n.Load() != want {
			t.Errorf("the HTTP/1 backend saw %d requests, want %d (each once)", h1n.Load(), want)
		}
	})
}

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

// rawUp is an HTTP/2 upstream written frame by frame: for each request HEADERS it calls
// onReq with the connection's number (from 1), the request's number across connections
// (from 1) and the stream; onReq answers (or not) through the rawUpConn.
type rawUp struct {
	addr     string
	conns    atomic.Int64
	reqs     atomic.Int64
	mu       sync.Mutex
	reqHdr   []hpack.HeaderField // the last request's header fields
	trailers []hpack.HeaderField // the last request trailers (HEADERS without :method)
	body     bytes.Buffer        // request DATA on every stream
}

type rawUpConn struct {
	conn net.Conn
	fr   *http2.Framer
	mu   sync.Mutex
	enc  *hpack.Encoder
	hb   bytes.Buffer
}

func (u *rawUpConn) headers(id uint32, end bool, fs ...[2]string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.hb.Reset()
	for _, f := range fs {
		_ = u.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	_ = u.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: u.hb.Bytes(), EndStream: end, EndHeaders: true})
}

func (u *rawUpConn) data(id uint32, p string, end bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	_ = u.fr.WriteData(id, end, []byte(p))
}

func (u *rawUpConn) rst(id uint32, code http2.ErrCode) {
	u.mu.Lock()
	defer u.mu.Unlock()
	_ = u.fr.WriteRSTStream(id, code)
}

func (u *rawUpConn) goAway(last uint32, code http2.ErrCode) {
	u.mu.Lock()
	defer u.mu.Unlock()
	_ = u.fr.WriteGoAway(last, code, nil)
}

func startRawUp(t *testing.T, onReq func(u *rawUpConn, conn, req int, id uint32)) *rawUp {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	up := &rawUp{addr: ln.Addr().String()}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { conn.Close() })
			n := int(up.conns.Add(1))
			go func() {
				defer conn.Close()
				preface := make([]byte, len(http2.ClientPreface))
				if _, err := io.ReadFull(conn, preface); err != nil {
					return
				}
				u := &rawUpConn{conn: conn, fr: http2.NewFramer(conn, conn)}
				u.enc = hpack.NewEncoder(&u.hb)
				u.fr.ReadMetaHeaders = hpack.NewDecoder(65536, nil)
				u.mu.Lock()
				err := u.fr.WriteSettings()
				u.mu.Unlock()
				if err != nil {
					return
				}
				for {
					f, err := u.fr.ReadFrame()
					if err != nil {
						return
					}
					switch f := f.(type) {
					case *http2.SettingsFrame:
						if !f.IsAck() {
							u.mu.Lock()
							_ = u.fr.WriteSettingsAck()
							u.mu.Unlock()
						}
					case *http2.PingFrame:
						if !f.IsAck() {
							u.mu.Lock()
							_ = u.fr.WritePing(true, f.Data)
							u.mu.Unlock()
						}
					case *http2.MetaHeadersFrame:
						if f.PseudoValue("method") != "" {
							up.mu.Lock()
							up.reqHdr = append([]hpack.HeaderField(nil), f.Fields...)
							up.mu.Unlock()
							onReq(u, n, int(up.reqs.Add(1)), f.StreamID)
						} else {
							up.mu.Lock()
							up.trailers = append([]hpack.HeaderField(nil), f.Fields...)
							up.mu.Unlock()
							if f.StreamEnded() {
								u.headers(f.StreamID, false, [2]string{":status", "200"})
								u.data(f.StreamID, "got trailers", true)
							}
						}
					case *http2.DataFrame:
						up.mu.Lock()
						up.body.Write(f.Data())
						up.mu.Unlock()
						if n := len(f.Data()); n > 0 {
							u.mu.Lock()
							_ = u.fr.WriteWindowUpdate(0, uint32(n))
							_ = u.fr.WriteWindowUpdate(f.StreamID, uint32(n))
							u.mu.Unlock()
						}
					}
				}
			}()
		}
	}()
	return up
}

// getH2 sends one GET to host over a fresh h2c client (so the relay decides on it).
func getH2(t *testing.T, base, host, path string) (int, string, error) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+path, nil)
	req.Host = host
	cl := rawH2()
	cl.Timeout = 15 * time.Second
	resp, err := cl.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// 7. An upstream that loses its connection mid-response: the caller's stream is reset, not
// ended as if the response were whole.
func TestFrameRelayUpstreamConnectionLostMidResponseResetsTheCaller(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		up := startRawUp(t, func(u *rawUpConn, _, _ int, id uint32) {
			u.headers(id, false, [2]string{":status", "200"}, [2]string{"content-type", "text/plain"})
			u.data(id, "partial;", false)
			time.Sleep(50 * time.Millisecond)
			u.conn.Close()
		})
		_, base := relaySidecar(t, goroutines, relayHosts("http://"+up.addr, "", nil))
		code, body, err := getH2(t, base, "reviews", "/cut")
		if code == 200 && err == nil {
			t.Fatalf("the upstream's connection closed mid-body; the caller got a clean 200 %q", body)
		}
		if code == 200 && body != "partial;" {
			t.Errorf("the caller got %q before the reset, want the part the upstream sent", body)
		}
		t.Logf("caller saw: %d %q %v", code, body, err)
	})
}

// 7b. An upstream answering HEADERS without :status (or with an invalid one): the attempt
// fails like a reset; without a retry policy the caller gets 503 (gRPC: UNAVAILABLE), and
// the sidecar does not hang.
func TestFrameRelayUpstreamResponseWithoutValidStatusIs503(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		up := startRawUp(t, func(u *rawUpConn, _, req int, id uint32) {
			if req%2 == 1 {
				u.headers(id, true, [2]string{"content-type", "text/plain"})
			} else {
				u.headers(id, true, [2]string{":status", "abc"})
			}
		})
		_, base := relaySidecar(t, goroutines, relayHosts("http://"+up.addr, "", nil))
		for i, what := range []string{"no :status", ":status abc"} {
			code, body, err := getH2(t, base, "reviews", "/nostatus")
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			if goroutines && code/100 == 5 {
				continue // net/http's client: 502 or 503
			}
			if code != http.StatusServiceUnavailable {
				t.Errorf("%s (request %d): %d %q, want 503", what, i, code, body)
			}
		}
		// gRPC: UNAVAILABLE
		hc := grpcClient(t, base, "reviews")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		if s, _ := status.FromError(err); s.Code() != codes.Unavailable && !(goroutines && s.Code() != codes.OK) {
			t.Errorf("gRPC call answered without :status: %v, want UNAVAILABLE", err)
		}
	})
}

// 8. An upstream that refuses a stream (RST_STREAM REFUSED_STREAM) before answering: it was
// not processed, so the sidecar sends it once more, uncounted, without a retry policy;
// one that always refuses is not sent a third time.
func TestFrameRelayUpstreamRefusedStreamIsSentOnceMore(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var always atomic.Bool
		up := startRawUp(t, func(u *rawUpConn, _, req int, id uint32) {
			if req == 1 || always.Load() {
				u.rst(id, http2.ErrCodeRefusedStream)
				return
			}
			u.headers(id, false, [2]string{":status", "200"})
			u.data(id, "second try", true)
		})
		_, base := relaySidecar(t, goroutines, relayHosts("http://"+up.addr, "", nil))
		code, body, err := getH2(t, base, "reviews", "/refused")
		if goroutines {
			// net/http's HTTP/2 client (ClientConn.RoundTrip) does not send a refused stream
			// again: the goroutine path answers 503. Bounded, not retried: noted, not pinned.
			t.Logf("goroutine path, the upstream refused the first attempt: %d %q %v (attempts %d)", code, body, err, up.reqs.Load())
			if err != nil || (code != 200 && code/100 != 5) {
				t.Errorf("goroutine path: %d %v, want 200 or a 5xx", code, err)
			}
			return
		}
		if err != nil || code != 200 || body != "second try" {
			t.Errorf("the upstream refused the first attempt: %d %q %v, want 200 second try", code, body, err)
		}
		if n := up.reqs.Load(); n != 2 {
			t.Errorf("the upstream saw %d attempts, want 2", n)
		}
		always.Store(true)
		up.reqs.Store(0)
		code, _, err = getH2(t, base, "reviews", "/refused-always")
		if err != nil || code/100 != 5 {
			t.Errorf("the upstream refused every attempt: %d %v, want a 5xx", code, err)
		}
		if n := up.reqs.Load(); n > 2 && !goroutines {
			t.Errorf("an upstream that always refuses was sent the request %d times, want at most 2 without a retry policy", n)
		}
	})
}

// 8b. An upstream that sends GOAWAY (last stream 0) instead of answering: the request was
// not processed and goes again on a new connection; the caller gets the answer.
func TestFrameRelayUpstreamGoAwayRetriesOnANewConnection(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		up := startRawUp(t, func(u *rawUpConn, conn, _ int, id uint32) {
			if conn == 1 {
				u.goAway(0, http2.ErrCodeNo)
				go func() { time.Sleep(100 * time.Millisecond); u.conn.Close() }()
				return
			}
			u.headers(id, false, [2]string{":status", "200"})
			u.data(id, fmt.Sprintf("conn %d", conn), true)
		})
		_, base := relaySidecar(t, goroutines, relayHosts("http://"+up.addr, "", nil))
		start := time.Now()
		code, body, err := getH2(t, base, "reviews", "/goaway")
		if err != nil || code != 200 || body != "conn 2" {
			t.Errorf("after the upstream's GOAWAY: %d %q %v (%v), want 200 from a second connection", code, body, err, time.Since(start))
		}
		if n := up.conns.Load(); n != 2 {
			t.Errorf("the sidecar opened %d upstream connections, want 2", n)
		}
	})
}

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

// 9. An idle caller connection is sent GOAWAY and closed after the listener's idle
// timeout; one with a stream in flight is not.
func TestFrameRelayIdleConnectionGetsGoAwayAndIsClosed(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				time.Sleep(1500 * time.Millisecond)
			}
			_, _ = io.WriteString(w, "ok")
		})
		l := limitedListener(listenerOpts{hcm: func(h *hcmv3.HttpConnectionManager) {
			h.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(500 * time.Millisecond)}
		}})
		sc, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", l))
		c := dialFC(t, base, false)
		c.get("reviews", "/ok", "ok")
		// a request longer than the idle timeout is not cut
		c.get("reviews", "/slow", "ok")
		start := time.Now()
		g := c.goAway(5 * time.Second)
		if g == nil {
			t.Fatal("no GOAWAY within 5 s on a connection idle past its 500 ms timeout")
		}
		if g.ErrCode != http2.ErrCodeNo {
			t.Errorf("idle GOAWAY with %v, want NO_ERROR", g.ErrCode)
		}
		if !c.closedWithin(5 * time.Second) {
			t.Error("the idle connection was sent GOAWAY but not closed within 5 s")
		}
		t.Logf("GOAWAY and close %v after the last response", time.Since(start))
		wantRelayed(t, sc, goroutines, 1)
	})
}

// 4. A request header list larger than the listener's max_request_headers_kb (4 KiB here),
// made of fields each under the limit in one HEADERS frame: that stream is reset (relay) or answered 431
// (net/http), never forwarded; the connection and the sidecar go on. So with more fields
// than the listener's max headers.
func TestFrameRelayOversizedHeaderListResetsOnlyThatStream(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var n atomic.Int64
		be := h2cBackend(t, echoHandler(&n))
		l := limitedListener(listenerOpts{hcm: func(h *hcmv3.HttpConnectionManager) {
			h.MaxRequestHeadersKb = wrapperspb.UInt32(4)
		}})
		sc, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", l))
		c := dialFC(t, base, false)
		c.get("reviews", "/ok", "GET /ok body=")
		many := func(count, size int) [][2]string {
			var fs [][2]string
			for i := range count {
				fs = append(fs, [2]string{fmt.Sprintf("x-f%03d", i), strings.Repeat("v", size)})
			}
			return fs
		}
		for _, tc := range []struct {
			name string
			fs   [][2]string
		}{
			{"30 fields of 200 bytes (7 KiB, one HEADERS)", many(30, 200)},
			{"150 fields of 1 byte (past the 100 fields allowed)", many(150, 1)},
		} {
			id := c.open(reqFields("GET", "/big", "reviews", tc.fs...), true)
			r, ok := c.wait(id, 5*time.Second)
			switch {
			case !ok:
				t.Fatalf("%s: no answer within 5 s (%v; connection %v)", tc.name, r, c.err())
			case r.rst != nil:
				if *r.rst != http2.ErrCodeProtocol && *r.rst != http2.ErrCodeRefusedStream {
					t.Errorf("%s: %v, want PROTOCOL_ERROR or REFUSED_STREAM", tc.name, r)
				}
			case r.status != "431":
				t.Errorf("%s: %v, want a reset or 431", tc.name, r)
			}
			t.Logf("%s: %v", tc.name, r)
			c.get("reviews", "/after", "GET /after body=")
		}
		if g := c.goAway(100 * time.Millisecond); g != nil {
			t.Errorf("an oversized header list ended the connection: GOAWAY %v", g.ErrCode)
		}
		c2 := dialFC(t, base, true)
		// the relay advertises the limit; net/http adds its own slack (32 bytes × 10 fields)
		if v, ok := c2.settings[http2.SettingMaxHeaderListSize]; !ok || v < 4<<10 || v > 5<<10 || (!goroutines && v != 4<<10) {
			t.Errorf("SETTINGS_MAX_HEADER_LIST_SIZE = %d (sent %v), want 4096 (net/http: a little more)", v, ok)
		}
		c2.get("reviews", "/second-conn", "GET /second-conn body=")
		if n.Load() != 4 {
			t.Errorf("the upstream saw %d requests, want 4 (none of the oversized ones)", n.Load())
		}
		wantRelayed(t, sc, goroutines, 2)
	})
}

// 4b. One header field longer than the whole limit, or a header block past the limit
// that goes on in CONTINUATION frames: x/net's framer (under both net/http and the relay)
// takes either for a connection error (an HPACK string past the limit; CONTINUATIONs past
// it, the CVE-2023-45288 guard). The connection ends with a GOAWAY, not silently, and a
// new connection is served. (The relay's stated limit says "the stream is reset"; in these
// two shapes it is the connection, exactly as with net/http.)
func TestFrameRelayHeaderBlockPastTheLimitInOneFieldOrContinuationsEndsTheConnectionWithGoAway(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var n atomic.Int64
		be := h2cBackend(t, echoHandler(&n))
		l := limitedListener(listenerOpts{hcm: func(h *hcmv3.HttpConnectionManager) {
			h.MaxRequestHeadersKb = wrapperspb.UInt32(2)
		}})
		_, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", l))
		var cont [][2]string
		for i := range 60 {
			cont = append(cont, [2]string{fmt.Sprintf("x-f%03d", i), strings.Repeat("v", 1000)})
		}
		for _, tc := range []struct {
			name string
			fs   [][2]string
		}{
			{"one 4 KiB field past a 2 KiB limit", [][2]string{{"x-big", strings.Repeat("v", 4<<10)}}},
			{"60 KiB in HEADERS and CONTINUATIONs past a 2 KiB limit", cont},
		} {
			c := dialFC(t, base, false)
			c.get("reviews", "/ok", "GET /ok body=")
			id, err := c.tryOpen(reqFields("GET", "/big", "reviews", tc.fs...), true)
			if err != nil {
				t.Logf("%s: writing the header block: %v (the sidecar closed the connection first)", tc.name, err)
			}
			r, _ := c.wait(id, 5*time.Second)
			g := c.goAway(5 * time.Second)
			switch {
			case g != nil:
				if g.ErrCode != http2.ErrCodeCompression && g.ErrCode != http2.ErrCodeProtocol {
					t.Errorf("%s: GOAWAY %v", tc.name, g.ErrCode)
				}
				if !c.closedWithin(5 * time.Second) {
					t.Errorf("%s: the connection was not closed after GOAWAY", tc.name)
				}
			case r.rst != nil || r.status == "431":
				// the stream only: better still
			default:
				t.Fatalf("%s: %v, no GOAWAY, want a reset, 431 or GOAWAY", tc.name, r)
			}
			dialFC(t, base, false).get("reviews", "/next", "GET /next body=")
		}
		if n.Load() != 4 {
			t.Errorf("the upstream saw %d requests, want 4", n.Load())
		}
	})
}

// 5. Streams past the advertised SETTINGS_MAX_CONCURRENT_STREAMS (100 on the relay) are
// refused; those within it complete once the upstream answers, and the connection takes
// new streams after.
func TestFrameRelayStreamsPastTheConcurrencyLimitAreRefused(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		release := make(chan struct{})
		var entered atomic.Int64
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/block" {
				entered.Add(1)
				<-release
			}
			_, _ = io.WriteString(w, "ok")
		})
		sc, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))
		c := dialFC(t, base, true)
		max, ok := c.settings[http2.SettingMaxConcurrentStreams]
		if !goroutines && (!ok || max != 100) {
			t.Fatalf("the relay's SETTINGS_MAX_CONCURRENT_STREAMS = %d (sent %v), want 100", max, ok)
		}
		if !ok || max > 1000 {
			t.Fatalf("SETTINGS_MAX_CONCURRENT_STREAMS = %d (sent %v): nothing to test", max, ok)
		}
		ids := make([]uint32, 0, max+1)
		for range max + 1 {
			ids = append(ids, c.open(reqFields("GET", "/block", "reviews"), true))
		}
		r, done := c.wait(ids[max], 10*time.Second)
		released := false
		defer func() {
			if !released {
				close(release)
			}
		}()
		if !done {
			t.Fatalf("stream %d (past the %d allowed) got no answer within 10 s: %v", max+1, max, r)
		}
		switch {
		case isCode(r, http2.ErrCodeRefusedStream):
		case goroutines && isCode(r, http2.ErrCodeProtocol): // net/http once its SETTINGS are ACKed
		default:
			t.Fatalf("stream %d past the limit of %d: %v, want RST_STREAM(REFUSED_STREAM)", max+1, max, r)
		}
		t.Logf("%d requests reached the upstream while %d streams were open", entered.Load(), max)
		for _, id := range ids[:max] {
			c.mu.Lock()
			s := c.streams[id]
			ended, rst := s.ended, s.rst
			c.mu.Unlock()
			if ended {
				t.Fatalf("stream %d within the limit ended early (reset %v)", id, rst)
			}
		}
		close(release)
		released = true
		for _, id := range ids[:max] {
			if r, ok := c.wait(id, 10*time.Second); !ok || r.rst != nil || r.status != "200" || r.body != "ok" {
				t.Fatalf("stream %d within the limit: %v ended=%v, want 200 ok", id, r, ok)
			}
		}
		c.get("reviews", "/again", "ok")
		if g := c.goAway(100 * time.Millisecond); g != nil {
			t.Errorf("refusing a stream past the limit ended the connection: GOAWAY %v", g.ErrCode)
		}
		wantRelayed(t, sc, goroutines, 1)
	})
}

// A request body overrunning the relay's 256 KiB per-stream window (a caller that ignores
// flow control, an upstream that takes nothing past its initial window): that stream is
// reset FLOW_CONTROL_ERROR, the upstream stream is reset, the connection goes on.
func TestFrameRelayStreamWindowOverrun256KiBIsFlowControlError(t *testing.T) {
	up := startStingyUpstream(t)
	var n atomic.Int64
	be := h2cBackend(t, echoHandler(&n))
	cp := st.StartControlPlane(t)
	snap := relayHosts("http://"+up.addr, be.URL, nil)
	// "ratings" to an HTTP/2 echo too, so the connection can go on
	cn1 := st.OutboundClusterName(9080, "", "ratings", "default", "default", "ratings")
	snap.Clusters[1] = st.EDSCluster(cn1, h2Upstream(0))
	cp.Set(snap)
	sc := st.StartSidecar(t, cp, st.SidecarOptions{})
	base := sc.URL(t, st.OutboundListenerName)
	c := dialFC(t, base, true)
	id := c.open(reqFields("POST", "/upload", "reviews"), false)
	chunk := bytes.Repeat([]byte("u"), 16<<10)
	// First what the upstream takes (its 65535-byte window), then 256 KiB the relay holds,
	// and more.
	sent := 0
	for sent < 80<<10 {
		if err := c.data(id, chunk, false); err != nil {
			t.Fatal(err)
		}
		sent += len(chunk)
	}
	st.Eventually(t, 5*time.Second, func() bool { return up.data.Load() == 65535 }, "the upstream got %d bytes, want its window, 65535", up.data.Load())
	const send = 80<<10 + 256<<10 + 16<<10
	for sent < send {
		if err := c.data(id, chunk, false); err != nil {
			t.Fatalf("writing DATA after %d bytes: %v", sent, err)
		}
		sent += len(chunk)
	}
	r, ok := c.wait(id, 5*time.Second)
	if !ok || !isCode(r, http2.ErrCodeFlowControl) {
		t.Fatalf("%d bytes sent into a 256 KiB stream window: %v ended=%v, want RST_STREAM(FLOW_CONTROL_ERROR)", sent, r, ok)
	}
	select {
	case <-up.rst:
	case <-time.After(5 * time.Second):
		t.Error("the upstream stream was not reset after the caller's stream was")
	}
	if d := up.data.Load(); d > 65535 {
		t.Errorf("the upstream got %d bytes past its 65535-byte window", d)
	}
	c.get("ratings", "/after", "GET /after body=")
	if g := c.goAway(100 * time.Millisecond); g != nil {
		t.Errorf("a stream's overrun ended the connection: GOAWAY %v", g.ErrCode)
	}
	wantRelayed(t, sc, false, 1)
}

// Caller DATA overrunning the relay's 1 MiB connection window (several streams, each
// within its own 256 KiB): the connection ends with GOAWAY(FLOW_CONTROL_ERROR).
func TestFrameRelayConnectionWindowOverrun1MiBIsGoAwayFlowControlError(t *testing.T) {
	up := startStingyUpstream(t)
	cp := st.StartControlPlane(t)
	cp.Set(relayHosts("http://"+up.addr, "", nil))
	sc := st.StartSidecar(t, cp, st.SidecarOptions{})
	c := dialFC(t, sc.URL(t, st.OutboundListenerName), true)
	chunk := bytes.Repeat([]byte("u"), 16<<10)
	sent := 0
	var werr error
	for i := 0; i < 6 && werr == nil; i++ {
		id := c.open(reqFields("POST", "/upload", "reviews"), false)
		for j := 0; j < 15 && werr == nil; j++ { // 240 KiB per stream
			werr = c.data(id, chunk, false)
			sent += len(chunk)
		}
	}
	g := c.goAway(5 * time.Second)
	if g == nil || g.ErrCode != http2.ErrCodeFlowControl {
		t.Fatalf("%d bytes over 6 streams into a 1 MiB connection window: GOAWAY %+v (write error %v), want FLOW_CONTROL_ERROR", sent, g, werr)
	}
	if !c.closedWithin(5 * time.Second) {
		t.Error("the connection was not closed after GOAWAY(FLOW_CONTROL_ERROR)")
	}
	// the sidecar goes on
	c2 := dialFC(t, sc.URL(t, st.OutboundListenerName), true)
	id := c2.open(reqFields("POST", "/upload", "reviews"), false)
	_ = c2.data(id, []byte("x"), false)
	st.Eventually(t, 5*time.Second, func() bool { return up.data.Load() > 0 }, "a new connection's DATA did not reach the upstream")
}

// Sidecar shutdown: relayed connections get GOAWAY; an idle one is closed, one with a
// stream in flight finishes the stream and then closes; Shutdown returns.
func TestFrameRelayShutdownSendsGoAwayAndClosesAfterTheLastStream(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		release := make(chan struct{})
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				<-release
			}
			_, _ = io.WriteString(w, "ok")
		})
		sc, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))
		busy := dialFC(t, base, false)
		busy.get("reviews", "/one", "ok")
		idle := dialFC(t, base, false)
		idle.get("reviews", "/one", "ok")
		slow := busy.open(reqFields("GET", "/slow", "reviews"), true)
		time.Sleep(100 * time.Millisecond)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut := make(chan error, 1)
		go func() { shut <- sc.Proxy.Shutdown(ctx) }()
		if g := busy.goAway(5 * time.Second); g == nil {
			t.Error("no GOAWAY on the busy connection within 5 s of shutdown")
		} else if g.LastStreamID < slow {
			t.Errorf("GOAWAY last stream %d, below the stream in flight %d", g.LastStreamID, slow)
		}
		if g := idle.goAway(5 * time.Second); g == nil {
			t.Error("no GOAWAY on the idle connection within 5 s of shutdown")
		}
		if !idle.closedWithin(5 * time.Second) {
			t.Error("the idle connection was not closed within 5 s of shutdown")
		}
		select {
		case err := <-shut:
			t.Errorf("Shutdown returned (%v) with a stream in flight", err)
		case <-time.After(200 * time.Millisecond):
		}
		close(release)
		if r, ok := busy.wait(slow, 5*time.Second); !ok || r.rst != nil || r.status != "200" || r.body != "ok" {
			t.Errorf("the stream in flight at shutdown: %v ended=%v, want 200 ok", r, ok)
		}
		if !busy.closedWithin(5 * time.Second) {
			t.Error("the busy connection was not closed after its last stream")
		}
		select {
		case err := <-shut:
			if err != nil {
				t.Errorf("Shutdown: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Shutdown did not return within 5 s of the last stream")
		}
		if !goroutines {
			if n := statValue(t, sc, relayedMetric); n != 2 {
				t.Errorf("%s = %d, want 2", relayedMetric, n)
			}
		}
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

// An upstream GOAWAY whose last-stream-id covers one stream in flight and not another: the
// covered stream is answered on the old connection, the other is sent again on a new one.
func TestFrameRelayUpstreamGoAwayRetriesOnlyStreamsAboveItsLastStreamID(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		first := make(chan func(), 1)
		up := startRawUp(t, func(u *rawUpConn, conn, _ int, id uint32) {
			if conn == 1 {
				if len(first) == 0 && cap(first) == 1 {
					select {
					case first <- func() {
						u.headers(id, false, [2]string{":status", "200"})
						u.data(id, "conn 1", true)
					}:
						return
					default:
					}
				}
				// the second stream on this connection: GOAWAY below it, then answer the first
				u.goAway(id-2, http2.ErrCodeNo)
				go func() {
					time.Sleep(100 * time.Millisecond)
					(<-first)()
					time.Sleep(100 * time.Millisecond)
					u.conn.Close()
				}()
				return
			}
			u.headers(id, false, [2]string{":status", "200"})
			u.data(id, fmt.Sprintf("conn %d", conn), true)
		})
		_, base := relaySidecar(t, goroutines, relayHosts("http://"+up.addr, "", nil))
		c := dialFC(t, base, false)
		a := c.open(reqFields("GET", "/a", "reviews"), true)
		st.Eventually(t, 5*time.Second, func() bool { return len(first) == 1 }, "the first request did not reach the upstream")
		b := c.open(reqFields("GET", "/b", "reviews"), true)
		ra, oka := c.wait(a, 10*time.Second)
		rb, okb := c.wait(b, 10*time.Second)
		if !oka || ra.rst != nil || ra.status != "200" || ra.body != "conn 1" {
			t.Errorf("the stream below the upstream's GOAWAY: %v ended=%v, want 200 from conn 1", ra, oka)
		}
		if goroutines && okb && rb.status == "503" {
			// net/http's HTTP/2 client fails a stream above a GOAWAY's last-stream-id while
			// its connection lives on; the goroutine path answers 503 instead of sending it
			// again (a limit of that path, not the relay's).
			t.Logf("goroutine path, the stream above the upstream's GOAWAY: %v", rb)
			return
		}
		if !okb || rb.rst != nil || rb.status != "200" || rb.body != "conn 2" {
			t.Errorf("the stream above the upstream's GOAWAY: %v ended=%v, want 200 from a new connection", rb, okb)
		}
		if n := up.conns.Load(); n != 2 {
			t.Errorf("%d upstream connections, want 2", n)
		}
	})
}

// A route timeout on the relay: a slow upstream gets its stream reset, the caller 504.
func TestFrameRelayRouteTimeoutAnswers504AndResetsTheUpstream(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		ended := make(chan error, 1)
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-time.After(5 * time.Second):
			case <-r.Context().Done():
				ended <- r.Context().Err()
			}
		})
		_, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil, st.Timeout(300*time.Millisecond)))
		start := time.Now()
		code, body, err := getH2(t, base, "reviews", "/slow")
		if err != nil || code != http.StatusGatewayTimeout {
			t.Errorf("route timeout 300 ms, upstream 5 s: %d %q %v, want 504", code, body, err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("answered after %v", d)
		}
		select {
		case <-ended:
		case <-time.After(5 * time.Second):
			t.Error("the upstream stream was not reset at the route timeout")
		}
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

// The first request on a connection is a 1 MiB upload to a route the relay hands to
// net/http: what follows its HEADERS is read by net/http, under net/http's windows, and
// comes through whole, as do concurrent requests on the same connection.
func TestFrameRelayFallbackWithALargeFirstUpload(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		h2be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(w, r.Body) })
		h1be := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(w, r.Body) })
		sc, base := relaySidecar(t, goroutines, relayHosts(h2be.URL, h1be.URL, nil))
		cl := rawH2()
		var wg sync.WaitGroup
		firstSent := make(chan struct{})
		for i := range 6 {
			if i == 1 {
				<-firstSent // the first request's HEADERS are out: its body is being read
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				host := []string{"ratings", "reviews"}[i%2]
				body := bytes.Repeat([]byte{byte('A' + i)}, 1<<20)
				var r io.Reader = bytes.NewReader(body)
				if i == 0 {
					r = io.MultiReader(&signalReader{ch: firstSent}, r)
				}
				req, _ := http.NewRequest(http.MethodPost, base+"/up", r)
				req.ContentLength = int64(len(body))
				req.Host = host
				resp, err := cl.Do(req)
				if err != nil {
					t.Errorf("upload %d to %s: %v", i, host, err)
					return
				}
				got, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || err != nil || !bytes.Equal(got, body) {
					t.Errorf("upload %d to %s: %d, %d bytes back (%v)", i, host, resp.StatusCode, len(got), err)
				}
			}()
		}
		wg.Wait()
		wantRelayed(t, sc, goroutines, 0)
	})
}

// A connection that sends its preface and SETTINGS and then nothing is closed at the
// listener's head timeout, before any request.
func TestFrameRelayConnectionWithoutARequestIsClosedAtTheHeadTimeout(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := h2cBackend(t, echoHandler(nil))
		l := limitedListener(listenerOpts{hcm: func(h *hcmv3.HttpConnectionManager) {
			h.RequestHeadersTimeout = durationpb.New(500 * time.Millisecond)
			h.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(500 * time.Millisecond)}
		}})
		_, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", l))
		start := time.Now()
		c := dialFC(t, base, false)
		if !c.closedWithin(5 * time.Second) {
			t.Fatal("a connection with no request stayed open 5 s past a 500 ms head timeout")
		}
		t.Logf("closed after %v", time.Since(start))
		dialFC(t, base, false).get("reviews", "/ok", "GET /ok body=")
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

// An upstream that allows one stream per connection: ten concurrent requests from one
// caller connection all complete (queued for the stream, or on more connections), both
// as a connection's first requests (before the upstream's SETTINGS can have arrived) and
// later.
func TestFrameRelayUpstreamAllowingOneStreamServesTenConcurrentCalls(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var inflight, peak atomic.Int64
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			n := inflight.Add(1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			time.Sleep(50 * time.Millisecond)
			inflight.Add(-1)
			_, _ = io.WriteString(w, r.URL.Path)
		}, func(s *http.Server) { s.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: 1} })
		_, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))
		var failed []string
		only503 := true
		// Cold: ten requests as a new connection's first frames, so (on the relay) a new
		// upstream connection may carry several before the upstream's SETTINGS say 1.
		// Warm: after a first request has been answered.
		ids := map[uint32]string{}
		cold := dialFC(t, base, false)
		for i := range 10 {
			p := fmt.Sprintf("/cold%d", i)
			ids[cold.open(reqFields("GET", p, "reviews"), true)] = p
		}
		for id, p := range ids {
			if r, ok := cold.wait(id, 10*time.Second); !ok || r.rst != nil || r.status != "200" || r.body != p {
				failed = append(failed, fmt.Sprintf("%s: %v ended=%v", p, r, ok))
				only503 = only503 && (!ok || r.status == "503")
			}
		}
		c := dialFC(t, base, false)
		c.get("reviews", "/warm", "/warm")
		ids = map[uint32]string{}
		for i := range 10 {
			p := fmt.Sprintf("/c%d", i)
			ids[c.open(reqFields("GET", p, "reviews"), true)] = p
		}
		for id, p := range ids {
			if r, ok := c.wait(id, 10*time.Second); !ok || r.rst != nil || r.status != "200" || r.body != p {
				failed = append(failed, fmt.Sprintf("%s: %v ended=%v", p, r, ok))
				only503 = only503 && (!ok || r.status == "503")
			}
		}
		t.Logf("peak upstream concurrency %d", peak.Load())
		if len(failed) > 0 {
			if goroutines && only503 {
				t.Errorf("regression (fixed in session 12; goroutine path): with an upstream advertising "+
					"SETTINGS_MAX_CONCURRENT_STREAMS 1, %d of 20 concurrent calls got 503 \"reset reason: connection "+
					"termination\" or no answer within 10 s (%s): streams the upstream refuses past its limit are not sent again. "+
					"The relay queues them and all 20 succeed", len(failed), strings.Join(failed, "; "))
			}
			t.Errorf("through an upstream allowing 1 stream: %s", strings.Join(failed, "; "))
		}
	})
}

// Sidecar shutdown with a connection that has sent its preface and SETTINGS but no request
// yet (the relay has not decided): Shutdown does not wait for it until the head timeout,
// the connection is closed (net/http sends GOAWAY and closes it), and a request sent on it
// after Shutdown has returned is not served.
func TestFrameRelayShutdownClosesAConnectionWithoutARequest(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var n atomic.Int64
		be := h2cBackend(t, echoHandler(&n))
		sc, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))
		c := dialFC(t, base, true) // the SETTINGS exchange is done: the sidecar has the connection
		ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
		defer cancel()
		start := time.Now()
		err := sc.Proxy.Shutdown(ctx)
		took := time.Since(start)
		if err != nil || took > 3*time.Second {
			t.Errorf("Shutdown with a connection that sent no request: %v after %v; want nil within 3 s (the default head timeout is 10 s)", err, took)
		}
		if c.closedWithin(3 * time.Second) {
			return
		}
		id := c.open(reqFields("GET", "/after-shutdown", "reviews"), true)
		r, _ := c.wait(id, 5*time.Second)
		if !goroutines {
			t.Errorf("regression (fixed in session 12): Proxy.Shutdown returned (%v, after %v) while a relay connection that had sent its preface and "+
				"SETTINGS but no request was left open (no GOAWAY, not closed 3 s later; by the code, it lasts until the "+
				"read deadline the relay sets at the head timeout). A request then sent on it was served: %v, the upstream "+
				"saw %d request(s), and %s = %d after the drain. The drain (frameSet.drain) only knows connections the relay has decided "+
				"to serve; an undecided one should get GOAWAY and be closed, or be refused once the listener drains, "+
				"as net/http's Shutdown does on the goroutine path", err, took, r, n.Load(), relayedMetric, statValue(t, sc, relayedMetric))
		}
		t.Errorf("the connection without a request was still open 3 s after Shutdown returned; a request on it then got %v, the upstream saw %d", r, n.Load())
	})
}

// A refused POST whose body was already on its way (HEADERS, then DATA before the caller
// can have seen the RST_STREAM): the DATA of a refused stream is not a connection error
// (RFC 9113 §5.1: a stream the server reset is closed, its frames are answered with
// STREAM_CLOSED or ignored), so the streams in flight on the connection go on. Refused
// because the route is not relay-able, and because 100 streams are open.
func TestFrameRelayRefusedPostWithBodyInFlightDoesNotKillTheConnection(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		// the /block handlers wait on the current case's channel
		var relMu sync.Mutex
		var release chan struct{}
		var once *sync.Once
		current := func() chan struct{} { relMu.Lock(); defer relMu.Unlock(); return release }
		free := func() {
			relMu.Lock()
			ch, o := release, once
			relMu.Unlock()
			if o != nil {
				o.Do(func() { close(ch) })
			}
		}
		defer free()
		h2be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/block" {
				<-current()
			}
			_, _ = io.Copy(io.Discard, r.Body)
			_, _ = io.WriteString(w, "ok")
		})
		h1be := st.Backend(t, "", echoHandler(nil))
		_, base := relaySidecar(t, goroutines, relayHosts(h2be.URL, h1be.URL, nil))
		var bugs []string
		for _, tc := range []struct {
			name    string
			blocked int
			host    string
		}{
			{"a POST to a route the relay does not serve", 1, "ratings"},
			{"a POST past the 100 streams allowed", 100, "reviews"},
		} {
			// (with goroutines net/http serves the POST to "ratings": nothing is refused)
			free() // the previous case's handlers, if any are left
			relMu.Lock()
			release, once = make(chan struct{}), &sync.Once{}
			relMu.Unlock()
			c := dialFC(t, base, true)
			c.get("reviews", "/ok", "ok")
			max := int(c.settings[http2.SettingMaxConcurrentStreams])
			blocked := tc.blocked
			if blocked > 1 {
				blocked = max
			}
			var ids []uint32
			for range blocked {
				ids = append(ids, c.open(reqFields("GET", "/block", "reviews"), true))
			}
			time.Sleep(200 * time.Millisecond)
			id := c.open(reqFields("POST", "/post", tc.host, [2]string{"content-length", "32768"}), false)
			_ = c.data(id, bytes.Repeat([]byte("p"), 16384), false)
			_ = c.data(id, bytes.Repeat([]byte("q"), 16384), true)
			r, ok := c.wait(id, 5*time.Second)
			r.body = fmt.Sprintf("<%d bytes>", len(r.body))
			t.Logf("%s: %v ended=%v", tc.name, r, ok)
			c.goAway(300 * time.Millisecond)
			time.Sleep(100 * time.Millisecond)
			c.mu.Lock()
			var g *http2.GoAwayFrame
			if len(c.goaways) > 0 {
				g = &c.goaways[len(c.goaways)-1] // the last one says why the connection ended
			}
			c.mu.Unlock()
			free()
			var lost []string
			for _, bid := range ids {
				if r, ok := c.wait(bid, 10*time.Second); !ok || r.rst != nil || r.status != "200" {
					lost = append(lost, fmt.Sprintf("stream %d: %v ended=%v", bid, r, ok))
				}
			}
			if len(lost) > 0 {
				msg := fmt.Sprintf("%s (HEADERS, then 32 KiB of DATA) on a connection with %d streams in flight: "+
					"the POST got %v, GOAWAY %v, and %d stream(s) in flight were lost (first: %s)",
					tc.name, len(ids), r, goAwayString(g), len(lost), lost[0])
				if !goroutines && g != nil && g.ErrCode == http2.ErrCodeProtocol {
					bugs = append(bugs, msg)
					continue
				}
				t.Error(msg)
			}
		}
		if len(bugs) > 0 {
			t.Errorf("regression (fixed in session 12): %s. The relay does not record a stream it refuses (REFUSED_STREAM) as used (fconn.lastID "+
				"is not raised), so the DATA the caller had already sent on it counts as DATA on an idle stream, "+
				"a connection error: GOAWAY(PROTOCOL_ERROR) ends every stream in flight. It should answer that DATA "+
				"with RST_STREAM(STREAM_CLOSED) or drop it (returning its connection window)", strings.Join(bugs, "; and "))
		}
	})
}

func goAwayString(g *http2.GoAwayFrame) string {
	if g == nil {
		return "none"
	}
	return fmt.Sprintf("(last stream %d, %v)", g.LastStreamID, g.ErrCode)
}

// The same through Go's HTTP/2 client: on one connection, a call in flight to a relay-able
// route and a POST with a body to a route the relay does not serve. The POST is refused
// and retried on a new connection; the call in flight must still be answered.
func TestFrameRelayGoClientPostToANonRelayableHostDoesNotFailCallsInFlight(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		release := make(chan struct{})
		entered := make(chan struct{}, 1)
		h2be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/block" {
				entered <- struct{}{}
				<-release
			}
			_, _ = io.WriteString(w, "ok")
		})
		h1be := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "%d", len(b))
		})
		_, base := relaySidecar(t, goroutines, relayHosts(h2be.URL, h1be.URL, nil))
		cl := rawH2()
		blocked := make(chan string, 1)
		go func() {
			req, _ := http.NewRequest(http.MethodGet, base+"/block", nil)
			req.Host = "reviews"
			resp, err := cl.Do(req)
			if err != nil {
				blocked <- err.Error()
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			blocked <- fmt.Sprintf("%d %s %v", resp.StatusCode, b, err)
		}()
		select {
		case <-entered:
		case <-time.After(5 * time.Second):
			t.Fatal("the first call did not reach the upstream")
		}
		body := bytes.Repeat([]byte("b"), 64<<10)
		req, _ := http.NewRequest(http.MethodPost, base+"/post", bytes.NewReader(body))
		req.Host = "ratings"
		resp, err := cl.Do(req)
		post := ""
		if err != nil {
			post = err.Error()
		} else {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			post = fmt.Sprintf("%d %s", resp.StatusCode, b)
		}
		time.Sleep(100 * time.Millisecond)
		close(release)
		var got string
		select {
		case got = <-blocked:
		case <-time.After(10 * time.Second):
			got = "no answer within 10 s"
		}
		if post != "200 65536" {
			t.Errorf("the POST to the HTTP/1 route: %s, want 200 65536", post)
		}
		if got != "200 ok <nil>" {
			if !goroutines {
				t.Errorf("regression (fixed in session 12) (see TestFrameRelayRefusedPostWithBodyInFlightDoesNotKillTheConnection; timing-dependent, seen in "+
					"7 of 8 runs): with Go's HTTP/2 client, a POST with a body to a route the relay does not serve, sent while a call is in flight on the "+
					"same relayed connection, made the relay end the connection with GOAWAY(PROTOCOL_ERROR): the call in "+
					"flight failed (%q) instead of being answered 200 ok; the POST itself got %q", got, post)
			}
			t.Errorf("the call in flight: %q, want 200 ok", got)
		}
	})
}

// An upstream response whose header list is larger than the sidecar takes (the listener's
// max head bytes, 60 KiB by default), in fields each small: the caller must not get the
// response with fields silently dropped; an error status (502/503) or a reset is right,
// and so is the whole header.
func TestFrameRelayOversizedUpstreamResponseHeadersAreNotSilentlyTruncated(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			for i := range 100 {
				w.Header().Set(fmt.Sprintf("X-F%03d", i), strings.Repeat("v", 1000))
			}
			w.Header().Set("X-Zz-Last", "last")
			_, _ = io.WriteString(w, "body")
		})
		_, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))
		c := dialFC(t, base, false)
		id := c.open(reqFields("GET", "/bighead", "reviews"), true)
		r, ok := c.wait(id, 10*time.Second)
		if !ok {
			t.Fatalf("no answer within 10 s: %v (connection %v)", r, c.err())
		}
		n := 0
		for _, f := range r.fields {
			if strings.HasPrefix(f.Name, "x-f") || f.Name == "x-zz-last" {
				n++
			}
		}
		t.Logf("a 100 KiB response header: status %q, %d of 101 fields, reset %v", r.status, n, r.rst)
		if r.rst == nil && r.status == "200" && n != 101 {
			if !goroutines {
				t.Errorf("regression (fixed in session 12): the frame relay passes on an upstream response whose header list is past its limit "+
					"(101 fields, ~100 KiB; the upstream reader's MaxHeaderListSize is the listener's max head bytes, "+
					"60 KiB) with the fields past the limit silently dropped: the caller got 200 and body %q with %d of "+
					"the 101 fields. upHeaders does not look at MetaHeadersFrame.Truncated; the attempt should fail "+
					"(502/503 or a reset), not lose headers", r.body, n)
			}
			t.Errorf("the caller got 200 with %d of 101 fields", n)
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

// Bounds before and beyond the first request. More than 64 KiB of frames before any
// request (here PRIORITY frames, which ask for nothing) is not kept by the relay: the
// connection goes to net/http, which serves the request that follows. A frame larger than
// the 16 KiB the relay advertises ends a relayed connection with FRAME_SIZE_ERROR rather
// than being read (net/http's server advertises 1 MiB and takes it).
func TestFrameRelayBoundsBeforeAndAfterTheFirstRequest(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := h2cBackend(t, echoHandler(nil))
		sc, base := relaySidecar(t, goroutines, relayHosts(be.URL, "", nil))
		c := dialFCWith(t, base, false, func(fr *http2.Framer) {
			for range (70 << 10) / 14 { // 14 bytes a PRIORITY frame: 70 KiB in all
				_ = fr.WritePriority(99, http2.PriorityParam{StreamDep: 0, Weight: 15})
			}
		}, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
		c.get("reviews", "/after-priorities", "GET /after-priorities body=")
		wantRelayed(t, sc, true, 0) // net/http served it, on both paths

		c2 := dialFC(t, base, true)
		id := c2.open(reqFields("POST", "/big-frame", "reviews"), false)
		if err := c2.write(func() error { return c2.fr.WriteData(id, true, bytes.Repeat([]byte("x"), 20<<10)) }); err != nil {
			t.Fatal(err) // one 20 KiB frame
		}
		if goroutines {
			if r, ok := c2.wait(id, 5*time.Second); !ok || r.status != "200" {
				t.Errorf("net/http with a 20 KiB DATA frame: %v (ended %v), want 200", r, ok)
			}
			return
		}
		if g := c2.goAway(5 * time.Second); g == nil || g.ErrCode != http2.ErrCodeFrameSize {
			t.Errorf("a 20 KiB DATA frame on the relay: GOAWAY %v, want FRAME_SIZE_ERROR", goAwayString(g))
		}
		if !c2.closedWithin(5 * time.Second) {
			t.Errorf("the relay kept the connection open after an oversized frame")
		}
	})
}
