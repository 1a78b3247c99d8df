package connio

import (
	"net"
	"syscall"
	"time"
)

// Writer writes to one connection. It keeps the callbacks RawConn.Write needs, so a
// write allocates nothing (a closure built per call would escape to the heap). Like the
// socket's write side, it is for one goroutine at a time. A connection without a file
// descriptor (net.Pipe, TLS) is written with its Write method.
type Writer struct {
	c     net.Conn
	raw   syscall.RawConn // nil: write through c
	p     []byte
	errno syscall.Errno
	try   func(fd uintptr) bool
	all   func(fd uintptr) bool
}

// NewWriter returns a Writer for c.
func NewWriter(c net.Conn) *Writer {
	w := &Writer{c: c}
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			w.raw = raw
		}
	}
	w.try, w.all = w.tryFD, w.allFD
	return w
}

func (w *Writer) tryFD(fd uintptr) bool {
	w.p, w.errno = WriteFD(int(fd), w.p)
	return true
}

func (w *Writer) allFD(fd uintptr) bool {
	w.p, w.errno = WriteFD(int(fd), w.p)
	return w.errno != syscall.EAGAIN // full: wait for the poller, then go on
}

// TryWrite writes as much of p as the socket takes now, without waiting, and returns
// how much that was; n < len(p) with a nil error means the rest must wait (WriteAll,
// from a goroutine that can block). Without a descriptor nothing can be written without
// waiting: n is 0.
func (w *Writer) TryWrite(p []byte) (n int, err error) {
	if w.raw == nil {
		return 0, nil
	}
	w.p, w.errno = p, 0
	cerr := w.raw.Write(w.try)
	left := len(w.p)
	w.p = nil
	switch {
	case cerr != nil:
		return 0, cerr
	case w.errno != 0 && w.errno != syscall.EAGAIN:
		return 0, opError(w.c, "write", w.errno)
	}
	return len(p) - left, nil
}

// WriteAll writes all of p, waiting for the socket when its buffer is full (a write
// deadline or Close ends the wait with an error).
func (w *Writer) WriteAll(p []byte) error {
	if w.raw == nil {
		_, err := w.c.Write(p)
		return err
	}
	w.p, w.errno = p, 0
	cerr := w.raw.Write(w.all)
	w.p = nil
	if cerr != nil {
		return cerr
	}
	if w.errno != 0 {
		return opError(w.c, "write", w.errno)
	}
	return nil
}

// WriteDeadline keeps a socket's write deadline Timeout ahead of its writes, so a peer
// that takes nothing for about that long fails the write: Arm before each write moves it
// only once it is less than Timeout−1 s away (each move is a timer update, which can wake
// the runtime's network poller), so the cut comes between Timeout−1 s and Timeout after
// the socket last took bytes. The zero Timeout arms nothing.
type WriteDeadline struct {
	Timeout time.Duration
	by      time.Time // the deadline in force
}

// Arm moves c's write deadline, if due, before a write. The caller serializes calls.
func (d *WriteDeadline) Arm(c interface{ SetWriteDeadline(time.Time) error }) {
	if d.Timeout <= 0 {
		return
	}
	if now := time.Now(); now.Add(d.Timeout - time.Second).After(d.by) {
		d.by = now.Add(d.Timeout)
		_ = c.SetWriteDeadline(d.by)
	}
}
