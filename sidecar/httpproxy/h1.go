package httpproxy

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/httphead"
	"github.com/weftmesh/weft/sidecar/telemetry"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// The HTTP/1.1 front end. Requests are parsed by the standard library's http.ReadRequest
// (the same strict parser net/http's server uses) and validated as that server does, but
// the per-request machinery of http.Server — a cancelable context, a background reader
// goroutine and its deadline juggling, the pooled response object — is skipped. That
// machinery was a fifth of the proxy's CPU per request. Connections that open with the
// HTTP/2 preface go to a standard http.Server configured for h2c.

// maxBodyDrain is how much of a request body the handler left unread is read and dropped
// to keep the connection; more, and the connection closes instead.
const maxBodyDrain = 256 << 10

var h2Preface = []byte("PRI * HTTP/2.0\r\n")

var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}
var writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4096) }}

// accept returns the next connection of ln, or false once ln is closed. A failed accept
// (out of descriptors) pauses accepting (acceptBackoff) while the connections already open
// are served.
func (l *Listener) accept(ln net.Listener, backoff *acceptBackoff) (net.Conn, bool) {
	for {
		conn, err := ln.Accept()
		if err == nil {
			backoff.reset()
			return conn, true
		}
		if errors.Is(err, net.ErrClosed) {
			return nil, false
		}
		l.acceptErrors.Add(1)
		time.Sleep(backoff.next())
	}
}

// serve accepts connections until ln is closed. A failed accept (out of descriptors)
// pauses accepting (acceptBackoff) while the connections already open are served.
func (l *Listener) serve(ln net.Listener) {
	var backoff acceptBackoff
	for {
		conn, ok := l.accept(ln, &backoff)
		if !ok {
			return
		}
		if l.divertConn(conn) { // captured for another filter chain (capture.go)
			conn.Close()
			continue
		}
		l.connections.Add(1)
		if !l.admitConn() {
			conn.Close()
			continue
		}
		go l.serveConn(conn, nil, nil)
	}
}

// connState is what shutdown needs to know of an HTTP/1 connection: whether it is
// serving a request now. Atomics, so marking it costs no lock per request.
type connState struct{ active atomic.Bool }

// register adds conn to the connections shutdown waits for; draining reports that
// shutdown has begun.
func (l *Listener) register(conn net.Conn) (st *connState, draining bool) {
	st = &connState{}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.conns[conn] = st
	return st, l.draining.Load()
}

// track marks the connection active (serving a request) or idle and reports whether
// shutdown has begun. Store-then-load on both sides: either shutdown sees this
// connection idle, or the connection sees shutdown.
func (l *Listener) track(st *connState, active bool) (draining bool) {
	st.active.Store(active)
	return l.draining.Load()
}

func (l *Listener) forget(conn net.Conn) {
	l.mu.Lock()
	delete(l.conns, conn)
	if len(l.conns) == 0 {
		l.idleCond.Broadcast()
	}
	l.mu.Unlock()
}

// deadlineAfter is now+d, or no deadline (zero) for d == 0.
func deadlineAfter(now time.Time, d time.Duration) time.Time {
	if d == 0 {
		return time.Time{}
	}
	return now.Add(d)
}

// buffered returns what br holds, unread.
func buffered(br *bufio.Reader) []byte {
	buf, _ := br.Peek(br.Buffered())
	return buf
}

// readRequest parses the next request: on the fast path (httphead) when its head, of
// length head as bufferedHead measured it, is buffered whole and ordinary, else with
// http.ReadRequest.
func readRequest(br *bufio.Reader, head int) (req *http.Request, fast bool, err error) {
	if head > 0 {
		buf, _ := br.Peek(head)
		if h, ok := httphead.ParseRequest(buf); ok {
			_, _ = br.Discard(head)
			return h.Request(br), true, nil
		}
	}
	req, err = http.ReadRequest(br)
	return req, false, err
}

// validate applies the checks net/http's server makes beyond parsing. ReadRequest has
// already refused repeated Host headers and moved Host out of the header map.
func validate(req *http.Request) string {
	if req.ProtoAtLeast(1, 1) && req.Host == "" {
		return "missing required Host header"
	}
	if !httpguts.ValidHostHeader(req.Host) {
		return "malformed Host header"
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return "invalid header name"
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return "invalid header value"
			}
		}
	}
	return ""
}

func badRequest(bw *bufio.Writer, msg string) {
	bw.WriteString("HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: ")
	bw.WriteString(strconv.Itoa(len(msg) + 1))
	bw.WriteString("\r\n\r\n")
	bw.WriteString(msg)
	bw.WriteString("\n")
	_ = bw.Flush()
}

