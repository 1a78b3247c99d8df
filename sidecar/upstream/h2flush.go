package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftmesh/weft/sidecar/connio"
)

// FlushBehindLimit bounds what a FlushBehind holds for one connection: a write that would
// take its queue past 32 KiB writes the queue out first (or waits while another goroutine
// does). With the buffer being written, one connection holds at most 2 × 32 KiB of frames
// the socket has not taken (and keeps both buffers, 64 KiB, while it lives).
const FlushBehindLimit = 32 << 10

// FlushBehindDelay bounds how long queued bytes wait for the flusher goroutine once the
// connection is used again: a Write that finds bytes queued longer than this, or a Read
// about to wait for the socket, writes the queue itself. The scheduler runs the flusher
// once the goroutines ahead of it have parked, which on a busy process (GOMAXPROCS=1,
// goroutines handing work to each other, each taking the next slot) can be a whole time
// slice, 10 ms or more; 50 µs is longer than the frames of one exchange take to be
// written (HEADERS, DATA, trailers: a few µs apart), much shorter than that.
const FlushBehindDelay = 50 * time.Microsecond

// FlushBehindMaxQueued bounds the queue of a FlushBehind whose writes never wait
// (WithoutWaiting): a write past it cuts the connection (FloodError). What fills it is
// bounded otherwise — request bodies wait for room (WaitRoom) and add at most
// FlushBehindChunk per stream — so only a peer that reads nothing while it makes the
// sidecar answer (PINGs, SETTINGS) or while streams are opened on it gets here, as Envoy
// cuts a connection with more than 10,000 frames queued for its peer (max_outbound_frames).
const FlushBehindMaxQueued = 4 << 20

// FlushBehindChunk is the most a request body adds to a connection's queue at once: its
// reader reads at most this much per call (h2.go's gatedBody), so the HTTP/2 client
// writes it as one DATA frame.
const FlushBehindChunk = 16 << 10

// FlushBehind coalesces the write(2) calls of one HTTP/2 connection. net/http's HTTP/2
// client and server flush every frame they write: a gRPC unary call costs the client three
// writes upstream (HEADERS, DATA, an empty DATA with END_STREAM, since the body's length is
// unknown) and the server three downstream (HEADERS, DATA, trailers), each a loopback
// write that runs the receiver's TCP input inline and wakes its reader. A FlushBehind
// copies each write into a buffer and leaves the write(2) to a goroutine it starts, which
// yields once and so writes after every goroutine runnable by then (flush): the frames of
// one exchange written back to back leave in one write(2), as an event loop flushes at
// the end of its turn. So that a busy scheduler cannot hold the queue back,
// later writes and reads, the connection's own or any other's, write it out themselves
// once it has waited FlushBehindDelay (FlushPending, writeStale). Ordering is kept: one queue, and one goroutine writes at a time.
//
// A write error ends the connection: the writer closes it, so the HTTP/2 read loop sees
// the error too, and every later Write returns it.
//
// Only the flusher goroutine and a Write that finds the queue full (not WithoutWaiting)
// wait for the socket; a Write or a read loop that writes the queue itself, and another
// connection's goroutine writing out a stale queue, write what the socket takes at once and
// leave the rest to the flusher (tryDrain): a goroutine passing by never waits for a peer
// that does not read.
//
// WithoutWaiting makes every Write return at once, the queue past FlushBehindLimit if need
// be: net/http's HTTP/2 client writes under one lock per connection, the read loop's PING
// and SETTINGS acknowledgements too, so a request body's Write waiting for a peer that
// stopped reading (an upload filled its socket) held the read loop, and the responses the
// peer sent on other streams behind a PING waited for the write timeout to cut the
// connection (TestUpstreamStalledByAnUploadStillDeliversItsOtherResponses). The body waits
// for room before it is read instead (WaitRoom), outside the client's locks.
//
// With a write timeout (WithWriteTimeout) the FlushBehind owns the socket's write
// deadline: a peer that takes nothing for that long fails the write. net/http's own
// WriteByteTimeout cannot do it here: it sets the deadline around each Write and clears it
// after, while the write(2) that blocks is a later one, made by the flusher with no
// deadline (a caller that stopped reading held its connection and the upstream stream
// forever, TestFrameRelayCallerThatStopsReadingIsCutAfterTheWriteTimeout).
type FlushBehind struct {
	c       io.Closer
	sock    net.Conn
	stall   connio.WriteDeadline // zero Timeout: no write deadline of its own
	w       *connio.Writer
	mu      sync.Mutex
	room    sync.Cond // signalled when the queue is taken or a write ends
	buf     []byte    // queued, not yet taken by a writer
	since   time.Time // when the oldest queued byte was queued
	spare   []byte    // the last buffer written, reused
	writing bool      // a goroutine is in write(2) for this connection
	spawned bool      // a flusher goroutine has been started and has not run yet
	listed  bool      // in stale.queued
	err     error
	flushFn func() // f.flush, made once: `go f.flush()` would allocate a closure per flush
	noWait  bool   // WithoutWaiting
}

