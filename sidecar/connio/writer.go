package connio

import (
	"os"
	"syscall"
)

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