// h1Writer is the http.ResponseWriter for one HTTP/1.x response. It frames the body by
// the Content-Length the handler set, or chunked when there is none.
type h1Writer struct {
	conn        net.Conn
	br          *bufio.Reader
	bw          *bufio.Writer
	header      http.Header
	req         *http.Request
	wroteHeader bool
	watched     bool // WatchClose ran: the read deadline was cleared
	chunked     bool
	noBody      bool
	close       bool
	// drain, when set, is the listener's: a drain that begins while the handler runs still
	// closes the connection after this response, so the head must say so (issue 12 item 7).
	drain   *atomic.Bool
	discard bool                 // the handler's response is replaced: its body is dropped
	aborted bool                 // the body broke midway (abortBody): no last chunk, then close
	body    *malformedBody       // a chunked request body, watched for broken framing
	trailer http.Header          // sent in the last chunk (setTrailers)
	status  int                  // the status sent (telemetry.go)
	rec     telemetry.HTTPRecord // the exchange's telemetry (telemetry.go)
}

func (w *h1Writer) reset(req *http.Request, closeAfter bool) {
	if w.header == nil {
		w.header = make(http.Header, 8)
	} else {
		clear(w.header)
	}
	w.status = 0
	w.req, w.wroteHeader, w.chunked, w.noBody, w.watched, w.discard, w.body, w.aborted, w.trailer = req, false, false, false, false, false, nil, false, nil
	w.close = closeAfter || req.Close || !req.ProtoAtLeast(1, 1) && !httpguts.HeaderValuesContainsToken(req.Header["Connection"], "keep-alive")
}

func (w *h1Writer) Header() http.Header { return w.header }

func (w *h1Writer) WriteHeader(code int) {
	if w.wroteHeader || code < 200 {
		return // 1xx interim responses are not forwarded
	}
	w.wroteHeader, w.status = true, code
	if w.drain != nil && w.drain.Load() {
		w.close = true
	}
	bw := w.bw
	if w.body != nil && w.body.err != nil {
		// The request body's framing broke (an invalid chunk size): the caller's fault,
		// whatever the handler made of it; the connection closes.
		w.discard, w.close = true, true
		bw.Write(httphead.AppendProblem(nil, &httphead.Problem{Status: http.StatusBadRequest,
			Reason: "malformed chunked request body: " + w.body.err.Error()}))
		return
	}
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(code))
	bw.WriteByte(' ')
	bw.WriteString(http.StatusText(code))
	bw.WriteString("\r\n")
	w.noBody = w.req.Method == http.MethodHead || code == http.StatusNoContent || code == http.StatusNotModified
	_, hasLen := w.header["Content-Length"]
	if !hasLen && !w.noBody {
		if w.req.ProtoAtLeast(1, 1) {
			w.chunked = true
		} else {
			w.close = true // HTTP/1.0: the body ends when the connection does
		}
	}
	for k, vv := range w.header {
		for _, v := range vv {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	if w.chunked {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if w.close {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("\r\n")
}

func (w *h1Writer) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.noBody || w.discard || len(p) == 0 {
		return len(p), nil
	}
	w.rec.RespBytes += int64(len(p))
	if w.chunked {
		w.bw.WriteString(strconv.FormatInt(int64(len(p)), 16))
		w.bw.WriteString("\r\n")
		n, err := w.bw.Write(p)
		w.bw.WriteString("\r\n")
		return n, err
	}
	return w.bw.Write(p)
}

// Flush sends what is buffered, so streamed responses reach the caller as they come.
func (w *h1Writer) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	_ = w.bw.Flush()
}

func (w *h1Writer) finish() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.chunked && !w.discard && !w.aborted {
		if len(w.trailer) == 0 {
			w.bw.WriteString("0\r\n\r\n")
			return
		}
		w.bw.WriteString("0\r\n")
		for k, vv := range w.trailer {
			if !httpguts.ValidHeaderFieldName(k) {
				continue
			}
			for _, v := range vv {
				if httpguts.ValidHeaderFieldValue(v) {
					w.bw.WriteString(k)
					w.bw.WriteString(": ")
					w.bw.WriteString(v)
					w.bw.WriteString("\r\n")
				}
			}
		}
		w.bw.WriteString("\r\n")
	}
}

func (w *h1Writer) abortBody() { w.aborted, w.close = true, true }

// peekedConn replays what the preface check buffered before reading the connection
// (its reads go through connio.Conn). It is an h2c connection: net/http's HTTP/2 server
// flushes every frame it writes, and w (upstream.FlushBehind) coalesces those flushes into
// one write(2) per turn of the scheduler, made without the runtime's syscall bracket, for
// the reasons given in sidecar/upstream/h2flush.go and h2sock.go (nil: through the
// connection's Write).
type peekedConn struct {
	net.Conn
	r *bufio.Reader
	w *upstream.FlushBehind
}