// NewFlushBehind returns a FlushBehind writing to sock (through connio.Writer, so the
// write(2) calls skip the runtime's syscall bracket, see h2Socket); a write error closes
// conn, the connection sock is the socket of.
func NewFlushBehind(sock net.Conn, conn io.Closer) *FlushBehind {
	f := &FlushBehind{c: conn, sock: sock, w: connio.NewWriter(sock)}
	f.room.L = &f.mu
	f.flushFn = f.flush
	return f
}

// WithWriteTimeout makes every write(2) fail once the socket has taken nothing for about
// d (connio.WriteDeadline); f then owns the socket's write deadline, and its
// connection's SetWriteDeadline must go through f's.
func (f *FlushBehind) WithWriteTimeout(d time.Duration) *FlushBehind {
	f.stall.Timeout = d
	return f
}

// WithoutWaiting makes Write never wait for the socket: the queue may pass
// FlushBehindLimit (up to FlushBehindMaxQueued), and writers that must be held back by a
// slow peer wait in WaitRoom before they produce the bytes.
func (f *FlushBehind) WithoutWaiting() *FlushBehind {
	f.noWait = true
	return f
}

// WaitRoom waits until f's queue is below FlushBehindLimit, and returns nil; or until the
// connection has failed (its write error) or ctx ends (ctx's error). The reader of a
// request body calls it before each read, holding no lock of the HTTP/2 client.
func (f *FlushBehind) WaitRoom(ctx context.Context) error { return f.waitRoom(ctx, nil) }

// errBodyClosed is what a request body's read waiting for room returns once the body was
// closed.
var errBodyClosed = errors.New("request body closed")

// waitRoom is WaitRoom that also ends, with errBodyClosed, once closed is set (unless
// nil) and wakeWaiters called.
func (f *FlushBehind) waitRoom(ctx context.Context, closed *atomic.Bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.buf) < FlushBehindLimit || f.err != nil {
		return f.err
	}
	stop := context.AfterFunc(ctx, f.wakeWaiters)
	defer stop()
	for len(f.buf) >= FlushBehindLimit && f.err == nil && ctx.Err() == nil && (closed == nil || !closed.Load()) {
		f.room.Wait()
	}
	switch {
	case f.err != nil:
		return f.err
	case ctx.Err() != nil:
		return ctx.Err()
	case closed != nil && closed.Load():
		return errBodyClosed
	}
	return nil
}

// wakeWaiters wakes every waitRoom, to look again at what ends its wait.
func (f *FlushBehind) wakeWaiters() {
	f.mu.Lock()
	f.room.Broadcast()
	f.mu.Unlock()
}

// SetWriteDeadline is what the connection f writes for does with a write deadline: set it
// on the socket, unless f keeps its own (WithWriteTimeout). net/http sets a deadline around
// each Write and clears it after, which would clear f's while its flusher is in write(2).
func (f *FlushBehind) SetWriteDeadline(t time.Time) error {
	if f.stall.Timeout > 0 {
		return nil
	}
	return f.sock.SetWriteDeadline(t)
}

// Write queues p for the socket and returns. It writes what the socket takes of the queue
// itself when the queue has waited FlushBehindDelay. Unless WithoutWaiting, a p that would
// take the queue past FlushBehindLimit waits for the socket (while another goroutine
// writes, or writing the queue itself), and a p larger than the limit is written directly
// after the queue ahead of it.
func (f *FlushBehind) Write(p []byte) (int, error) {
	n, err := f.write(p)
	writeStale()
	return n, err
}

