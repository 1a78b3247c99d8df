package httpproxy

import (
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/weftmesh/weft/sidecar/upstream"
)

// The event loop's side of max_connections and max_pending_requests (upstream/connlimit.go).
// Every upstream socket the loop opens holds one of its cluster's connection slots, from
// before the connect until closeUp (or, for a socket handed to a goroutine with a response
// the loop cannot frame, until that goroutine closes it). An attempt that finds no idle
// connection to its host and may not open one parks its exchange in the cluster's queue
// (ex.wait); the grant — a slot, or a connection of this loop's freed for the same host —
// comes back through the loop's Wake, from whichever goroutine freed it. The attempt's
// deadline (per-try or route timeout, armed by startAttempt) bounds the wait, checked by
// Tick; the caller leaving ends it too (end).

// loopWait is one exchange of this loop waiting for a connection.
type loopWait struct {
	w  *upstream.ConnWaiter
	c  *upstream.Cluster
	ex *exchange
	// abandoned: the exchange stopped waiting after it was granted; the grant, when it
	// comes through, is given back instead of used.
	abandoned bool
}

// loopGrants are what other goroutines hand a loop: granted waiters and requests to close
// an idle connection. They are taken on the loop's goroutine by Wake.
type loopGrants struct {
	mu       sync.Mutex
	grants   []*loopWait
	reclaims []*upstream.Cluster
	adopts   []adoption // captured connections joining the loop (loopcapture.go)
	dials    []tlsDial  // mutual TLS dials done (looptls.go)
	stopped  bool       // the loop has stopped: grants are given back at once, adoptions refused
}

// enqueue runs add (which appends to h.pending) under the lock and wakes the loop to take
// it; false, with add not run, once the loop has stopped.
func (h *hloop) enqueue(add func()) bool {
	h.pending.mu.Lock()
	stopped := h.pending.stopped
	if !stopped {
		add()
	}
	h.pending.mu.Unlock()
	if !stopped {
		h.ev.Wake()
	}
	return !stopped
}

// ReclaimIdle implements upstream.IdleOwner: close one of this loop's idle connections of
// c, on the loop's goroutine (a stopped loop closed its connections).
func (h *hloop) ReclaimIdle(c *upstream.Cluster) {
	h.enqueue(func() { h.pending.reclaims = append(h.pending.reclaims, c) })
}

// granted queues lw's grant for the loop's goroutine. A stopped loop's waiters were all
// abandoned, and only the loop itself hands over connections: the grant is a slot, given
// back here.
func (h *hloop) granted(lw *loopWait) {
	if !h.enqueue(func() { h.pending.grants = append(h.pending.grants, lw) }) {
		lw.c.ConnClosed(h, false)
	}
}

// stopGrants runs once the loop has stopped and closed its connections: it gives back the
// grants still queued and makes later ones go back at once.
func (h *hloop) stopGrants() {
	h.pending.mu.Lock()
	h.pending.stopped = true
	h.pending.mu.Unlock()
	h.takeGrants()
	h.dropAdoptions() // loopcapture.go
}

// reserveConn takes a connection slot for ex's attempt when its host has no idle
// connection here. It reports whether ex may dial now; if not, ex is parked until a grant
// (ex.wait), or was answered with 503 because the pool is full.
func (h *hloop) reserveConn(ex *exchange) bool {
	lw := &loopWait{ex: ex, c: ex.c}
	ok, w, err := ex.c.OpenConn(ex.host, h, func() { h.granted(lw) })
	switch {
	case err != nil:
		h.poolFailed(ex, err)
		return false
	case ok:
		return true
	}
	lw.w = w
	ex.wait = lw
	return false
}

