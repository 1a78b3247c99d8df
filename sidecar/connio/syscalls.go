package connio

import (
	"net"
	"os"
	"syscall"
	"unsafe"
)

// The socket calls in this package go through syscall.RawSyscall rather than syscall.Syscall. The
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

// ReadFD reads into p from the non-blocking descriptor fd, retrying only an interrupted
// call; the errno is EAGAIN when nothing is there.
func ReadFD(fd int, p []byte) (int, syscall.Errno) {
	for {
		n, e := sysRead(fd, p)
		if e != syscall.EINTR {
			return n, e
		}
	}
}

// WriteFD writes p to the non-blocking descriptor fd until all of it is written, the socket is full (EAGAIN) or the call
// fails; it returns what is left and the errno that stopped it (0 when all was written).
func WriteFD(fd int, p []byte) ([]byte, syscall.Errno) {
	for len(p) > 0 {
		n, e := sysWrite(fd, p)
		switch e {
		case 0:
			p = p[n:]
		case syscall.EINTR:
		default:
			return p, e
		}
	}
	return p, 0
}

// opError reports a failed call on c the way net.Conn's own methods do.
func opError(c net.Conn, op string, errno syscall.Errno) error {
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError(op, errno)}
}
