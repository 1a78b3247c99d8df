// Package connio holds socket helpers for the sidecar's proxies. ReadLoop
// reads a connection without spending a system call to learn that a drained
// socket is empty.
package connio

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// ReadLoop reads c until handle asks to stop or the connection fails. Each
// read goes into space(); handle(n) is then told that n bytes arrived and
// returns true to stop. ReadLoop returns nil when handle stopped it, io.EOF
// when the peer closed, and otherwise the read error (a deadline error wraps
// os.ErrDeadlineExceeded, a closed connection net.ErrClosed).
//
// Why not c.Read in a loop: a request/response peer (a Redis client at
// pipeline depth 1, an HTTP/1.1 keep-alive client) sends one message and
// waits. c.Read returns it, and the next c.Read first calls read(2), gets
// EAGAIN and only then parks on the poller: one wasted system call per
// message, a third of the proxy's calls on that socket. ReadLoop instead
// remembers that a read returned less than space() could hold, which means
// the kernel's queue was empty at that instant, and goes straight to the
// poller. Go's poller is edge-triggered and raises an event for every arrival
// of data, so nothing arriving after the short read is missed. This only
// works while one RawConn.Read call is in progress: entering RawConn.Read
// clears any readiness recorded earlier, which is why the whole loop, handle
// included, runs inside one call.
//
// handle runs on the calling goroutine and may block; c's deadlines and
// Close interrupt the wait for data, not handle itself.
func ReadLoop(c net.Conn, space func() []byte, handle func(n int) (stop bool)) error {
	sc, ok := c.(syscall.Conn)
	var raw syscall.RawConn
	if ok {
		raw, _ = sc.SyscallConn()
	}
	if raw == nil {
		return plainLoop(c, space, handle)
	}
	var (
		result  error
		drained bool
	)
	err := raw.Read(func(fd uintptr) bool {
		for {
			if drained {
				drained = false
				return false // wait for the poller
			}
			p := space()
			n, err := sysRead(int(fd), p)
			switch {
			case err == syscall.EINTR:
				continue
			case err == syscall.EAGAIN:
				return false
			case err != 0:
				result = &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", err)}
				return true
			case n == 0:
				result = io.EOF
				return true
			}
			if handle(n) {
				return true
			}
			drained = n < len(p)
		}
	})
	if err != nil {
		return err
	}
	return result
}

// plainLoop is ReadLoop for connections without a file descriptor (net.Pipe,
// TLS): the same contract over c.Read.
func plainLoop(c net.Conn, space func() []byte, handle func(n int) bool) error {
	for {
		p := space()
		n, err := c.Read(p)
		if n > 0 && handle(n) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// The socket calls below go through syscall.RawSyscall rather than syscall.Syscall. The
// descriptors are non-blocking (Go's poller owns them), so read(2) and write(2) return
// at once with data or EAGAIN and never park the thread, which is the only case the
// runtime's entersyscall/exitsyscall bracket exists for. The bracket is not free: while
// a goroutine is inside it, the runtime's monitor thread counts its processor as
// blocked and, on a one-thread proxy (GOMAXPROCS=1, the sidecar's default), hands it to
// another thread whenever a loopback write takes more than a tick (loopback send runs
// the receiver's TCP input inline, several µs). Measured on the Redis proxy at pipeline
// depth 1: the monitor thread and the thread switches it caused were 13% of the
// proxy's CPU.

func sysRead(fd int, p []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(n), e
}

func sysWrite(fd int, p []byte) (int, syscall.Errno) {
	n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(n), e
}

// Writer writes to one connection's descriptor. It keeps the callback RawConn.Write
// needs, so a write allocates nothing (a closure built per call would escape to the
// heap). Like the socket's write side, it is for one goroutine at a time.
type Writer struct {
	raw   syscall.RawConn
	p     []byte
	n     int
	errno syscall.Errno
	try   func(fd uintptr) bool
	all   func(fd uintptr) bool
}

// NewWriter returns a Writer for raw.
func NewWriter(raw syscall.RawConn) *Writer {
	w := &Writer{raw: raw}
	w.try, w.all = w.tryFD, w.allFD
	return w
}

func (w *Writer) tryFD(fd uintptr) bool {
	for {
		w.n, w.errno = sysWrite(int(fd), w.p)
		if w.errno != syscall.EINTR {
			return true
		}
	}
}

func (w *Writer) allFD(fd uintptr) bool {
	for len(w.p) > 0 {
		n, e := sysWrite(int(fd), w.p)
		switch e {
		case 0:
			w.p = w.p[n:]
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			w.errno = e
			return true
		}
	}
	return true
}

// TryWrite makes one write of p without waiting for the socket and returns how much it
// took; n < len(p) with a nil error means the socket buffer is full for now.
func (w *Writer) TryWrite(p []byte) (n int, err error) {
	w.p, w.n, w.errno = p, 0, 0
	cerr := w.raw.Write(w.try)
	w.p = nil
	switch {
	case cerr != nil:
		return 0, cerr
	case w.errno == 0:
		return w.n, nil
	case w.errno == syscall.EAGAIN:
		return 0, nil
	}
	return 0, os.NewSyscallError("write", w.errno)
}

// WriteAll writes all of p, waiting for the socket when its buffer is full (a write
// deadline or Close ends the wait with an error).
func (w *Writer) WriteAll(p []byte) error {
	w.p, w.errno = p, 0
	cerr := w.raw.Write(w.all)
	w.p = nil
	if cerr != nil {
		return cerr
	}
	if w.errno != 0 {
		return os.NewSyscallError("write", w.errno)
	}
	return nil
}
