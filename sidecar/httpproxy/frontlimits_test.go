package httpproxy_test

import (
	"errors"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	connlimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/connection_limit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// Tests of issue 12 items 1–4 on the front end, each on both paths: header limits and
// request smuggling here; slowloris, the connection cap, accept back-off and the heads'
// memory budget in frontconns_test.go; malformed upstream responses in upstreambad_test.go.

// bothPaths runs f against a sidecar with the event loop and one with a goroutine per
// connection.
func bothPaths(t *testing.T, f func(t *testing.T, goroutines bool)) {
	t.Run("event loop", func(t *testing.T) { f(t, false) })
	t.Run("goroutines", func(t *testing.T) { f(t, true) })
}

// listenerOpts edits the outbound listener: its HCM, and a connection_limit filter when
// maxConns > 0.
type listenerOpts struct {
	hcm      func(*hcmv3.HttpConnectionManager)
	maxConns uint64
}

func limitedListener(o listenerOpts) *listenerv3.Listener {
	l := st.OutboundListener()
	f := l.FilterChains[0].Filters[0]
	var hcm hcmv3.HttpConnectionManager
	if err := f.GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		panic(err)
	}
	if o.hcm != nil {
		o.hcm(&hcm)
	}
	a, _ := anypb.New(&hcm)
	f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
	if o.maxConns > 0 {
		cl, _ := anypb.New(&connlimitv3.ConnectionLimit{StatPrefix: "outbound_http", MaxConnections: wrapperspb.UInt64(o.maxConns)})
		l.FilterChains[0].Filters = append([]*listenerv3.Filter{{Name: "envoy.filters.network.connection_limit",
			ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: cl}}}, l.FilterChains[0].Filters...)
	}
	return l
}

// countingBackend answers "ok" and counts requests, and separately those for /smuggled.
type countingBackend struct {
	all, smuggled atomic.Int64
}

func (b *countingBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.all.Add(1)
	if r.URL.Path == "/smuggled" {
		b.smuggled.Add(1)
	}
	_, _ = io.Copy(io.Discard, r.Body)
	_, _ = io.WriteString(w, "ok")
}

func limitedSidecar(t *testing.T, goroutines bool, h http.HandlerFunc, o listenerOpts) (*st.Sidecar, string) {
	t.Helper()
	be := st.Backend(t, "", h)
	cp := st.StartControlPlane(t)
	snap, _ := oneBackend([]string{be.URL}, nil)
	snap.Listeners = []types.Resource{limitedListener(o)}
	cp.Set(snap)
	sc := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
	return sc, sc.URL(t, st.OutboundListenerName)
}

// closedSoon asserts the sidecar closes c (EOF or reset) within 5 s, sending nothing more.
func (c *rawConn) closedSoon(what string) {
	c.t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c.br)
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		c.t.Fatalf("%s: the connection is still open", what)
	case len(b) > 0:
		c.t.Fatalf("%s: got %q after the answer, want the connection closed", what, b)
	}
}

// statValue reads one listener metric from /stats.
func statValue(t *testing.T, sc *st.Sidecar, name string) int64 {
	t.Helper()
	var b strings.Builder
	sc.Proxy.WritePrometheus(&b)
	m := regexp.MustCompile(name + `\{listener="outbound_http"\} (\d+)`).FindStringSubmatch(b.String())
	if m == nil {
		t.Fatalf("no %s in /stats:\n%s", name, b.String())
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

func TestHeaderLimitsAnswer431(t *testing.T) {
	head := func(fields, valueLen int) string {
		var b strings.Builder
		b.WriteString("GET / HTTP/1.1\r\nHost: reviews\r\n")
		for i := range fields {
			b.WriteString("X-F" + strconv.Itoa(i) + ": " + strings.Repeat("v", valueLen) + "\r\n")
		}
		return b.String() + "\r\n"
	}
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := &countingBackend{}
		sc, base := limitedSidecar(t, goroutines, be.ServeHTTP, listenerOpts{})
		for _, tc := range []struct {
			name   string
			raw    string
			status int
			says   string
		}{
			{"99 fields and Host: 100", head(99, 1), 200, "ok"},
			{"101 fields", head(101, 1), 431, "max_headers_count"},
			{"a 59 KiB head", head(1, 59<<10), 200, "ok"},
			{"a 61 KiB head", head(1, 61<<10), 431, "max_request_headers_kb"},
			{"a 16 MB head", head(1, 16<<20), 431, "max_request_headers_kb"},
		} {
			c := dialRaw(t, base)
			go func() { _, _ = io.WriteString(c.conn, tc.raw) }() // the sidecar may stop reading early
			resp, body := c.read("GET")
			if resp.StatusCode != tc.status || !strings.Contains(body, tc.says) {
				t.Errorf("%s: %d %q, want %d saying %q", tc.name, resp.StatusCode, body, tc.status, tc.says)
			}
			if tc.status == 431 {
				c.closedSoon(tc.name)
			}
		}
		if n := statValue(t, sc, "weft_listener_requests_refused_total"); n != 3 {
			t.Errorf("refused heads in /stats: %d, want 3", n)
		}
	})
}

