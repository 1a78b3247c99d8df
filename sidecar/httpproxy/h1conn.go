package httpproxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/connio"
	"github.com/weftmesh/weft/sidecar/httphead"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// h1Conn is what serveConn keeps of an HTTP/1 connection across its requests: the
// connection, its pooled reader and writer, the read deadline in force and the bytes of
// headBudget its large-head reader holds.
type h1Conn struct {
	l    *Listener
	nc   net.Conn
	conn *connio.Conn
	// pooled is the reader from the pool; br is the reader in use, a larger one while a
	// head longer than pooled's buffer is read.
	pooled, br *bufio.Reader
	bw         *bufio.Writer
	w          *h1Writer
	st         *connState
	remote     string
	// armed is the read deadline in force (zero: none). Every change costs a runtime timer
	// update, so the idle deadline is moved only once it lags by more than a second, and
	// the head deadline is set only for a head that has not arrived whole.
	armed time.Time
	// linger makes close flush and linger (lingerClose) so the peer reads a refusal.
	linger   bool
	reserved int
}

// serveConn serves one connection until it closes. A connection taken over from the
// event loop brings what the loop read of it (in) and what it had still to write (out).
// The connection is counted open (admitConn) until serveConn returns.
func (l *Listener) serveConn(nc net.Conn, in, out []byte) {
	c := l.openH1(nc, in, out)
	if c == nil {
		return // closed while taken over, or handed to the HTTP/2 server
	}
	defer c.close()
	for first := true; ; first = false {
		lim := l.lim()
		if !first && !c.awaitNext(lim) {
			return
		}
		req, ok := c.nextRequest(lim, first)
		if !ok {
			return
		}
		guard := c.dispatch(req)
		if !c.endExchange(req, guard) {
			return
		}
	}
}

// openH1 registers the connection, writes what the event loop left to write and arms
// the first head's deadline. It returns nil when the connection is done with here:
// closed because shutdown has begun or the write failed, or handed to the HTTP/2 server
// because it opened with the preface.
func (l *Listener) openH1(nc net.Conn, in, out []byte) *h1Conn {
	// Every close goes through conn: it writes a response deferred to the next read.
	conn := connio.NewConn(nc)
	pooled := readers.Get().(*bufio.Reader)
	br := pooled
	if len(in) > 0 {
		br.Reset(io.MultiReader(bytes.NewReader(in), conn))
	} else {
		br.Reset(conn)
	}
	st, draining := l.register(nc)
	if draining && len(out) == 0 {
		l.closeEarly(conn, nc)
		return nil
	}
	if len(out) > 0 {
		if _, err := conn.Write(out); err != nil || draining {
			l.closeEarly(conn, nc)
			return nil
		}
	}
	lim := l.lim()
	// A new connection's first head counts from now: a connection that sends nothing is
	// closed after the head timeout too.
	armed := deadlineAfter(time.Now(), lim.HeadTimeout)
	_ = conn.SetReadDeadline(armed)
	if p, err := br.Peek(len(h2Preface)); err == nil && bytes.Equal(p, h2Preface) {
		_ = conn.SetReadDeadline(time.Time{})
		l.forget(nc)
		// Writes bypass conn: the h2 server writes from other goroutines.
		cc := &countedConn{Conn: nc, f: &l.frontEnd}
		if l.relaysFrames(nc) {
			l.serveFrames(cc, br) // frames.go; it hands to l.h2 what it does not serve
			return nil
		}
		l.h2.handoff(&peekedConn{Conn: cc, r: br, w: upstream.NewFlushBehind(nc, cc).WithWriteTimeout(frameWriteTimeout)})
		return nil
	}
	bw := writers.Get().(*bufio.Writer)
	bw.Reset(conn)
	return &h1Conn{l: l, nc: nc, conn: conn, pooled: pooled, br: br, bw: bw, st: st,
		remote: conn.RemoteAddr().String(), armed: armed,
		w: &h1Writer{conn: conn, br: br, bw: bw, drain: &l.draining}}
}

// closeEarly closes a connection openH1 will not serve.
func (l *Listener) closeEarly(conn *connio.Conn, nc net.Conn) {
	conn.Close()
	l.forget(nc)
	l.connClosed()
}

// close ends the connection: it flushes and lingers after a refusal, closes, and gives
// the reader, the writer and the head budget back.
func (c *h1Conn) close() {
	c.release()
	if c.linger {
		_ = c.conn.Flush()
		lingerClose(c.nc)
	}
	c.conn.Close()
	c.l.forget(c.nc)
	c.l.connClosed()
	c.pooled.Reset(nil)
	readers.Put(c.pooled)
	c.bw.Reset(nil)
	writers.Put(c.bw)
}

// setDeadline makes d the read deadline in force.
func (c *h1Conn) setDeadline(d time.Time) {
	c.armed = d
	_ = c.conn.SetReadDeadline(d)
}

// awaitNext waits, under the idle timeout, for the first byte of the next request. It
// reports false when the connection closed or stayed idle too long.
func (c *h1Conn) awaitNext(lim *config.HTTPLimits) bool {
	if lim.IdleTimeout == 0 {
		if !c.armed.IsZero() {
			c.setDeadline(time.Time{})
		}
	} else if now := time.Now(); c.armed.IsZero() || now.Add(lim.IdleTimeout).Sub(c.armed) > time.Second {
		c.setDeadline(now.Add(lim.IdleTimeout))
	}
	_, err := c.br.Peek(1)
	return err == nil
}

