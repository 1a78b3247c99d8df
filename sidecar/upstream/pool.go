package upstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"sync"
	"time"

	"github.com/weftmesh/weft/sidecar/connio"
	"github.com/weftmesh/weft/sidecar/httphead"
)

// pool is one host's keep-alive HTTP/1.1 connections. The proxy writes the request and
// reads the response on its own goroutine: unlike net/http.Transport there is no
// read-loop/write-loop hand-off per request, which is most of a proxy hop's CPU after the
// syscalls themselves.
type pool struct {
	mu   sync.Mutex
	idle []*pconn
}

type pconn struct {
	c        *Cluster // whose max_connections slot it holds
	closed   bool
	conn     *connio.Conn
	br       *bufio.Reader
	bw       *bufio.Writer
	used     uint32
	idleAt   time.Time
	reusable bool
	deadline bool // a deadline is set and must be cleared before reuse
}

var aLongTimeAgo = time.Unix(1, 0)

func noStop() bool { return true }

func (p *pool) get(idleTimeout time.Duration) *pconn {
	p.mu.Lock()
	defer p.mu.Unlock()
	for n := len(p.idle); n > 0; n = len(p.idle) {
		pc := p.idle[n-1]
		p.idle = p.idle[:n-1]
		if idleTimeout > 0 && time.Since(pc.idleAt) > idleTimeout {
			pc.close(true)
			continue
		}
		pc.c.IdleTaken(goroutinePools)
		return pc
	}
	return nil
}

// put keeps pc, which finished a request to h and may carry another: it goes to the
// request waiting at the head of the cluster's queue for h, else into the pool (or closed,
// past maxIdle or when the head waits for another host or path, whose slot it frees).
func (p *pool) put(pc *pconn, h *Host, maxIdle int) {
	w, keep := pc.c.ConnIdle(h, goroutinePools)
	switch {
	case w != nil:
		w.Hand(pc)
		return
	case !keep:
		pc.close(false)
		return
	}
	pc.idleAt = time.Now()
	p.mu.Lock()
	if len(p.idle) < maxIdle {
		p.idle = append(p.idle, pc)
		pc = nil
	}
	p.mu.Unlock()
	if pc != nil {
		pc.close(true)
	}
}

func (p *pool) closeIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, pc := range idle {
		pc.close(true)
	}
}

// takeIdle removes one idle connection, if any.
func (p *pool) takeIdle() *pconn {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.idle)
	if n == 0 {
		return nil
	}
	pc := p.idle[0] // the longest idle
	p.idle = append(p.idle[:0], p.idle[1:]...)
	return pc
}

// close closes the connection and gives its max_connections slot back, once; wasIdle
// says it sat in a pool.
func (pc *pconn) close(wasIdle bool) {
	if pc.closed {
		return
	}
	pc.closed = true
	pc.conn.Close()
	pc.c.ConnClosed(goroutinePools, wasIdle)
}

// goroutinePools is the goroutine path's owner of idle connections: the host pools.
var goroutinePools IdleOwner = hostPools{}

type hostPools struct{}

// ReclaimIdle closes one of c's idle pooled connections, so a request waiting for a
// connection (on another host, or on an event loop) gets its slot.
func (hostPools) ReclaimIdle(c *Cluster) {
	for _, h := range c.Hosts() {
		if pc := h.pool.takeIdle(); pc != nil {
			pc.close(true)
			return
		}
	}
}

// connFor gets a connection slot for a request to h when h's pool had no idle connection:
// at once if max_connections allows one more (nil, nil: dial), else by waiting in the
// cluster's queue until deadline (zero: no limit) or ctx ends, for a slot or for a
// connection to h handed over (returned). A full queue is a *PoolFullError at once.
func (c *Cluster) connFor(ctx context.Context, h *Host, deadline time.Time) (*pconn, error) {
	ready := make(chan struct{}, 1)
	ok, w, err := c.OpenConn(h, goroutinePools, func() { ready <- struct{}{} })
	switch {
	case err != nil:
		return nil, err
	case ok:
		return nil, nil
	}
	var expired <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		expired = t.C
	}
	select {
	case <-ready:
		pc, _ := w.Conn.(*pconn)
		return pc, nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-expired:
		err = &PoolTimeoutError{Cluster: c.Name}
	}
	if c.CancelWait(w) {
		<-ready // granted meanwhile: give back what came
		if pc, _ := w.Conn.(*pconn); pc != nil {
			pc.close(false)
		} else {
			c.ConnClosed(goroutinePools, false)
		}
	}
	return nil, err
}

