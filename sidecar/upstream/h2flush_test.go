package upstream

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weftmesh/weft/testenv"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	var peer net.Conn
	select {
	case peer = <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("accept timed out")
	}
	t.Cleanup(func() { c.Close(); peer.Close() })
	return c, peer
}

// Writes from several goroutines (the HTTP/2 server's writer and the client's body
// writers take turns) arrive whole and in the order each goroutine made them, small
// writes queued behind the flusher and writes past the limit written directly alike.
func TestFlushBehindKeepsEveryWriteInOrder(t *testing.T) {
	c, peer := tcpPair(t)
	f := NewFlushBehind(c, c)
	const writers, each = 4, 300
	var wg sync.WaitGroup
	var mu sync.Mutex // one writer at a time, as net/http's framers write
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				size := 16 + (i*131)%200
				if i%50 == 7 {
					size = FlushBehindLimit + 100 // larger than the queue may hold
				}
				rec := make([]byte, size)
				binary.BigEndian.PutUint32(rec, uint32(size))
				rec[4], rec[5] = byte(w), byte(i>>8)
				rec[6] = byte(i)
				mu.Lock()
				_, err := f.Write(rec)
				mu.Unlock()
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	next := make([]int, writers)
	done := make(chan error, 1)
	go func() {
		hdr := make([]byte, 7)
		for range writers * each {
			if _, err := io.ReadFull(peer, hdr); err != nil {
				done <- err
				return
			}
			size := int(binary.BigEndian.Uint32(hdr))
			w, i := int(hdr[4]), int(hdr[5])<<8|int(hdr[6])
			if w >= writers || i != next[w] {
				done <- errors.New("a record arrived out of order")
				return
			}
			next[w]++
			if _, err := io.CopyN(io.Discard, peer, int64(size-7)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	wg.Wait()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the peer did not get every record: %v", next)
	}
}

// A peer that never reads (a hostile client that sends no WINDOW_UPDATE and stops
// reading TCP) cannot make the queue grow past FlushBehindLimit: once the socket buffers
// are full, the writer is held back (in write(2) itself, or waiting for the goroutine
// that is). Closing the connection ends the wait with an error.
func TestFlushBehindIsBoundedWhenThePeerStopsReading(t *testing.T) {
	c, _ := tcpPair(t) // the peer never reads
	f := NewFlushBehind(c, c)
	wrote := make(chan error, 1)
	var accepted atomic.Int64
	go func() {
		chunk := bytes.Repeat([]byte("x"), 1000)
		for {
			if _, err := f.Write(chunk); err != nil {
				wrote <- err
				return
			}
			accepted.Add(int64(len(chunk)))
		}
	}()
	// Wait until the writer is held back: what Write accepted stops moving.
	last, still := int64(-1), 0
	for deadline := time.Now().Add(10 * time.Second); still < 3; {
		if time.Now().After(deadline) {
			t.Fatalf("Write kept accepting bytes for 10 s (%d) from a peer that reads nothing", accepted.Load())
		}
		time.Sleep(100 * time.Millisecond)
		if n := f.Buffered(); n > FlushBehindLimit {
			t.Fatalf("%d bytes queued, past the %d limit", n, FlushBehindLimit)
		}
		select {
		case err := <-wrote:
			t.Fatalf("Write failed before the close: %v", err)
		default:
		}
		if n := accepted.Load(); n == last {
			still++
		} else {
			last, still = n, 0
		}
	}
	c.Close()
	select {
	case err := <-wrote:
		if err == nil {
			t.Fatal("Write returned no error after the close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a Write held back by a full socket did not end when the connection closed")
	}
	if _, err := f.Write([]byte("more")); err == nil {
		t.Fatal("Write after a failed write returned no error")
	}
}

// A write error (the peer reset the connection) is sticky and closes the connection, so
// the HTTP/2 read loop on it ends too.
func TestFlushBehindClosesTheConnectionOnAWriteError(t *testing.T) {
	c, peer := tcpPair(t)
	f := NewFlushBehind(c, c)
	_ = peer.(*net.TCPConn).SetLinger(0)
	peer.Close() // RST
	time.Sleep(50 * time.Millisecond)
	var err error
	for range 100 {
		if _, err = f.Write(make([]byte, 1000)); err != nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err == nil {
		t.Fatal("writes to a reset connection kept succeeding")
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	if _, rerr := c.Read(make([]byte, 1)); !errors.Is(rerr, net.ErrClosed) {
		t.Fatalf("read after the failed flush = %v, want net.ErrClosed (the flusher closes the connection)", rerr)
	}
}

// A peer that takes nothing for the write timeout gets its connection cut, and the writes
// fail with a StalledError, which is not a timeout: net/http's HTTP/2 client hands this
// error to the streams on the connection, and the proxy answers a timeout with a 504
// "upstream request timeout" although no request timed out (seen as a flaky
// TestUpstreamThatStopsReadingIsCutAfterTheWriteTimeout on the goroutine path).
func TestFlushBehindWriteTimeoutIsAStallNotATimeout(t *testing.T) {
	c, _ := tcpPair(t) // the peer never reads
	const timeout = 1500 * time.Millisecond
	f := NewFlushBehind(c, c).WithWriteTimeout(timeout)
	start := time.Now()
	var err error
	for time.Since(start) < 20*time.Second {
		if _, err = f.Write(make([]byte, 16<<10)); err != nil {
			break
		}
	}
	took := time.Since(start)
	var stalled *StalledError
	if !errors.As(err, &stalled) {
		t.Fatalf("the write to a peer that reads nothing ended after %v with %v; want a StalledError", took, err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the stall error %v reads as a timeout", err)
	}
	if took < timeout-time.Second {
		t.Errorf("the connection was cut after %v, before the %v write timeout could have passed", took, timeout)
	}
	if _, err := f.Write([]byte("more")); !errors.As(err, &stalled) {
		t.Errorf("a write after the cut = %v; want the same StalledError", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	if _, rerr := c.Read(make([]byte, 1)); !errors.Is(rerr, net.ErrClosed) {
		t.Fatalf("read after the cut = %v, want net.ErrClosed", rerr)
	}
}

// WithoutWaiting, as net/http's HTTP/2 client's sockets are: with the peer reading
// nothing, a writer that waits for room first (a request body, WaitRoom) is held back once
// the socket is full, while a Write — a PING acknowledgement the client's read loop writes
// under the lock the body's writes take too — returns at once, its bytes queued. A
// WaitRoom whose context ends returns; the queue past FlushBehindMaxQueued cuts the
// connection.
func TestFlushBehindWithoutWaitingHoldsBackOnlyWhoWaitsForRoom(t *testing.T) {
	c, _ := tcpPair(t) // the peer never reads
	f := NewFlushBehind(c, c).WithoutWaiting()
	body := make([]byte, FlushBehindChunk)
	var sent atomic.Int64
	held := make(chan error, 1)
	go func() {
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			err := f.WaitRoom(ctx)
			cancel()
			if err != nil {
				held <- err
				return
			}
			if _, err := f.Write(body); err != nil {
				held <- err
				return
			}
			sent.Add(int64(len(body)))
		}
	}()
	var err error
	select {
	case err = <-held:
	case <-time.After(30 * time.Second):
		t.Fatalf("the body kept getting room for 30 s (%d bytes) from a peer that reads nothing", sent.Load())
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitRoom ended with %v; want its context's deadline (the connection is still up)", err)
	}
	if q := f.Buffered(); q > FlushBehindLimit+FlushBehindChunk {
		t.Errorf("%d bytes queued behind a full socket; want at most the limit and one chunk (%d)", q, FlushBehindLimit+FlushBehindChunk)
	}
	// A PING acknowledgement: queued at once, though the socket takes nothing.
	ack := make([]byte, 17)
	wrote := make(chan error, 1)
	go func() {
		_, err := f.Write(ack)
		wrote <- err
	}()
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatalf("the acknowledgement's Write failed: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a Write waited for a socket the peer does not read")
	}
	before := f.Buffered()
	// More than FlushBehindMaxQueued written without waiting for room: the connection is cut.
	var werr error
	for range FlushBehindMaxQueued/len(body) + 2 {
		if _, werr = f.Write(body); werr != nil {
			break
		}
	}
	var flood *FloodError
	if !errors.As(werr, &flood) {
		t.Fatalf("writes past %d bytes queued (%d before them) ended with %v; want a FloodError", FlushBehindMaxQueued, before, werr)
	}
	if err := f.WaitRoom(context.Background()); !errors.As(err, &flood) {
		t.Errorf("WaitRoom on the cut connection = %v; want its FloodError", err)
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	if _, rerr := c.Read(make([]byte, 1)); !errors.Is(rerr, net.ErrClosed) {
		t.Fatalf("read after the flood = %v, want net.ErrClosed", rerr)
	}
}

// BenchmarkFlushBehindThreeFrames is a unary call's three frames written back to back:
// with FlushBehind they leave in one write(2) instead of three.
func BenchmarkFlushBehindThreeFrames(b *testing.B) {
	for _, mode := range []string{"direct", "flushbehind"} {
		b.Run(mode, func(b *testing.B) {
			ln, _ := net.Listen("tcp", "127.0.0.1:0")
			defer ln.Close()
			go func() {
				p, err := ln.Accept()
				if err == nil {
					_, _ = io.Copy(io.Discard, p)
				}
			}()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			var w io.Writer = c
			if mode == "flushbehind" {
				w = NewFlushBehind(c, c)
			}
			h, d, tr := make([]byte, 12), make([]byte, 16), make([]byte, 11)
			b.ReportAllocs()
			for b.Loop() {
				_, _ = w.Write(h)
				_, _ = w.Write(d)
				_, _ = w.Write(tr)
			}
		})
	}
}

// busyScheduler keeps the only processor busy for d with two goroutines handing a token to
// each other (each takes the next slot, so a goroutine started meanwhile waits), as the
// HTTP/2 server's frame reader and serve loop do on a loaded sidecar.
func busyScheduler(d time.Duration) (stop func()) {
	prev := runtime.GOMAXPROCS(1)
	a, b := make(chan struct{}), make(chan struct{})
	end := time.Now().Add(d)
	done := make(chan struct{})
	go func() {
		for range a {
			b <- struct{}{}
		}
	}()
	go func() {
		defer close(done)
		for time.Now().Before(end) {
			a <- struct{}{}
			<-b
		}
		close(a)
	}()
	return func() { <-done; runtime.GOMAXPROCS(prev) }
}

// arrived reports whether n bytes are already in peer's receive queue: a read that finds
// them takes no scheduling.
func arrived(t *testing.T, peer net.Conn, n int) bool {
	t.Helper()
	_ = peer.SetReadDeadline(time.Now().Add(time.Millisecond))
	defer func() { _ = peer.SetReadDeadline(time.Time{}) }()
	got, _ := io.ReadFull(peer, make([]byte, n))
	return got == n
}

// Regression: the first FlushBehind left every queued byte to its flusher goroutine, which
// a busy scheduler ran 48-60 ms late (seen in bench-grpc as a 640 ms p50). A connection's
// next write after FlushBehindDelay, or its read loop going back to the socket, writes
// the queue itself.
func TestFlushBehindDoesNotWaitForABusyScheduler(t *testing.T) {
	c, peer := tcpPair(t)
	f := NewFlushBehind(c, c)
	stop := busyScheduler(200 * time.Millisecond)
	defer stop()

	_, _ = f.Write([]byte("frame-1"))
	for start := time.Now(); time.Since(start) <= 100*time.Microsecond; { // past FlushBehindDelay, no yield
	}
	_, _ = f.Write([]byte("frame-2"))
	// frame-1 leaves with frame-2, or, when its own Write took longer than FlushBehindDelay
	// (the race detector slows it that much), alone in that Write's stale pass; frame-2 is
	// then a new queue, not yet due.
	if !arrived(t, peer, len("frame-1")) {
		t.Fatal("a write after FlushBehindDelay left the queue to the flusher goroutine")
	}

	_, _ = f.Write([]byte("frame-3"))
	f.FlushPending() // the read loop, before it waits for the socket
	if !arrived(t, peer, len("frame-2frame-3")) {
		t.Fatal("FlushPending left the queue to the flusher goroutine")
	}

	// Another connection's I/O writes out a queue the flusher is late for.
	c2, peer2 := tcpPair(t)
	f2 := NewFlushBehind(c2, c2)
	_, _ = f.Write([]byte("frame-4"))
	for start := time.Now(); time.Since(start) <= 100*time.Microsecond; { // no yield
	}
	_, _ = f2.Write([]byte("other"))
	if !arrived(t, peer, len("frame-4")) {
		t.Fatal("a write on another connection after FlushBehindDelay left this queue to its flusher goroutine")
	}
	f2.FlushPending()
	if !arrived(t, peer2, len("other")) {
		t.Fatal("the other connection's own queue was not written")
	}
}

// writeLog is a connection without a descriptor, so FlushBehind writes it through Write:
// each Write is one write(2) a socket would take.
type writeLog struct {
	net.Conn // unused: only Write and Close are called
	mu       sync.Mutex
	writes   []string
}

func (w *writeLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes = append(w.writes, string(p))
	return len(p), nil
}

func (w *writeLog) Close() error { return nil }

// Regression: a connection whose queue its flusher wrote stayed listed for the other
// connections' stale pass, with stale.oldest as old as that queue, so the first write after
// any pause past FlushBehindDelay ran a pass that wrote the frame it had just queued, alone:
// an exchange after a quiet spell left in two writes instead of one. A pass writes only the
// queues that have waited FlushBehindDelay.
//
// The two writes must take less than FlushBehindDelay, or "a" is due and rightly written
// alone; a run where they took longer (the race detector, a preempted thread) is made again.
func TestFlushBehindAfterAQuietSpellStillCoalesces(t *testing.T) {
	prev := runtime.GOMAXPROCS(1)
	defer runtime.GOMAXPROCS(prev)
	for range 50 {
		w := &writeLog{}
		f := NewFlushBehind(w, w)
		flushed := func() {
			for deadline := time.Now().Add(5 * time.Second); f.Buffered() > 0 && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
		}
		time.Sleep(2 * FlushBehindDelay)
		writeStale() // other tests' queues: the next pass is this connection's
		_, _ = f.Write([]byte("x"))
		flushed()
		time.Sleep(2 * time.Millisecond) // quiet: past FlushBehindDelay
		start := time.Now()
		_, _ = f.Write([]byte("a"))
		_, _ = f.Write([]byte("b"))
		took := time.Since(start)
		flushed()
		if took >= FlushBehindDelay {
			continue
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if len(w.writes) != 2 || w.writes[1] != "ab" {
			t.Fatalf("writes %q, want [\"x\" \"ab\"]: two frames queued back to back after a quiet spell left apart", w.writes)
		}
		return
	}
	testenv.Missing(t, "two writes never took less than FlushBehindDelay here")
}

// The flusher writes once every goroutine runnable when it was started has run, so their
// frames leave in the same write(2). A goroutine started after the flusher takes the
// processor's next slot and pushes the flusher back into the run queue, ahead of
// goroutines started before it — as the HTTP/2 server starts one per frame write: the
// flusher used to run between them and the response left in two or three writes. Only
// runs whose three writes took less than FlushBehindDelay count (past it the queue is due
// and written at once); of those, nearly all must leave in one write, since the race
// detector shuffles the order goroutines run in and the scheduler takes one turn in 61
// from the global queue first.
func TestFlushBehindWritesAfterTheRunnableGoroutines(t *testing.T) {
	prev := runtime.GOMAXPROCS(1)
	defer runtime.GOMAXPROCS(prev)
	fast, whole := 0, 0
	var last []string
	for range 100 {
		if fast == 20 {
			break
		}
		w := &writeLog{}
		f := NewFlushBehind(w, w)
		var wg sync.WaitGroup
		wg.Add(2)
		start := time.Now()
		_, _ = f.Write([]byte("a")) // starts the flusher
		go func() { defer wg.Done(); _, _ = f.Write([]byte("b")) }()
		go func() { defer wg.Done(); _, _ = f.Write([]byte("c")) }()
		wg.Wait()
		took := time.Since(start)
		for deadline := time.Now().Add(5 * time.Second); f.Buffered() > 0 && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		if took >= FlushBehindDelay {
			continue
		}
		fast++
		w.mu.Lock()
		last = w.writes
		if len(w.writes) == 1 && len(w.writes[0]) == 3 {
			whole++
		}
		w.mu.Unlock()
	}
	if fast < 10 {
		testenv.Missing(t, fmt.Sprintf("three writes took less than FlushBehindDelay in only %d of 100 runs here", fast))
	}
	if whole < fast*3/4 {
		t.Fatalf("three frames queued by goroutines runnable together left in one write in %d of %d runs, want at least 3/4 (last run: %q)", whole, fast, last)
	}
}

// A request body's read waiting for room in a full queue ends when the HTTP/2 client
// closes the body (the stream ended before all of it was sent): its goroutine is not left
// waiting for a peer that reads nothing.
func TestGatedBodyCloseEndsAReadWaitingForRoom(t *testing.T) {
	c, _ := tcpPair(t) // the peer never reads
	f := NewFlushBehind(c, c).WithoutWaiting()
	chunk := make([]byte, FlushBehindChunk)
	for deadline := time.Now().Add(30 * time.Second); ; {
		if time.Now().After(deadline) {
			t.Fatal("the queue still had room after 30 s of writes to a peer that reads nothing")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := f.WaitRoom(ctx)
		cancel()
		if err != nil {
			break
		}
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	b := newGatedBody(context.Background(), io.NopCloser(strings.NewReader("body")), f)
	done := make(chan error, 1)
	go func() {
		_, err := b.Read(make([]byte, 16))
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("a read returned %v with the queue full", err)
	case <-time.After(200 * time.Millisecond):
	}
	_ = b.Close()
	select {
	case err := <-done:
		if !errors.Is(err, errBodyClosed) {
			t.Errorf("the waiting read ended with %v; want errBodyClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end the read waiting for room")
	}
}