// takeGrants carries out, on the loop's goroutine, what other goroutines (or this loop,
// through the same path) handed over: granted waits resume their attempts, abandoned ones
// give their grant back, and idle connections are closed for waiters elsewhere.
func (h *hloop) takeGrants() {
	h.pending.mu.Lock()
	grants, reclaims := h.pending.grants, h.pending.reclaims
	h.pending.grants, h.pending.reclaims = nil, nil
	h.pending.mu.Unlock()
	for _, c := range reclaims {
		h.closeOneIdle(c)
	}
	for _, lw := range grants {
		u, _ := lw.w.Conn.(*sock) // a connection of this loop handed over, or nil: a slot
		switch {
		case u != nil && u.closed:
			// The host closed the handed connection before this ran (its slot went on
			// when it closed): the attempt asks again.
			if !lw.abandoned {
				lw.ex.wait = nil
				h.send(lw.ex, h.ev.Now(), false)
			}
		case lw.abandoned && u != nil:
			h.closeUp(u) // its slot passes on
		case lw.abandoned:
			lw.c.ConnClosed(h, false)
		case u != nil:
			lw.ex.wait = nil
			u.reused = true
			h.attach(lw.ex, u)
		default:
			lw.ex.wait = nil
			h.dialFor(lw.ex, h.ev.Now())
		}
	}
}

// abandonWait ends ex's wait for a connection (its deadline passed, or its caller left).
// A grant that raced with it is given back when it comes through takeGrants.
func (h *hloop) abandonWait(ex *exchange) {
	lw := ex.wait
	if lw == nil {
		return
	}
	ex.wait = nil
	if ex.c.CancelWait(lw.w) {
		lw.abandoned = true
	}
	lw.ex = nil // the exchange's storage is reused by the connection's next request
}

// waitTick ends ex's wait when its attempt's deadline has passed at t (unix nanos);
// otherwise it notes the deadline with later.
func (h *hloop) waitTick(ex *exchange, t int64, later func(int64)) {
	if ex.tryBy == 0 {
		return // no route or per-try timeout: the wait ends with a grant or the caller
	}
	if t < ex.tryBy {
		later(ex.tryBy)
		return
	}
	h.abandonWait(ex)
	h.poolFailed(ex, &upstream.PoolTimeoutError{Cluster: ex.c.Name})
}

// poolFailed answers ex, whose attempt got no connection: the pool was full (503,
// x-weft-overloaded) or the wait timed out (504). The host never saw the attempt.
func (h *hloop) poolFailed(ex *exchange, err error) {
	if ex.host != nil {
		ex.c.Report(ex.host, upstream.NotSent)
		ex.host = nil
	}
	h.reply(ex, ex.retry.giveUp(err, h.ev.Now()))
}

// closeOneIdle closes one of this loop's idle connections of c, the longest idle of the
// first host that has one.
func (h *hloop) closeOneIdle(c *upstream.Cluster) {
	for _, host := range c.Hosts() {
		if idle := h.idle[host]; len(idle) > 0 {
			u := idle[0]
			h.idle[host] = append(idle[:0], idle[1:]...)
			h.closeUp(u)
			return
		}
	}
}

// dialFor opens a connection for ex's attempt with the slot it holds and sends on it.
func (h *hloop) dialFor(ex *exchange, now time.Time) {
	if ex.c.MeshTLSTo(ex.host) {
		h.dialTLS(ex) // looptls.go
		return
	}
	u, err := h.dial(ex.host, ex.c.Config(), now)
	if err != nil {
		ex.c.ConnClosed(h, false)
		h.attemptFailed(ex, err)
		return
	}
	u.cluster = ex.c
	h.attach(ex, u)
}

// slotConn is an upstream connection the loop handed to a goroutine (slowResponse): Close
// gives its max_connections slot back, once.
type slotConn struct {
	net.Conn
	c     *upstream.Cluster
	owner upstream.IdleOwner
	once  sync.Once
}

func (s *slotConn) Close() error {
	err := s.Conn.Close()
	s.once.Do(func() { s.c.ConnClosed(s.owner, false) })
	return err
}

// markOverloaded sets x-weft-overloaded on a local answer to a request the connection
// pool refused, as Envoy sets x-envoy-overloaded.
func markOverloaded(w http.ResponseWriter, err error) {
	var full *upstream.PoolFullError
	if errors.As(err, &full) {
		w.Header().Set(overloadedHeader, "true")
	}
}
