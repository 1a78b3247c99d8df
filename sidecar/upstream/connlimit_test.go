package upstream

import (
	"context"
	"errors"
	"testing"
	"time"

	testclock "k8s.io/utils/clock/testing"

	"github.com/weftmesh/weft/sidecar/config"
)

// owner is a test IdleOwner that records reclaim requests.
type owner struct{ reclaims []*Cluster }

func (o *owner) ReclaimIdle(c *Cluster) { o.reclaims = append(o.reclaims, c) }

// waiter queues a waiter and returns it with a counter of its notifications.
func waiter(t *testing.T, c *Cluster, h *Host, o IdleOwner) (*ConnWaiter, *int) {
	t.Helper()
	n := new(int)
	ok, w, err := c.OpenConn(h, o, func() { *n++ })
	if ok || err != nil || w == nil {
		t.Fatalf("OpenConn: ok=%v err=%v, want a queued waiter", ok, err)
	}
	return w, n
}

// The cap, the FIFO, the hand-over of a freed connection to the head waiter of the same
// host and owner, the slot to the head otherwise, overflow, cancellation and reclaim.
func TestConnSlots(t *testing.T) {
	clk := testclock.NewFakeClock(time.Unix(1000, 0))
	c, hs := cluster(t, clk, 2, nil, config.Limits{MaxRequests: 100, MaxConnections: 2, MaxPending: 3, MaxRetries: 3})
	a, b := hs[0], hs[1]
	loopA, loopB := &owner{}, &owner{}
	for range 2 {
		if ok, _, err := c.OpenConn(a, loopA, nil); !ok || err != nil {
			t.Fatalf("a connection under max_connections 2 was refused: %v", err)
		}
	}
	w1, n1 := waiter(t, c, a, loopA) // same host and owner as the open ones
	w2, n2 := waiter(t, c, b, loopB) // another host and owner
	w3, n3 := waiter(t, c, a, loopA)
	if ok, _, err := c.OpenConn(a, loopA, nil); ok || !errors.As(err, new(*PoolFullError)) {
		t.Fatalf("4th waiter with max_pending_requests 3: ok=%v err=%v, want *PoolFullError", ok, err)
	}
	if got := c.Stats.OverflowPending.Load(); got != 1 {
		t.Errorf("pending overflows %d, want 1", got)
	}
	if open, _, pending := c.ConnStats(); open != 2 || pending != 3 {
		t.Errorf("open %d pending %d, want 2 and 3", open, pending)
	}
	// A connection to a freed by loopA goes to the head, w1, as it is.
	if w, keep := c.ConnIdle(a, loopA); w != w1 || !keep {
		t.Fatalf("ConnIdle: waiter %p keep %v, want the head waiter", w, keep)
	}
	w1.Hand("conn")
	if *n1 != 1 || w1.Conn != "conn" {
		t.Errorf("head waiter notified %d times with %v", *n1, w1.Conn)
	}
	// The next freed connection is loopA's to a, but the head (w2) wants b on loopB: the
	// connection must be closed, and its slot goes to w2, not to w3 behind it.
	if w, keep := c.ConnIdle(a, loopA); w != nil || keep {
		t.Fatalf("ConnIdle with a head waiting for another host: waiter %v keep %v, want close", w, keep)
	}
	c.ConnClosed(loopA, false)
	if *n2 != 1 || w2.Conn != nil || *n3 != 0 {
		t.Errorf("after a close: head notified %d (conn %v), next %d; want the head granted a slot", *n2, w2.Conn, *n3)
	}
	if open, _, _ := c.ConnStats(); open != 2 {
		t.Errorf("open %d after a slot passed on, want 2 (the cap)", open)
	}
	// w3 gives up before anything frees: it leaves the queue, nothing is granted to it.
	if c.CancelWait(w3) {
		t.Error("CancelWait reported a grant that never happened")
	}
	// With nobody waiting a freed connection is pooled and counted idle; a new waiter
	// asks its owner to close it so the slot comes free.
	if _, keep := c.ConnIdle(b, loopB); !keep {
		t.Fatal("a freed connection with nobody waiting must be kept")
	}
	w4, n4 := waiter(t, c, a, loopA)
	if len(loopB.reclaims) != 1 {
		t.Fatalf("reclaims asked of the idle owner: %d, want 1", len(loopB.reclaims))
	}
	c.ConnClosed(loopB, true) // the reclaimed idle connection
	if *n4 != 1 {
		t.Errorf("waiter after reclaim notified %d times, want 1", *n4)
	}
	if _, idle, pending := c.ConnStats(); idle != 0 || pending != 0 {
		t.Errorf("idle %d pending %d, want 0 and 0", idle, pending)
	}
	// A grant that races with a cancel is reported, so the slot can be given back.
	w5, _ := waiter(t, c, a, loopA)
	c.ConnClosed(loopA, false)
	if !c.CancelWait(w5) {
		t.Error("CancelWait after a grant must report it")
	}
	_ = w4
}