// RoundTrip sends req to host h over a pooled connection and returns the response with
// its headers read; the body streams from the connection, which goes back to the pool
// when the body has been read to the end. req.URL supplies the path and query, req.Host
// the Host header. A request with a nil Body or a GetBody is retried once on a fresh
// connection if a reused one turns out to have been closed by the server.
//
// deadline (zero for none) bounds the whole exchange including the body, enforced as a
// connection deadline; ctx ending (the caller went away) aborts it too.
func (c *Cluster) RoundTrip(ctx context.Context, req *Request, h *Host, deadline time.Time) (*http.Response, error) {
	if req.HTTP2 {
		return c.roundTripH2(ctx, req, h, deadline)
	}
	cc := c.cfg.Load()
	for try := 0; ; try++ {
		var pc *pconn
		if try == 0 {
			// The resend after a stale pooled connection goes on a new one, as the event
			// loop's does: a host that closed one has likely closed them all (it shut down).
			pc = h.pool.get(cc.IdleTimeout)
		}
		if pc == nil {
			var err error
			if pc, err = c.connFor(ctx, h, deadline); err != nil {
				return nil, err
			}
		}
		reused := pc != nil
		if pc == nil {
			d := net.Dialer{Timeout: cc.ConnectTimeout, Deadline: deadline, KeepAlive: 30 * time.Second}
			conn, err := d.DialContext(ctx, "tcp", h.Address)
			if err == nil {
				conn, err = c.originateTLS(ctx, conn, h, cc.ConnectTimeout, deadline) // meshtls.go
			}
			if err != nil {
				c.ConnClosed(goroutinePools, false)
				return nil, err
			}
			cc := connio.NewConn(conn)
			pc = &pconn{c: c, conn: cc, br: bufio.NewReaderSize(cc, 4096), bw: bufio.NewWriterSize(cc, 4096)}
		}
		c.flights.begin(pc, h, reused)
		resp, err := c.exchange(ctx, pc, req, h, deadline)
		if err == nil {
			return resp, nil
		}
		c.flights.end(pc)
		pc.close(false)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var stale *staleConnError
		if !reused || try > 0 || !errors.As(err, &stale) || isTimeout(err) {
			return nil, err
		}
		if req.Body != nil {
			return nil, err // a streamed body cannot be sent twice
		}
	}
}

// Request is what the proxy sends upstream. It carries only what the request line, Host
// and headers need, so building one per attempt costs no allocation.
type Request struct {
	Method string
	// URI is the request target: escaped path plus "?query" if any.
	URI    string
	Host   string
	Header http.Header
	// BodyBytes is a buffered body (replayable); Body a streamed one sent once, of
	// ContentLength bytes or chunked when ContentLength < 0. Both nil: no body.
	BodyBytes     []byte
	Body          io.Reader
	ContentLength int64
	// Trailer, when set, holds the request's trailers by the time Body reaches EOF; they
	// follow a chunked body (HTTP/1.1) or the last DATA frame (HTTP/2).
	Trailer http.Header
	// HTTP2 sends the request over the host's HTTP/2 connections (h2.go).
	HTTP2 bool
}

// Method-only requests for http.ReadResponse, which needs the method to know whether a
// body follows (HEAD) and nothing else.
var (
	headRequest  = &http.Request{Method: http.MethodHead}
	otherRequest = &http.Request{Method: http.MethodGet}
)

// staleConnError marks a failure before any response byte arrived on a reused
// connection: the server most likely closed it while idle.
type staleConnError struct{ err error }

func (e *staleConnError) Error() string { return "reused connection closed: " + e.err.Error() }
func (e *staleConnError) Unwrap() error { return e.err }

