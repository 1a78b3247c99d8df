package upstream

import (
	"io"
	"net"
	"sync"

	"github.com/weftmesh/weft/sidecar/connio"
)

// FlushBehindLimit bounds what a FlushBehind holds for one connection: a write that would
// take its queue past 32 KiB waits until the flusher takes the queue. With the buffer the
// flusher is writing, one connection holds at most 2 × 32 KiB of frames the socket has
// not taken (and keeps both buffers, 64 KiB, while it lives).
const FlushBehindLimit = 32 << 10

// FlushBehind coalesces the write(2) calls of one HTTP/2 connection. net/http's HTTP/2
// client and server flush every frame they write: a gRPC unary call costs the client three
// writes upstream (HEADERS, DATA, an empty DATA with END_STREAM, since the body's length is
// unknown) and the server three downstream (HEADERS, DATA, trailers), each a loopback
// write that runs the receiver's TCP input inline and wakes its reader. A FlushBehind
// copies each write into a buffer and leaves the write(2) to a goroutine it starts, which
// the scheduler runs once the writer (and whatever it made runnable) has parked: the
// frames of one exchange written back to back leave in one write(2), as an event loop
// flushes at the end of its turn. Ordering is kept (one buffer, one flusher at a time).
//
// A write error ends the connection: the flusher closes it, so the HTTP/2 read loop sees
// the error too, and every later Write returns it.
type FlushBehind struct {
	c        io.Closer
	w        *connio.Writer
	mu       sync.Mutex
	room     sync.Cond // signalled when the buffer drains or the flusher stops
	buf      []byte    // written, not yet handed to the flusher
	spare    []byte    // the flusher's last buffer, reused
	flushing bool      // a flusher goroutine (or a direct write) owns the socket
	err      error
	flushFn  func() // f.flush, made once: `go f.flushFn()` would allocate a closure per flush
}

// NewFlushBehind returns a FlushBehind writing to sock (through connio.Writer, so the
// write(2) calls skip the runtime's syscall bracket, see h2Socket); a write error closes
// conn, the connection sock is the socket of.
func NewFlushBehind(sock net.Conn, conn io.Closer) *FlushBehind {
	f := &FlushBehind{c: conn, w: connio.NewWriter(sock)}
	f.room.L = &f.mu
	f.flushFn = f.flush
	return f
}

// Write queues p for the socket and returns; it waits only while FlushBehindLimit bytes
// are queued ahead of it. A p larger than the limit is written directly, once the queue
// ahead of it has left.
func (f *FlushBehind) Write(p []byte) (int, error) {
	f.mu.Lock()
	for {
		if f.err != nil {
			err := f.err
			f.mu.Unlock()
			return 0, err
		}
		if len(f.buf)+len(p) <= FlushBehindLimit {
			f.buf = append(f.buf, p...)
			if !f.flushing {
				f.flushing = true
				go f.flushFn()
			}
			f.mu.Unlock()
			return len(p), nil
		}
		if len(p) > FlushBehindLimit && len(f.buf) == 0 && !f.flushing {
			f.flushing = true
			f.mu.Unlock()
			err := f.w.WriteAll(p)
			f.mu.Lock()
			f.flushing = false
			f.fail(err)
			f.room.Broadcast()
			if err != nil {
				f.mu.Unlock()
				return 0, err
			}
			if len(f.buf) > 0 { // queued by others while p was written
				f.flushing = true
				go f.flushFn()
			}
			f.mu.Unlock()
			return len(p), nil
		}
		f.room.Wait()
	}
}

// flush writes the queue until it is empty.
func (f *FlushBehind) flush() {
	f.mu.Lock()
	for len(f.buf) > 0 && f.err == nil {
		out := f.buf
		f.buf = f.spare[:0]
		f.room.Broadcast() // the queue is empty again: writers waiting for room go on
		f.mu.Unlock()
		err := f.w.WriteAll(out)
		f.mu.Lock()
		f.spare = out[:0]
		f.fail(err)
		f.room.Broadcast()
	}
	f.buf = f.buf[:0]
	f.flushing = false
	f.room.Broadcast()
	f.mu.Unlock()
}

// fail records a write error and closes the connection, with f.mu held.
func (f *FlushBehind) fail(err error) {
	if err == nil || f.err != nil {
		return
	}
	f.err = err
	_ = f.c.Close()
}

// Buffered reports how many bytes are queued behind the flusher's write (tests).
func (f *FlushBehind) Buffered() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.buf)
}
