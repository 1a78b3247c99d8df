package httpproxy

import (
	"github.com/weftmesh/weft/sidecar/telemetry"

	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// gRPC over the proxy: a gRPC call is an HTTP/2 POST with content-type application/grpc
// whose status travels in the grpc-status trailer (or, for a call answered without a
// body, in the headers: a Trailers-Only response). The proxy passes trailers both ways,
// counts grpc-status per cluster, retries on the gRPC conditions of retryOn (Envoy's
// x-envoy-retry-grpc-on), never lets a call outlive the caller's grpc-timeout, and
// answers a call it cannot carry as gRPC does — HTTP 200, grpc-status and grpc-message —
// never with an HTML 503 a gRPC client cannot read.

// isGRPC reports whether r is a gRPC call (application/grpc, +proto, +json, …).
func isGRPC(r *http.Request) bool {
	ct := r.Header.Get("Content-Type")
	return strings.HasPrefix(ct, "application/grpc") && (len(ct) == len("application/grpc") || ct[len("application/grpc")] == '+' || ct[len("application/grpc")] == ';')
}

// grpcTimeout parses the grpc-timeout header ("100m", "5S": at most 8 digits and a unit
// of H, M, S, m, u, n). ok is false when absent or malformed.
func grpcTimeout(h http.Header) (time.Duration, bool) {
	v := h.Get("Grpc-Timeout")
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	var unit time.Duration
	switch v[len(v)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	return time.Duration(n) * unit, true // ≤ 99,999,999 H overflows int64: gRPC caps it the same way
}

// gRPC status codes the proxy answers with.
const (
	grpcDeadlineExceeded = 4
	grpcUnimplemented    = 12
	grpcInternal         = 13
	grpcUnavailable      = 14
	grpcUnknown          = 2
)

// grpcCodeFor maps the HTTP status of a local answer to the gRPC status a gRPC caller gets
// (Envoy's Grpc::Utility::httpToGrpcStatus; a timeout is DEADLINE_EXCEEDED).
func grpcCodeFor(status int) int {
	switch status {
	case http.StatusBadRequest:
		return grpcInternal
	case http.StatusUnauthorized:
		return 16
	case http.StatusForbidden:
		return 7
	case http.StatusNotFound:
		return grpcUnimplemented
	case http.StatusGatewayTimeout:
		return grpcDeadlineExceeded
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable:
		return grpcUnavailable
	}
	return grpcUnknown
}

// grpcReply answers a gRPC call locally as a Trailers-Only response: HTTP 200 whose
// headers carry grpc-status and grpc-message (percent-encoded as the gRPC spec says).
func grpcReply(w http.ResponseWriter, status int, msg string) {
	h := w.Header()
	delete(h, "Content-Length")
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", strconv.Itoa(grpcCodeFor(status)))
	h.Set("Grpc-Message", grpcEncodeMessage(strings.TrimSpace(msg)))
	w.WriteHeader(http.StatusOK)
}

// grpcEncodeMessage percent-encodes what the gRPC spec says grpc-message must not carry
// raw: bytes outside printable ASCII, and '%'.
func grpcEncodeMessage(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '%' {
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// grpcStatus reads a response's grpc-status: from its trailers once the body has been
// read, else from its headers (Trailers-Only). ok is false when it has none.
func grpcStatus(resp *http.Response) (code int, ok bool) {
	v := resp.Trailer.Get("Grpc-Status")
	if v == "" {
		v = resp.Header.Get("Grpc-Status")
	}
	if v == "" {
		return -1, false
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return -1, true
	}
	return n, true
}

// headerGRPCStatus is a Trailers-Only response's grpc-status (-1: none): what a retry may
// be decided on before any of the body is relayed, as Envoy does.
func headerGRPCStatus(resp *http.Response) int {
	if v := resp.Header.Get("Grpc-Status"); v != "" {
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
	}
	return -1
}

// h2Writer wraps net/http's HTTP/2 response writer for one request: it answers local
// replies to gRPC calls as gRPC, and resets the stream (http.ErrAbortHandler) when the
// upstream body broke, so the caller never sees a cut response end cleanly.
type h2Writer struct {
	http.ResponseWriter
	grpc    bool
	aborted bool
	status  int                  // the status sent (telemetry.go)
	rec     telemetry.HTTPRecord // the exchange's telemetry (telemetry.go)
}

func (w *h2Writer) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *h2Writer) abortBody() { w.aborted = true }

// end runs as the handler returns.
func (w *h2Writer) end() {
	if w.aborted {
		panic(http.ErrAbortHandler)
	}
}

// setTrailers sends trailer after the body: on HTTP/1.1 in the last chunk (h1Writer), on
// HTTP/2 as a trailing HEADERS frame (http.TrailerPrefix).
func setTrailers(w http.ResponseWriter, trailer http.Header) {
	if len(trailer) == 0 {
		return
	}
	switch tw := w.(type) {
	case *h1Writer:
		tw.trailer = trailer
	case *h2Writer:
		h := tw.Header()
		for k, vv := range trailer {
			h[http.TrailerPrefix+k] = vv
		}
	}
}

// replayTee streams a request body of unknown length (chunked, or an HTTP/2 stream
// without content-length — every gRPC call) upstream while keeping a copy of up to
// maxReplayBody bytes, as Envoy buffers for retries: once the body has ended within the
// limit, a retry sends the copy. Reads come from the transport's goroutine, the decision
// to retry from the handler's: the mutex orders them.
type replayTee struct {
	mu       sync.Mutex
	r        io.Reader
	buf      []byte
	done     bool // EOF seen within the limit
	overflow bool // more than maxReplayBody: not replayable
	read     bool // Read was called: the stream is no longer whole
}

func (t *replayTee) Read(p []byte) (int, error) {
	t.mu.Lock()
	t.read = true
	t.mu.Unlock()
	n, err := t.r.Read(p)
	t.mu.Lock()
	if n > 0 && !t.overflow {
		if len(t.buf)+n > maxReplayBody {
			t.overflow, t.buf = true, nil
		} else {
			t.buf = append(t.buf, p[:n]...)
		}
	}
	if err == io.EOF && !t.overflow {
		t.done = true
	}
	t.mu.Unlock()
	return n, err
}

// untouched reports that nothing has read the body yet: it can be sent as it is.
func (t *replayTee) untouched() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return !t.read
}

// body returns the whole body when it was read to its end within the limit.
func (t *replayTee) body() ([]byte, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.done || t.overflow {
		return nil, false
	}
	if t.buf == nil {
		return []byte{}, true
	}
	return t.buf, true
}

// trailerCopy copies the downstream request's trailers into dst when its body ends: the
// HTTP/1 and HTTP/2 servers fill r.Trailer only at EOF.
type trailerCopy struct {
	r   io.Reader
	req *http.Request
	dst http.Header
}

func (t *trailerCopy) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err == io.EOF {
		for k, vv := range t.req.Trailer {
			if len(vv) > 0 {
				t.dst[k] = vv
			}
		}
	}
	return n, err
}