// IsResetBeforeResponse reports whether RoundTrip failed because the host closed or reset
// a fresh connection before any byte of a response (RoundTrip resends once when that
// happens on a reused one): a local-origin failure for outlier detection.
func IsResetBeforeResponse(err error) bool {
	var stale *staleConnError
	return errors.As(err, &stale) && !isTimeout(err)
}

func (c *Cluster) exchange(ctx context.Context, pc *pconn, req *Request, h *Host, deadline time.Time) (*http.Response, error) {
	// Only reads need the deadline: a request without a streamed body fits the socket
	// buffer. A connection keeps its last deadline while idle in the pool (nothing reads
	// it there), which saves the timer update that clearing it would cost.
	switch {
	case !deadline.IsZero():
		_ = pc.conn.SetReadDeadline(deadline)
		pc.deadline = true
	case pc.deadline:
		_ = pc.conn.SetReadDeadline(time.Time{})
		pc.deadline = false
	}
	if req.Body != nil {
		_ = pc.conn.SetWriteDeadline(deadline)
	}
	stop := noStop
	if ctx.Done() != nil { // HTTP/1 requests carry context.Background: nothing to watch
		stop = context.AfterFunc(ctx, func() { _ = pc.conn.SetDeadline(aLongTimeAgo) })
	}
	// A request without a streamed body is written by the read that waits for the
	// response (connio.Conn): one read(2) per response instead of two.
	pc.conn.Deferring = req.Body == nil
	err := writeRequest(pc.bw, req)
	pc.conn.Deferring = false
	if err != nil {
		stop()
		return nil, &staleConnError{err}
	}
	if _, err := pc.br.Peek(1); err != nil {
		stop()
		return nil, &staleConnError{err}
	}
	var resp *http.Response
	forMethod := otherRequest
	if req.Method == http.MethodHead {
		forMethod = headRequest
	}
	for {
		resp, err = readResponse(pc.br, forMethod)
		if err != nil {
			stop()
			return nil, fmt.Errorf("reading response from %s: %w", pc.conn.RemoteAddr(), err)
		}
		// Skip interim 1xx responses (100 Continue, 103 Early Hints); 101 is final.
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// The connection now carries the upgraded protocol, not HTTP: it is the body,
		// never pooled, and its deadlines are the tunnel's (set by the caller).
		stop()
		_ = pc.conn.SetDeadline(time.Time{})
		pre, _ := pc.br.Peek(pc.br.Buffered())
		resp.Body = &upgraded{PrefixConn: connio.PrefixConn{Conn: pc.conn.Conn, Pre: append([]byte(nil), pre...)}, conn: pc.conn}
		return resp, nil
	}
	pc.used++
	cc := c.cfg.Load()
	pc.reusable = !resp.Close && (cc.MaxRequestsPerConn == 0 || pc.used < cc.MaxRequestsPerConn)
	resp.Body = &body{rc: resp.Body, pc: pc, stop: stop, c: c, h: h}
	return resp, nil
}

// readResponse parses the next response: on the fast path (httphead) when its head is
// buffered whole and its body is framed by Content-Length (or absent), else with
// http.ReadResponse.
func readResponse(br *bufio.Reader, forMethod *http.Request) (*http.Response, error) {
	if p := httphead.CheckResponseFrom(br); p != nil {
		return nil, p // ambiguous framing: the connection is not reused (RoundTrip closes it)
	}
	if buf, _ := br.Peek(br.Buffered()); len(buf) > 0 {
		if n := httphead.End(buf); n > 0 {
			if h, ok := httphead.ParseResponse(buf[:n]); ok {
				noBody := forMethod.Method == http.MethodHead || h.Status == http.StatusNoContent || h.Status == http.StatusNotModified
				if noBody || h.ContentLength >= 0 {
					_, _ = br.Discard(n)
					x := &struct { // one allocation for the response and its body reader
						resp http.Response
						body httphead.Body
					}{resp: http.Response{StatusCode: h.Status, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
						Header: h.Header, Close: h.Close, ContentLength: h.ContentLength, Body: http.NoBody}}
					switch {
					case h.Status == http.StatusNoContent || h.Status == http.StatusNotModified:
						x.resp.ContentLength = 0
					case !noBody && h.ContentLength > 0:
						x.body = httphead.Body{R: br, N: h.ContentLength}
						x.resp.Body = &x.body
					}
					return &x.resp, nil
				}
			}
		}
	}
	return http.ReadResponse(br, forMethod)
}

