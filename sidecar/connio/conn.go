package connio

import (
	"io"
	"net"
	"syscall"
)

// Conn is a net.Conn for request/response protocols read through a buffer (HTTP/1.1).
// Reads and writes skip the runtime's syscall bracket as ReadLoop does, and a write can
// be deferred to the next Read: WriteThenRead-style exchanges — send a request, wait for
// the response; send a response, wait for the next request — then make one RawConn.Read
// call (one pass through the poller) instead of a Write and a Read.
//
// The read(2) right after the deferred write is not skipped, although the answer cannot
// be there yet: what arrived before the write can be — the peer's FIN on a kept-alive
// connection it closed while idle, a pipelined request — and RawConn.Read drops the
// readiness event that announced it before it calls back (the poller resets it). Skipping
// that read waited for an event that never came when the peer was gone for good: a
// pooled upstream connection whose pod had closed it and vanished carried a request that
// got no answer until the caller gave up (issue 12 items 5 and 7).
//
// Deferred bytes are written by the next Read, or by Flush, Write or Close, so nothing
// is ever left behind. A Conn, like a bufio.Reader over it, is for one reader and one
// writer goroutine at a time; Defer and Read must not race.
type Conn struct {
	net.Conn
	raw     syscall.RawConn // nil: reads and writes pass through to the net.Conn
	w       *Writer
	pending []byte // deferred write
	// Deferring makes Write defer instead of writing: set it around the flush that ends
	// a message when the next step is reading the answer.
	Deferring bool

	// state of the Read in progress, kept here so the callback is built once
	rp    []byte
	rout  []byte
	rn    int
	errno syscall.Errno
	werr  syscall.Errno
	read  func(fd uintptr) bool
}

// NewConn wraps c. Without a file descriptor (net.Pipe, TLS) it passes calls through.
func NewConn(c net.Conn) *Conn {
	cc := &Conn{Conn: c, w: NewWriter(c)}
	cc.raw = cc.w.raw
	cc.read = cc.readFD
	return cc
}

// Defer queues p to be written by the next Read (or Flush). p is copied.
func (c *Conn) Defer(p []byte) {
	c.pending = append(c.pending, p...)
}

// Flush writes any deferred bytes now.
func (c *Conn) Flush() error {
	if len(c.pending) == 0 {
		return nil
	}
	p := c.pending
	c.pending = c.pending[:0]
	return c.write(p)
}

// Write writes p after any deferred bytes, or defers it too while Deferring is set.
func (c *Conn) Write(p []byte) (int, error) {
	if c.Deferring && c.raw != nil {
		c.Defer(p)
		return len(p), nil
	}
	if err := c.Flush(); err != nil {
		return 0, err
	}
	if err := c.write(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *Conn) write(p []byte) error { return c.w.WriteAll(p) }

// readFD is the RawConn.Read callback: write what is deferred, then read.
func (c *Conn) readFD(fd uintptr) bool {
	if len(c.rout) > 0 {
		c.rout, c.werr = WriteFD(int(fd), c.rout)
		switch c.werr {
		case 0:
			// Sent: read too, for what came before the write (see Conn).
		case syscall.EAGAIN:
			c.werr = 0
			return true // the socket is full: finish with a waiting write
		default:
			return true
		}
	}
	c.rn, c.errno = ReadFD(int(fd), c.rp)
	return c.errno != syscall.EAGAIN
}

// Read writes any deferred bytes, then reads.
func (c *Conn) Read(p []byte) (int, error) {
	if c.raw == nil {
		if err := c.Flush(); err != nil {
			return 0, err
		}
		return c.Conn.Read(p)
	}
	if len(p) == 0 {
		return 0, nil
	}
	c.rp, c.rout, c.rn, c.errno, c.werr = p, c.pending, 0, 0, 0
	err := c.raw.Read(c.read)
	out := c.rout
	c.rp, c.rout = nil, nil
	if c.werr != 0 {
		c.pending = c.pending[:0]
		return 0, opError(c, "write", c.werr)
	}
	if len(out) > 0 && err == nil {
		// The deferred bytes did not fit: write the rest the ordinary way and read.
		c.pending = append(c.pending[:0], out...)
		if err := c.Flush(); err != nil {
			return 0, err
		}
		return c.Read(p)
	}
	if len(c.pending) > 0 {
		c.pending = c.pending[:0]
	}
	if err != nil {
		return 0, err
	}
	if c.errno != 0 {
		return 0, opError(c, "read", c.errno)
	}
	if c.rn == 0 {
		return 0, io.EOF
	}
	return c.rn, nil
}

// Close writes any deferred bytes, then closes.
func (c *Conn) Close() error {
	_ = c.Flush()
	return c.Conn.Close()
}