func (f *FlushBehind) write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		if f.err != nil {
			return 0, f.err
		}
		if len(f.buf)+len(p) <= FlushBehindLimit {
			break
		}
		if f.noWait {
			if len(f.buf) > 0 && len(f.buf)+len(p) > FlushBehindMaxQueued { // one write alone is never a flood
				f.fail(&FloodError{Queued: len(f.buf) + len(p)})
				return 0, f.err
			}
			break
		}
		if f.writing {
			f.room.Wait()
			continue
		}
		if len(f.buf) > 0 {
			f.drain()
			continue
		}
		// p alone is larger than the queue may hold: write it as it is.
		f.writing = true
		f.stall.Arm(f.sock) // under f.mu: one writer arms at a time
		f.mu.Unlock()
		err := f.w.WriteAll(p)
		f.mu.Lock()
		f.writing = false
		f.fail(err)
		f.room.Broadcast()
		if err != nil {
			return 0, err
		}
		if len(f.buf) > 0 && !f.spawned { // queued by others meanwhile
			f.spawned = true
			go f.flushFn()
		}
		return len(p), nil
	}
	if len(f.buf) == 0 {
		f.since = time.Now()
		f.list()
	}
	f.buf = append(f.buf, p...)
	switch {
	case f.writing:
		// The goroutine in write(2) takes the queue when it is done.
	case time.Since(f.since) > FlushBehindDelay || len(f.buf) > FlushBehindLimit:
		f.tryDrain()
	case !f.spawned:
		f.spawned = true
		go f.flushFn()
	}
	return len(p), nil
}

// FlushPending writes the queue now, unless another goroutine is writing it. A read loop
// calls it before it waits for the socket: a reply to what it reads next must not find
// the queue still waiting for the scheduler.
func (f *FlushBehind) FlushPending() {
	f.mu.Lock()
	if len(f.buf) > 0 && !f.writing && f.err == nil {
		f.tryDrain()
	}
	f.mu.Unlock()
	writeStale()
}

// stale lists the FlushBehinds that have queued bytes since the last pass of writeStale,
// so that any connection's writes and reads write out another's queue the flusher is late
// for: a busy scheduler can hold a flusher back while the goroutines it runs work on other
// connections only. It holds each live FlushBehind at most once, and is emptied on every
// pass (at most FlushBehindDelay after the first queue is listed, on the next I/O).
var stale struct {
	mu     sync.Mutex
	queued []*FlushBehind
	spare  []*FlushBehind
	oldest atomic.Int64 // UnixNano when the oldest listed queue began; 0: none listed
}

// list puts f in stale.queued and stale.oldest back to f's queue if that began earlier,
// with f.mu held.
func (f *FlushBehind) list() {
	if !f.listed {
		f.listed = true
		stale.mu.Lock()
		stale.queued = append(stale.queued, f)
		stale.mu.Unlock()
	}
	since := f.since.UnixNano()
	for {
		o := stale.oldest.Load()
		if (o != 0 && o <= since) || stale.oldest.CompareAndSwap(o, since) {
			return
		}
	}
}

// writeStale writes out every listed queue that has waited FlushBehindDelay, unless
// another goroutine is writing it (that one writes what is queued). It runs with no
// FlushBehind's lock held. A queue younger than that stays listed for a later pass: a
// queue its flusher wrote leaves its connection listed, and stale.oldest as old as that
// queue, so a pass comes on the first write after any quiet spell; writing out every
// listed queue then wrote the frame just queued alone, ahead of the rest of its exchange.
func writeStale() {
	o := stale.oldest.Load()
	now := time.Now()
	if o == 0 || now.UnixNano()-o <= int64(FlushBehindDelay) {
		return
	}
	stale.mu.Lock()
	list := stale.queued
	stale.queued, stale.spare = stale.spare[:0], nil
	stale.oldest.Store(0)
	stale.mu.Unlock()
	for i, f := range list {
		f.mu.Lock()
		f.listed = false
		if len(f.buf) > 0 && !f.writing && f.err == nil && now.Sub(f.since) > FlushBehindDelay {
			f.tryDrain()
		}
		if len(f.buf) > 0 { // not due yet, or queued again while written: still waiting
			f.list()
		}
		f.mu.Unlock()
		list[i] = nil
	}
	stale.mu.Lock()
	if stale.spare == nil {
		stale.spare = list[:0]
	}
	stale.mu.Unlock()
}