func TestHeaderLimitsComeFromTheHCM(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := &countingBackend{}
		_, base := limitedSidecar(t, goroutines, be.ServeHTTP, listenerOpts{hcm: func(h *hcmv3.HttpConnectionManager) {
			h.MaxRequestHeadersKb = wrapperspb.UInt32(2)
			h.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{MaxHeadersCount: wrapperspb.UInt32(3)}
		}})
		for _, tc := range []struct {
			raw    string
			status int
		}{
			{"GET / HTTP/1.1\r\nHost: reviews\r\nA: 1\r\nB: 2\r\n\r\n", 200},
			{"GET / HTTP/1.1\r\nHost: reviews\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", 431},
			{"GET / HTTP/1.1\r\nHost: reviews\r\nA: " + strings.Repeat("a", 1900) + "\r\n\r\n", 200},
			{"GET / HTTP/1.1\r\nHost: reviews\r\nA: " + strings.Repeat("a", 2100) + "\r\n\r\n", 431},
		} {
			c := dialRaw(t, base)
			c.write(tc.raw)
			if resp, body := c.read("GET"); resp.StatusCode != tc.status {
				t.Errorf("%.60q: %d %q, want %d", tc.raw, resp.StatusCode, body, tc.status)
			}
		}
	})
}

// hidden is a second request inside the body of a refused one: it must never be answered
// or forwarded.
const hidden = "GET /smuggled HTTP/1.1\r\nHost: reviews\r\n\r\n"

// TestRequestSmugglingIsRefusedAndClosed pins issue 12 item 4: CL with TE was served and
// the connection kept, so a request hidden in the body was answered; an invalid chunk
// size got 503.
func TestRequestSmugglingIsRefusedAndClosed(t *testing.T) {
	post := "POST / HTTP/1.1\r\nHost: reviews\r\n"
	cases := []struct {
		name   string
		raw    string
		status int
	}{
		{"CL and TE", post + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + hidden, 400},
		{"TE and CL", post + "Transfer-Encoding: chunked\r\nContent-Length: 48\r\n\r\n0\r\n\r\n" + hidden, 400},
		{"duplicate CL", post + "Content-Length: 0\r\nContent-Length: 0\r\n\r\n" + hidden, 400},
		{"conflicting CL", post + "Content-Length: 0\r\nContent-Length: 43\r\n\r\n" + hidden, 400},
		{"TE gzip, chunked", post + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + hidden, 501},
		{"TE chunked, identity", post + "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + hidden, 501},
		{"TE xchunked", post + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + hidden, 501},
		{"obs-fold", post + "X-A: a\r\n b\r\nContent-Length: 0\r\n\r\n" + hidden, 400},
		{"bare LF", "GET / HTTP/1.1\nHost: reviews\n\n" + hidden, 400},
		{"space before colon", post + "Content-Length : 43\r\n\r\n" + hidden, 400},
		{"invalid chunk size", post + "Transfer-Encoding: chunked\r\n\r\nzz\r\n" + hidden, 400},
	}
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := &countingBackend{}
		_, base := limitedSidecar(t, goroutines, be.ServeHTTP, listenerOpts{})
		for _, tc := range cases {
			c := dialRaw(t, base)
			c.write(tc.raw)
			resp, body := c.read("POST")
			if resp.StatusCode != tc.status || len(body) < 10 {
				t.Errorf("%s: %d %q, want %d with a body saying why", tc.name, resp.StatusCode, body, tc.status)
			}
			c.closedSoon(tc.name)
		}
		// The backend is reachable, and never saw a hidden request.
		c := dialRaw(t, base)
		c.write("GET /after HTTP/1.1\r\nHost: reviews\r\n\r\n")
		if resp, body := c.read("GET"); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("a plain request after the set: %d %q", resp.StatusCode, body)
		}
		if n := be.smuggled.Load(); n != 0 {
			t.Errorf("the backend answered %d hidden requests", n)
		}
	})
}

// TestH2CHeaderLimit: the h2c server takes max_request_headers_kb too (it advertises it as
// SETTINGS_MAX_HEADER_LIST_SIZE and answers 431 past it); it used net/http's 1 MB default.
func TestH2CHeaderLimit(t *testing.T) {
	be := &countingBackend{}
	_, base := limitedSidecar(t, false, be.ServeHTTP, listenerOpts{})
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	h2c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Protocols: &protocols}}
	do := func(valueLen int) (int, error) {
		req, _ := http.NewRequest(http.MethodGet, base+"/", nil)
		req.Host = "reviews"
		req.Header.Set("X-Big", strings.Repeat("v", valueLen))
		resp, err := h2c.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		if resp.ProtoMajor != 2 {
			t.Fatalf("answered over %s, want HTTP/2", resp.Proto)
		}
		return resp.StatusCode, nil
	}
	if code, err := do(1 << 10); code != 200 {
		t.Fatalf("a 1 KiB header over h2c: %d %v", code, err)
	}
	// Past the limit the client refuses to send (it knows the server's setting) or the
	// server answers 431.
	if code, err := do(70 << 10); code != http.StatusRequestHeaderFieldsTooLarge && (err == nil || !strings.Contains(err.Error(), "header list")) {
		t.Errorf("a 70 KiB header over h2c: %d %v, want 431 or the client refusing to send it", code, err)
	}
	if n := be.all.Load(); n != 1 {
		t.Errorf("the backend saw %d requests, want 1", n)
	}
}