// nextRequest reads and parses the next request under the head limits. A head over the
// limits gets its refusal (and the connection lingers), a malformed request a 400; either
// way, or when the caller leaves or the head times out, ok is false.
func (c *h1Conn) nextRequest(lim *config.HTTPLimits, first bool) (_ *http.Request, ok bool) {
	head, p := httphead.CheckRequest(buffered(c.br), headLimits(lim))
	if head == 0 && p == nil {
		if !first {
			// The head's first byte is here: the whole head must follow within the
			// head timeout, however it trickles in.
			c.setDeadline(deadlineAfter(time.Now(), lim.HeadTimeout))
		}
		var br *bufio.Reader
		if br, head, p = c.readHead(c.br, lim); br == nil {
			return nil, false // the caller left or the head timed out
		}
		c.br, c.w.br = br, br
	}
	if p != nil {
		c.l.refused.Add(1)
		c.bw.Write(httphead.AppendProblem(nil, p))
		_ = c.bw.Flush()
		c.linger = true
		return nil, false
	}
	req, fast, err := readRequest(c.br, head)
	if err != nil {
		if !errors.Is(err, io.EOF) {
			badRequest(c.bw, "malformed HTTP request")
		}
		return nil, false
	}
	if !fast { // the fast path validated as it parsed
		if msg := validate(req); msg != "" {
			badRequest(c.bw, msg)
			return nil, false
		}
	}
	return req, true
}

// dispatch hands req to the proxy and finishes its response (not yet flushed). It
// returns the guard on a chunked body, which records a body that broke.
func (c *h1Conn) dispatch(req *http.Request) *malformedBody {
	// The handler reads the body without a deadline; with no body the deadline can
	// stay: nothing reads the connection until the next request.
	if req.ContentLength != 0 && !c.armed.IsZero() {
		c.setDeadline(time.Time{})
	}
	var guard *malformedBody
	if len(req.TransferEncoding) > 0 {
		guard = &malformedBody{ReadCloser: req.Body}
		req.Body = guard
	}
	draining := c.l.track(c.st, true)
	req.RemoteAddr = c.remote
	if req.Header.Get("Expect") == "100-continue" && req.ContentLength != 0 {
		c.bw.WriteString("HTTP/1.1 100 Continue\r\n\r\n")
		_ = c.bw.Flush()
	}
	c.w.reset(req, draining)
	c.w.body = guard
	c.l.ServeHTTP(c.w, req)
	c.w.finish()
	if c.w.watched {
		c.armed = time.Time{} // WatchClose cleared the deadline
	}
	return guard
}

// endExchange drains what the handler left of the body, writes the response and decides
// whether the connection stays open for another request.
func (c *h1Conn) endExchange(req *http.Request, guard *malformedBody) (keepAlive bool) {
	// Read what the handler left of the body so the next request starts clean.
	var n int64
	if req.Body != http.NoBody {
		n, _ = io.CopyN(io.Discard, req.Body, maxBodyDrain)
	}
	req.Body.Close()
	if guard != nil && guard.err != nil {
		// The body broke after the response was sent, or while it was drained:
		// where the next request starts is unknown.
		c.w.close = true
	}
	// With nothing more buffered the next step is waiting for the next request, so the
	// response is written by that read (connio.Conn), saving a read(2) per request.
	// A pipelined request already buffered must not wait behind this response.
	c.conn.Deferring = c.br.Buffered() == 0 && !c.w.close && n < maxBodyDrain
	err := c.bw.Flush()
	c.conn.Deferring = false
	if err != nil || c.w.close || n == maxBodyDrain {
		return false
	}
	if c.br != c.pooled && c.br.Buffered() == 0 {
		// Back to the pooled reader once the large head's reader is drained; it holds
		// what was read after (the large reader read through it).
		c.br, c.w.br = c.pooled, c.pooled
		c.release()
	}
	return !c.l.track(c.st, false)
}

// readHead reads until br holds a whole request head that passes httphead.CheckRequest,
// or one that fails it (p). A head longer than the pooled reader's buffer is read through
// a reader large enough for the longest head allowed (its size reserved from headBudget,
// or the head is refused with 503), so the head can be checked whole before it is
// parsed; nothing buffers more than lim.MaxHeadBytes of it. br is nil if the connection
// failed or its read deadline passed first.
func (c *h1Conn) readHead(br *bufio.Reader, lim *config.HTTPLimits) (_ *bufio.Reader, head int, p *httphead.Problem) {
	for {
		if br.Buffered() == br.Size() {
			size := max(lim.MaxHeadBytes, 2*br.Size())
			if !headBudget.reserve(size - c.reserved) {
				return br, 0, errHeadBudget
			}
			c.reserved = size
			br = bufio.NewReaderSize(br, size) // reads what br holds, then the connection
		}
		if _, err := br.Peek(br.Buffered() + 1); err != nil {
			return nil, 0, nil
		}
		if head, p = httphead.CheckRequest(buffered(br), headLimits(lim)); head > 0 || p != nil {
			return br, head, p
		}
	}
}

// release gives back the connection's share of headBudget.
func (c *h1Conn) release() {
	headBudget.release(c.reserved)
	c.reserved = 0
}