// flush is the flusher goroutine: it writes the queue unless another goroutine already is
// (that one writes what is queued before it stops).
//
// It first yields. A new goroutine takes the processor's next slot, and the next one
// started pushes it back into the local run queue, ahead of goroutines started or woken
// later in the same turn; net/http's HTTP/2 server starts a goroutine per frame write and
// its serve loop hands each frame over, so the flusher used to run between the frames of
// one response and split it. Gosched puts it on the global run queue, which a processor
// takes from once its own is empty (or one turn in 61): after the rest of the turn. In
// bench-grpc this took write(2) per call per sidecar from 3.2–3.6 to 2.5–2.6 and flusher
// goroutines per call from 3.3 to 2.5, and the write comes closer to the end of the turn
// (runtime traces of the callee sidecar at 1,000 calls/s, from the write to the thread
// going idle: p50 35–41 µs → 2 µs), so a peer the kernel wakes onto the sidecar's CPU
// waits less for it.
func (f *FlushBehind) flush() {
	runtime.Gosched()
	f.mu.Lock()
	f.spawned = false
	if !f.writing {
		f.drain()
	}
	f.mu.Unlock()
}

// drain writes the queue until it is empty, with f.mu held and no other writer.
func (f *FlushBehind) drain() {
	f.writing = true
	for len(f.buf) > 0 && f.err == nil {
		out := f.buf
		f.buf = f.spare[:0]
		f.room.Broadcast() // the queue is empty again: writers waiting for room go on
		f.stall.Arm(f.sock)
		f.mu.Unlock()
		err := f.w.WriteAll(out)
		f.mu.Lock()
		f.spare = out[:0]
		f.fail(err)
		if len(f.buf) > 0 {
			f.since = time.Now()
		}
	}
	f.buf = f.buf[:0]
	f.writing = false
	f.room.Broadcast()
}

// tryDrain writes what the socket takes of the queue now, with f.mu held and no other
// writer, and leaves the rest to the flusher goroutine, ahead of what is queued later.
func (f *FlushBehind) tryDrain() {
	f.writing = true
	for len(f.buf) > 0 && f.err == nil {
		out := f.buf
		f.buf = f.spare[:0]
		f.mu.Unlock()
		n, err := f.w.TryWrite(out)
		f.mu.Lock()
		f.fail(err)
		if n < len(out) && f.err == nil { // the socket is full
			rest := copy(out, out[n:])
			f.spare = f.buf[:0]
			f.buf = append(out[:rest], f.buf...)
			f.since = time.Now()
			if !f.spawned {
				f.spawned = true
				go f.flushFn()
			}
			break
		}
		f.spare = out[:0]
		if len(f.buf) > 0 {
			f.since = time.Now()
		}
	}
	if f.err != nil {
		f.buf = f.buf[:0]
	}
	f.writing = false
	f.room.Broadcast()
}

// fail records a write error and closes the connection, with f.mu held.
func (f *FlushBehind) fail(err error) {
	if err == nil || f.err != nil {
		return
	}
	if f.stall.Timeout > 0 && errors.Is(err, os.ErrDeadlineExceeded) {
		err = &StalledError{After: f.stall.Timeout}
	}
	f.err = err
	_ = f.c.Close()
	f.room.Broadcast() // writers and WaitRoom waiting for room get the error
}

// StalledError is the write error of a FlushBehind whose peer took nothing for its write
// timeout, after which the FlushBehind cut the connection. It is deliberately not a
// timeout (net.Error) and does not wrap os.ErrDeadlineExceeded: a stream that was on the
// connection failed because its connection ended (Envoy's "reset reason: connection
// termination", 503), not because its request ran out of time (504). Which error
// net/http's HTTP/2 client returns for such a stream, this write error or the read loop's
// "connection lost", depends on which goroutine sees the close first; both now read as the
// connection ending.
type StalledError struct{ After time.Duration }

func (e *StalledError) Error() string {
	return fmt.Sprintf("the peer took no bytes for %v: connection cut", e.After)
}

// FloodError is the write error of a FlushBehind WithoutWaiting whose queue would pass
// FlushBehindMaxQueued: its peer reads nothing while the sidecar still has frames for it,
// and the connection is cut.
type FloodError struct{ Queued int }

func (e *FloodError) Error() string {
	return fmt.Sprintf("%d bytes queued for a peer that is not reading (the bound is %d): connection cut", e.Queued, FlushBehindMaxQueued)
}

// Room reports how many bytes a Write can queue now without waiting for the socket: none
// once the connection has failed. WithoutWaiting, a Write never waits, and Room is what
// stays under FlushBehindLimit.
func (f *FlushBehind) Room() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return 0
	}
	return max(FlushBehindLimit-len(f.buf), 0)
}

// Buffered reports how many bytes are queued behind the write in progress (tests).
func (f *FlushBehind) Buffered() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.buf)
}
