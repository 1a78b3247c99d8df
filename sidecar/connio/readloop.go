// Package connio holds the socket I/O of the sidecar's proxies: ReadLoop reads a
// connection without spending a system call to learn that a drained socket is empty,
// Conn lets a request/response exchange cost one read per answer, and Writer writes
// without blocking when asked to. All of them make their read(2) and write(2) calls
// without the runtime's syscall bracket (see syscalls.go).
package connio

import (
	"io"
	"net"
	"syscall"
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
			n, err := ReadFD(int(fd), p)
			switch {
			case err == syscall.EAGAIN:
				return false
			case err != 0:
				result = opError(c, "read", err)
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