func (c *peekedConn) Read(p []byte) (int, error) {
	if c.w != nil && c.r.Buffered() == 0 {
		c.w.FlushPending() // the read may wait: queued frames leave first (FlushBehindDelay)
	}
	return c.r.Read(p)
}

func (c *peekedConn) Write(p []byte) (int, error) {
	if c.w == nil {
		return c.Conn.Write(p)
	}
	return c.w.Write(p)
}

// SetWriteDeadline leaves the socket's write deadline to the FlushBehind (net/http's
// server would clear it after each Write it queued).
func (c *peekedConn) SetWriteDeadline(t time.Time) error {
	if c.w != nil {
		return c.w.SetWriteDeadline(t)
	}
	return c.Conn.SetWriteDeadline(t)
}

// SetDeadline sets the read deadline, and the write deadline as SetWriteDeadline does.
func (c *peekedConn) SetDeadline(t time.Time) error {
	if err := c.Conn.SetReadDeadline(t); err != nil {
		return err
	}
	return c.SetWriteDeadline(t)
}

// h2Server serves prior-knowledge h2c connections with the standard library. Its server
// starts with the first h2c connection and takes the listener's limits in force then:
// MaxHeaderBytes (sent as SETTINGS_MAX_HEADER_LIST_SIZE and enforced per header block),
// the head timeout and the idle timeout. A connection none of whose bytes can be written
// for frameWriteTimeout (a caller that stopped reading) is closed, as on the frame relay:
// its writes go through a FlushBehind that keeps that write deadline (net/http's
// WriteByteTimeout would be cleared after each queued Write, see h2flush.go).
type h2Server struct {
	srv   *http.Server
	conns chan net.Conn
	done  chan struct{}
	addr  net.Addr
	once  sync.Once
	start sync.Once
	lim   func() *config.HTTPLimits
}

func newH2Server(h http.Handler, addr net.Addr, lim func() *config.HTTPLimits) *h2Server {
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	// The relay's limits (frames.go): net/http's defaults are 250 streams and 1 MiB per
	// stream and per connection, so one stream whose upstream reads slowly held the
	// window every other stream of the connection needed for its body.
	h2 := &http.HTTP2Config{MaxConcurrentStreams: frameMaxStreams,
		MaxReceiveBufferPerStream: frameStreamWindow, MaxReceiveBufferPerConnection: frameConnWindow}
	return &h2Server{srv: &http.Server{Handler: h, Protocols: &protocols, HTTP2: h2},
		conns: make(chan net.Conn), done: make(chan struct{}), addr: addr, lim: lim}
}

func (s *h2Server) handoff(c net.Conn) {
	s.start.Do(func() {
		lim := s.lim()
		s.srv.MaxHeaderBytes = lim.MaxHeadBytes
		s.srv.ReadHeaderTimeout = lim.HeadTimeout
		s.srv.IdleTimeout = lim.IdleTimeout
		go func() { _ = s.srv.Serve(s) }()
	})
	select {
	case s.conns <- c:
	case <-s.done:
		c.Close()
	}
}

// Accept, Close and Addr make h2Server the net.Listener its http.Server serves.
func (s *h2Server) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.done:
		return nil, net.ErrClosed
	}
}

func (s *h2Server) Close() error {
	s.once.Do(func() { close(s.done) })
	return nil
}

func (s *h2Server) Addr() net.Addr { return s.addr }

// WatchClose returns a context that ends when the downstream connection closes, for the
// long waits (cold-start holds, function calls) where an abandoned caller must give its
// slot back. Nothing else may read the connection until the returned stop is called (the
// request body is read before the watch or after it): stop ends the background read, as
// net/http's server does around its handlers.
func (w *h1Writer) WatchClose(parent context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancel(parent)
	w.watched = true
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Peek does not consume: pipelined requests stay buffered. Asking for one byte
		// more than is buffered waits for the next arrival, so a hang-up behind pipelined
		// requests is seen too, until the buffer is full.
		for {
			n := w.br.Buffered() + 1
			if n > w.br.Size() {
				return
			}
			if _, err := w.br.Peek(n); err != nil {
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					cancel()
				}
				return
			}
		}
	}()
	return ctx, func() {
		_ = w.conn.SetReadDeadline(time.Unix(1, 0))
		<-done
		_ = w.conn.SetReadDeadline(time.Time{})
		cancel()
	}
}