// body returns the connection to its pool once the response has been read to EOF, and
// closes it if the caller gives up earlier.
type body struct {
	rc   io.ReadCloser
	pc   *pconn
	stop func() bool
	c    *Cluster
	done bool
	h    *Host // whose pool the connection goes back to
}

func (b *body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.finish(true)
	} else if err != nil {
		b.finish(false)
	}
	return n, err
}

func (b *body) Close() error {
	if !b.done {
		b.finish(false)
	}
	return nil
}

func (b *body) finish(complete bool) {
	b.done = true
	b.c.flights.end(b.pc)
	// stop reports false if the context already fired and poisoned the deadline.
	if b.stop() && complete && b.pc.reusable {
		b.h.pool.put(b.pc, b.h, int(min(b.c.cfg.Load().Limits.MaxConnections, 1024)))
		return
	}
	b.pc.close(false)
}

// writeRequest writes req in HTTP/1.1 form and flushes it. Header values come from the
// downstream parser (which validated them) or from config (validated at decode time).
func writeRequest(w *bufio.Writer, req *Request) error {
	if err := writeMessage(w, req); err != nil {
		return err
	}
	return w.Flush()
}

// AppendRequest appends req in HTTP/1.1 form to dst; req must carry no streamed Body.
func AppendRequest(dst []byte, req *Request) []byte {
	a := appender{dst}
	_ = writeMessage(&a, req)
	return a.b
}

// messageWriter is what writeMessage writes to: a bufio.Writer or an appender.
type messageWriter interface {
	io.Writer
	io.StringWriter
	io.ByteWriter
}

type appender struct{ b []byte }

func (a *appender) Write(p []byte) (int, error)       { a.b = append(a.b, p...); return len(p), nil }
func (a *appender) WriteString(s string) (int, error) { a.b = append(a.b, s...); return len(s), nil }
func (a *appender) WriteByte(c byte) error            { a.b = append(a.b, c); return nil }

func writeMessage(w messageWriter, req *Request) error {
	w.WriteString(req.Method)
	w.WriteByte(' ')
	w.WriteString(req.URI)
	w.WriteString(" HTTP/1.1\r\nHost: ")
	w.WriteString(req.Host)
	w.WriteString("\r\n")
	for k, vv := range req.Header {
		if k == "Host" || k == "Content-Length" || k == "Transfer-Encoding" {
			continue
		}
		for _, v := range vv {
			w.WriteString(k)
			w.WriteString(": ")
			w.WriteString(v)
			w.WriteString("\r\n")
		}
	}
	switch {
	case req.BodyBytes != nil:
		w.WriteString("Content-Length: ")
		w.WriteString(strconv.Itoa(len(req.BodyBytes)))
		w.WriteString("\r\n\r\n")
		w.Write(req.BodyBytes)
	case req.Body == nil || req.ContentLength == 0:
		if req.Method == http.MethodPost || req.Method == http.MethodPut || req.Method == http.MethodPatch {
			w.WriteString("Content-Length: 0\r\n")
		}
		w.WriteString("\r\n")
	case req.ContentLength > 0:
		w.WriteString("Content-Length: ")
		w.WriteString(strconv.FormatInt(req.ContentLength, 10))
		w.WriteString("\r\n\r\n")
		if _, err := io.CopyN(w, req.Body, req.ContentLength); err != nil {
			return fmt.Errorf("copying request body: %w", err)
		}
	default:
		w.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		cw := httputil.NewChunkedWriter(w)
		if _, err := io.Copy(cw, req.Body); err != nil {
			return fmt.Errorf("copying request body: %w", err)
		}
		cw.Close()
		for k, vv := range req.Trailer { // filled by now: the body reached EOF
			for _, v := range vv {
				w.WriteString(k)
				w.WriteString(": ")
				w.WriteString(v)
				w.WriteString("\r\n")
			}
		}
		w.WriteString("\r\n")
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}
