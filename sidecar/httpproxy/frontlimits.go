package httpproxy

import (
	"errors"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/httphead"
)

// How a listener bounds its downstream connections on both paths (issue 12): the head
// limits and timeouts of config.HTTPLimits, a cap on connections, and a pause in
// accepting when the process is out of descriptors.

// frontEnd is a listener's limits in force and the counters /stats shows for them.
type frontEnd struct {
	limits       atomic.Pointer[config.HTTPLimits]
	active       atomic.Int64  // downstream connections open now, on either path or h2c
	overflow     atomic.Uint64 // closed at accept: the listener was at its connection cap
	acceptErrors atomic.Uint64 // failed accepts (EMFILE, ENFILE, ...), each followed by a pause
	refused      atomic.Uint64 // request heads refused (431, 400, 501) before any routing
}

var defaultLimits = config.DefaultHTTPLimits()

// setLimits puts lim in force for connections' next heads and accepts. A zero lim (a
// config not decoded from xDS) means the defaults.
func (f *frontEnd) setLimits(lim config.HTTPLimits) {
	if lim == (config.HTTPLimits{}) {
		lim = defaultLimits
	}
	f.limits.Store(&lim)
}

// lim returns the limits in force (the defaults before the first Apply).
func (f *frontEnd) lim() *config.HTTPLimits {
	if p := f.limits.Load(); p != nil {
		return p
	}
	return &defaultLimits
}

func headLimits(lim *config.HTTPLimits) httphead.Limits {
	return httphead.Limits{MaxHeadBytes: lim.MaxHeadBytes, MaxHeaders: lim.MaxHeaders}
}

// admitConn counts a new downstream connection, or reports false (and counts the
// overflow) if the listener is at its cap: the caller closes the connection at once, as
// Envoy's connection_limit filter does.
func (f *frontEnd) admitConn() bool {
	if f.active.Add(1) > int64(f.lim().MaxConnections) {
		f.active.Add(-1)
		f.overflow.Add(1)
		return false
	}
	return true
}

// connClosed counts an admitted connection that has closed.
func (f *frontEnd) connClosed() { f.active.Add(-1) }

// headBudget bounds the memory all downstream connections of the process together hold
// in request-head buffers beyond the first few KiB each connection starts with. Per
// connection a head is bounded by max_request_headers_kb (60 KiB), but a thousand
// connections each holding an unfinished 59 KiB head would take 60 MB; beyond this budget
// a connection whose head needs a larger buffer is answered 503 and closed instead. Heads
// between services are a few hundred bytes, so the budget only ever binds under a flood.
var headBudget = newByteBudget(maxLargeHeadBytes)

// maxLargeHeadBytes is headBudget's size: 16 MiB, a quarter of the sidecar's 64 MB
// memory bar, which is 270 heads of 60 KiB at once.
const maxLargeHeadBytes = 16 << 20

// errHeadBudget is the refusal when headBudget is spent.
var errHeadBudget = &httphead.Problem{Status: http.StatusServiceUnavailable,
	Reason: "overloaded: too many large request heads are arriving at once; retry"}

// byteBudget is a count of bytes reserved against a limit, safe for concurrent use.
type byteBudget struct {
	used  atomic.Int64
	limit atomic.Int64
}

func newByteBudget(limit int64) *byteBudget {
	b := &byteBudget{}
	b.limit.Store(limit)
	return b
}

func (b *byteBudget) reserve(n int) bool {
	if b.used.Add(int64(n)) > b.limit.Load() {
		b.used.Add(-int64(n))
		return false
	}
	return true
}

func (b *byteBudget) release(n int) { b.used.Add(-int64(n)) }

// Accept back-off: after a failed accept, wait before the next, from acceptBackoffMin
// doubling to acceptBackoffMax, as net/http's Server does. Out of descriptors (EMFILE),
// accepting again at once fails again at once: the listener would spin a CPU while the
// connections it has go unserved.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

type acceptBackoff struct{ d time.Duration }

func (b *acceptBackoff) next() time.Duration {
	b.d = min(max(2*b.d, acceptBackoffMin), acceptBackoffMax)
	return b.d
}

func (b *acceptBackoff) reset() { b.d = 0 }

// Lingering after a refusal: the refused head may be followed by more bytes the caller
// is still sending. Closing with them unread makes the kernel send a reset, which can
// destroy the refusal before the caller reads it; so the write side is shut and input is
// read and dropped for up to lingerTime or lingerBytes first (net/http waits 500 ms).
const (
	lingerTime  = 500 * time.Millisecond
	lingerBytes = 256 << 10
)

// lingerClose shuts nc's write side, drops what arrives for a while, and closes it.
func lingerClose(nc net.Conn) {
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		nc.Close()
		return
	}
	_ = tc.CloseWrite()
	_ = tc.SetReadDeadline(time.Now().Add(lingerTime))
	_, _ = io.CopyN(io.Discard, tc, lingerBytes)
	tc.Close()
}

// malformedBody records that a request body's framing broke (an invalid chunk size, a
// bad chunk terminator): the request is then refused with 400 (h1Writer), whatever its
// handler answered, rather than blamed on the upstream.
type malformedBody struct {
	io.ReadCloser
	err error
}

func (b *malformedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF && !errors.Is(err, io.ErrUnexpectedEOF) && b.err == nil {
		var ne net.Error
		if !errors.As(err, &ne) && !errors.Is(err, net.ErrClosed) {
			b.err = err
		}
	}
	return n, err
}

// countedConn is an h2c connection handed to the standard server: its first Close counts
// it closed.
type countedConn struct {
	net.Conn
	f    *frontEnd
	once atomic.Bool
}

func (c *countedConn) Close() error {
	if c.once.CompareAndSwap(false, true) {
		c.f.connClosed()
	}
	return c.Conn.Close()
}

// bodyAborter is implemented by the HTTP/1 response writer: abortBody says the body being
// copied broke (an upstream reset, an invalid chunk size), so the response must not end
// as if it were whole — no last chunk, and the connection closes — or the caller would
// take a truncated body for the full one, or read the next response as the rest of it.
type bodyAborter interface{ abortBody() }