// Raising max_connections in a config swap lets waiters through at once.
func TestConnSlotsRegrantOnRaise(t *testing.T) {
	clk := testclock.NewFakeClock(time.Unix(1000, 0))
	ctxCluster, hs := cluster(t, clk, 1, nil, config.Limits{MaxRequests: 100, MaxConnections: 1, MaxPending: 5, MaxRetries: 3})
	c := ctxCluster
	o := &owner{}
	if ok, _, _ := c.OpenConn(hs[0], o, nil); !ok {
		t.Fatal("first connection refused")
	}
	_, n := waiter(t, c, hs[0], o)
	cc := *c.Config()
	cc.Limits.MaxConnections = 2
	c.mgr.Update(map[string]*config.Cluster{"c": &cc})
	if *n != 1 {
		t.Errorf("waiter notified %d times after max_connections went 1 → 2, want 1", *n)
	}
}

// BenchmarkConnIdleTaken is what the cap costs a request on a kept-alive connection: the
// release to the pool and the take from it.
func BenchmarkConnIdleTaken(b *testing.B) {
	clk := testclock.NewFakeClock(time.Unix(1000, 0))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := NewManager(ctx, clk)
	m.Update(map[string]*config.Cluster{"c": {Name: "c", Limits: config.Limits{MaxConnections: 1024, MaxPending: 1024, MaxRequests: 1024},
		Endpoints: []config.Endpoint{{Address: "10.0.0.1:80", Weight: 1}}}})
	c := m.Get("c")
	h := c.Hosts()[0]
	o := &owner{}
	b.ReportAllocs()
	for b.Loop() {
		c.ConnIdle(h, o)
		c.IdleTaken(o)
	}
}

// HTTP/2 connections take slots of the same cap without queueing: refused at the cap
// unless forced (a host's first connection, counted as an overflow), never ahead of an
// HTTP/1.1 request already waiting, and a closed one's slot goes to that waiter.
func TestConnSlotsHTTP2(t *testing.T) {
	clk := testclock.NewFakeClock(time.Unix(1000, 0))
	c, hs := cluster(t, clk, 2, nil, config.Limits{MaxRequests: 100, MaxConnections: 2, MaxPending: 3, MaxRetries: 3})
	for i := range 2 {
		if !c.ConnRoom() || !c.OpenH2Conn(false) {
			t.Fatalf("HTTP/2 connection %d under max_connections 2 was refused", i+1)
		}
	}
	if c.ConnRoom() || c.OpenH2Conn(false) {
		t.Fatal("a third HTTP/2 connection was allowed at max_connections 2")
	}
	if got := c.Stats.ConnOverflow.Load(); got != 0 {
		t.Errorf("connection overflows %d after a refusal, want 0 (the caller counts its requests)", got)
	}
	if !c.OpenH2Conn(true) {
		t.Fatal("a forced HTTP/2 connection (a host's first) was refused")
	}
	if open, _, _ := c.ConnStats(); open != 3 || c.Stats.ConnOverflow.Load() != 1 {
		t.Errorf("open %d, overflows %d after a forced connection past the cap, want 3 and 1", open, c.Stats.ConnOverflow.Load())
	}
	c.ConnClosed(nil, false) // the forced one: back to the cap, still no room
	if open, _, _ := c.ConnStats(); open != 2 || c.ConnRoom() {
		t.Errorf("open %d room %v, want 2 and no room", open, c.ConnRoom())
	}
	w, n := waiter(t, c, hs[0], &owner{}) // an HTTP/1.1 request waits
	c.ConnClosed(nil, false)              // its slot goes to the waiter, not to the next HTTP/2 dial
	if *n != 1 || !w.granted {
		t.Errorf("the waiting HTTP/1.1 request was notified %d times (granted %v), want once", *n, w.granted)
	}
	if c.OpenH2Conn(false) {
		t.Error("an HTTP/2 connection took the slot a waiting request was granted")
	}
	c.ConnClosed(nil, false) // the waiter's connection and the last HTTP/2 one end
	c.ConnClosed(nil, false)
	if open, _, pending := c.ConnStats(); open != 0 || pending != 0 || !c.ConnRoom() {
		t.Errorf("open %d pending %d room %v after every connection ended, want 0, 0, true", open, pending, c.ConnRoom())
	}
}
