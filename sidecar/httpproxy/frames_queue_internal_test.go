package httpproxy

import (
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// loopbackPair returns both ends of a TCP connection on loopback.
func loopbackPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	p, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); p.Close() })
	return c.(*net.TCPConn), p.(*net.TCPConn)
}

// While an upstream's socket takes nothing, the relay queues at most frameUpQueued (and
// the frame that crosses it) of request bodies for that upstream; the rest stays with its
// stream, and only what was queued is given back to the caller as window. Once the
// upstream reads again, the writer's resume sends the rest on. The head-of-line tests show
// the caller's connection keeps working behind a stalled upstream; this one holds the
// relay to the byte bound README states.
func TestRelayQueuesAtMostFrameUpQueuedForAnUpstreamThatReadsNothing(t *testing.T) {
	callerNC, callerPeer := loopbackPair(t)
	upNC, upPeer := loopbackPair(t)
	_ = upPeer.SetReadBuffer(16 << 10)
	go func() { _, _ = io.Copy(io.Discard, callerPeer) }()

	f := &fconn{streams: map[uint32]*fstream{}}
	f.out.init(callerNC, callerNC, &f.mu)
	u := &fup{f: f, nc: upNC, streams: map[uint32]*fstream{}, sendWin: 1 << 30, ready: true}
	u.out.init(upNC, upNC, &f.mu)
	u.out.resume = u.resume

	// Fill the socket toward the upstream: a flush that does not wait writes what the
	// socket takes and leaves the rest to the finish goroutine, which waits (blocked).
	junk := make([]byte, 256<<10)
	var queuedJunk int64
	for i := 0; ; i++ {
		if i == 200 {
			t.Fatal("the socket toward an upstream that reads nothing took 50 MiB")
		}
		f.mu.Lock()
		u.out.buf.Write(junk)
		f.mu.Unlock()
		queuedJunk += int64(len(junk))
		_ = u.out.flush(false)
		f.mu.Lock()
		blocked := u.out.blocked
		f.mu.Unlock()
		if blocked {
			break
		}
	}

	const bodySize = 1 << 20
	s := &fstream{f: f, id: 1, u: u, uid: 1, body: make([]byte, bodySize), upWin: 1 << 30, bodyEnd: true}
	u.streams[1] = s
	f.held = bodySize
	f.mu.Lock()
	s.pumpReq()
	queued, left, held := u.out.buf.Len(), len(s.body), f.held
	f.mu.Unlock()
	frame := int(u.out.maxFrame) + 9
	if queued > frameUpQueued+frame {
		t.Errorf("%d bytes queued for an upstream whose socket takes nothing; want at most %d (frameUpQueued and one frame)", queued, frameUpQueued+frame)
	}
	if queued < frameUpQueued {
		t.Errorf("only %d bytes queued behind the full socket; the bound is %d", queued, frameUpQueued)
	}
	sent := bodySize - left
	if left == 0 || sent > queued {
		t.Errorf("the stream kept %d of its %d bytes while %d were queued: the body went past the bound", left, bodySize, queued)
	}
	if held != int64(left) {
		t.Errorf("the caller was given back window for %d bytes; want the %d queued", bodySize-held, sent)
	}
	t.Logf("behind a full socket: %d bytes queued, %d kept by the stream", queued, left)

	// The upstream reads again: everything, the rest of the body included, reaches it.
	var got atomic.Int64
	go func() {
		n, _ := io.Copy(io.Discard, upPeer)
		got.Store(n)
	}()
	want := queuedJunk + bodySize + 9*int64((bodySize+16383)/16384)
	deadline := time.Now().Add(10 * time.Second)
	for {
		f.mu.Lock()
		done := len(s.body) == 0 && s.reqDone && !u.out.writing && u.out.buf.Len() == 0
		f.mu.Unlock()
		if done {
			break
		}
		if time.Now().After(deadline) {
			f.mu.Lock()
			left, end := len(s.body), s.reqDone
			f.mu.Unlock()
			t.Fatalf("10 s after the upstream read again the stream still kept %d bytes (request end sent: %v)", left, end)
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = upNC.CloseWrite()
	for deadline := time.Now().Add(10 * time.Second); got.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := got.Load(); n != want {
		t.Errorf("the upstream read %d bytes; want %d (what filled the socket, the body and its frame headers)", n, want)
	}
}
