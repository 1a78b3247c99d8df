package upstream

import (
	"errors"
	"fmt"
	"sync"
)

// The max_connections cap and the max_pending_requests queue, shared by both HTTP paths.
//
// Envoy's circuit breakers are per cluster and shared by its worker threads:
// max_connections caps the connections open to all the cluster's hosts, and a request that
// finds no connection free and none may be opened waits as pending, up to
// max_pending_requests; past that it is refused with 503 and x-envoy-overloaded
// (upstream_rq_pending_overflow). Here the cap counts every open HTTP/1.1 connection of the
// cluster, busy or idle, whichever path holds it: the goroutine path's per-host pools and
// each event loop's (an "owner" of idle connections). A request that needs a connection
// and cannot open one waits in the cluster's FIFO for
//
//   - a connection its own owner frees to the same host (handed over, no new connect), or
//   - a slot: a connection closed somewhere; the waiter dials.
//
// A freed connection goes to the head of the queue only: if the head waits for another
// host or owner, the connection is closed and its slot goes to the head, so nobody is
// overtaken. When a request starts waiting while connections sit idle elsewhere (another
// host, another loop), one of them is closed (ReclaimIdle) so its slot comes free.
//
// Unlike Envoy, a host with no connection gets none beyond the cap (Envoy lets each
// per-worker host pool open one even then), so the cap holds exactly: the backend never sees
// more than max_connections HTTP/1.1 connections from one sidecar.
//
// HTTP/2 connections count against the same cap (OpenH2Conn) but do not queue: a request
// waits for a stream on a connection its pool has, and a pool with no connection to a host
// opens one even past the cap, as Envoy's HTTP/2 pools do, so its requests are never left
// behind connections other pools hold. The goroutine path keeps one such pool per host;
// the frame relay, whose pools are per caller connection, never opens past the cap: a
// caller connection that would need to is served by the goroutine path's pool instead
// (httpproxy/frameup.go). So one sidecar opens at most max_connections HTTP/2 connections
// to a cluster, plus one per host the goroutine path reaches while the cap is full.

// IdleOwner is a place that keeps a cluster's idle connections and can be asked to close
// one: the goroutine path's host pools, or one HTTP event loop.
type IdleOwner interface {
	// ReclaimIdle closes one idle connection of c, now or soon, from any goroutine; the
	// close is reported with ConnClosed (wasIdle true) as always.
	ReclaimIdle(c *Cluster)
}

// ConnWaiter is one request waiting for a connection.
type ConnWaiter struct {
	host    *Host
	owner   IdleOwner
	notify  func()
	granted bool // under connSlots.mu: it has a slot, or Conn
	// Conn is an idle connection of the waiter's owner handed over to it (a *pconn, or
	// the event loop's socket), set by the owner before notify; nil when the waiter was
	// granted a slot and must dial.
	Conn any
}

// Hand gives w the connection conn, which its owner freed for w's host (ConnIdle), and
// wakes w.
func (w *ConnWaiter) Hand(conn any) {
	w.Conn = conn
	w.notify()
}

// connSlots is a cluster's connection count and its queue.
type connSlots struct {
	mu      sync.Mutex
	open    int         // connections open (or being opened), busy or idle
	idle    []ownerIdle // owners with idle connections, and how many (a few: the host pools, each loop)
	idleSum int
	waiters []*ConnWaiter // FIFO; waiters[0] is the head
}

// ownerIdle counts one owner's idle connections.
type ownerIdle struct {
	owner IdleOwner
	n     int
}

// PoolFullError is a request refused because the connection pool is full: every connection
// max_connections allows is busy and max_pending_requests requests already wait.
type PoolFullError struct {
	Cluster                    string
	MaxConnections, MaxPending uint32
	// HTTP2: an HTTP/2 caller connection on the frame relay had no connection to the
	// endpoint and may not open one (it does not queue).
	HTTP2 bool
}

func (e *PoolFullError) Error() string {
	if e.HTTP2 {
		return fmt.Sprintf("upstream cluster %s connection pool is full: its %d connections (maxConnections) are open and none of them is this HTTP/2 connection's; retry later",
			e.Cluster, e.MaxConnections)
	}
	return fmt.Sprintf("upstream cluster %s connection pool is full: %d connections (maxConnections) are busy and %d requests (maxPendingRequests) already wait for one; retry later",
		e.Cluster, e.MaxConnections, e.MaxPending)
}

// OpenConn asks for a new connection to h, for owner. It returns ok when one may be opened
// now (the caller dials, and reports the connection's end with ConnClosed, also when the
// dial fails). Otherwise it queues a waiter, notified (notify, from any goroutine) once it
// is granted a slot or handed a connection, unless the queue is full: then it returns a
// *PoolFullError and counts a pending overflow.
func (c *Cluster) OpenConn(h *Host, owner IdleOwner, notify func()) (ok bool, w *ConnWaiter, err error) {
	l := c.cfg.Load().Limits
	s := &c.slots
	s.mu.Lock()
	if len(s.waiters) == 0 && s.open < int(l.MaxConnections) {
		s.open++
		s.mu.Unlock()
		return true, nil, nil
	}
	if len(s.waiters) >= int(l.MaxPending) {
		s.mu.Unlock()
		c.Stats.OverflowPending.Add(1)
		return false, nil, &PoolFullError{Cluster: c.Name, MaxConnections: l.MaxConnections, MaxPending: l.MaxPending}
	}
	w = &ConnWaiter{host: h, owner: owner, notify: notify}
	s.waiters = append(s.waiters, w)
	var reclaim IdleOwner
	if s.idleSum > 0 {
		for _, x := range s.idle {
			if x.n > 0 {
				reclaim = x.owner
				break
			}
		}
	}
	s.mu.Unlock()
	c.Stats.ConnOverflow.Add(1)
	if reclaim != nil {
		reclaim.ReclaimIdle(c)
	}
	return false, w, nil
}

// OpenH2Conn asks for a new HTTP/2 connection to the cluster. It returns true when one
// may be opened: under max_connections with no HTTP/1.1 request waiting for a slot, or
// always with force (the pool has no connection to the host: Envoy's rule); a connection
// opened past the cap counts as a connection overflow. A refusal is counted by the caller,
// once per request (Stats.ConnOverflow). The caller reports the connection's end with
// ConnClosed(nil, false), also when its dial fails.
func (c *Cluster) OpenH2Conn(force bool) bool {
	capped := int(c.cfg.Load().Limits.MaxConnections)
	s := &c.slots
	s.mu.Lock()
	ok := force || len(s.waiters) == 0 && s.open < capped
	over := ok && s.open >= capped
	if ok {
		s.open++
	}
	s.mu.Unlock()
	if over {
		c.Stats.ConnOverflow.Add(1)
	}
	return ok
}

// ConnRoom reports whether a new connection could be opened now without waiting: fewer
// than max_connections open and no request waiting for one.
func (c *Cluster) ConnRoom() bool {
	capped := int(c.cfg.Load().Limits.MaxConnections)
	s := &c.slots
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.waiters) == 0 && s.open < capped
}

// CancelWait takes w out of the queue (its request timed out or its caller left). It
// returns true if w was granted meanwhile: its notify has run or is about to, and the
// caller must give back what it got — Conn if set (close it), else the slot (ConnClosed).
func (c *Cluster) CancelWait(w *ConnWaiter) (granted bool) {
	s := &c.slots
	s.mu.Lock()
	defer s.mu.Unlock()
	if w.granted {
		return true
	}
	for i, x := range s.waiters {
		if x == w {
			s.waiters = append(s.waiters[:i], s.waiters[i+1:]...)
			break
		}
	}
	return false
}

// ConnIdle is called by owner when a connection to h has finished a request and could be
// kept. If the queue's head waits for owner and h, it is removed and returned: the owner
// sets its Conn and calls its notify. Otherwise keep says whether to pool the connection
// (nobody waits; it counts as idle until IdleTaken or ConnClosed) or to close it (someone
// waits for another host or owner: the close hands them the slot).
func (c *Cluster) ConnIdle(h *Host, owner IdleOwner) (w *ConnWaiter, keep bool) {
	s := &c.slots
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.waiters) == 0 {
		s.count(owner).n++
		s.idleSum++
		return nil, true
	}
	if head := s.waiters[0]; head.host == h && head.owner == owner {
		s.pop()
		return head, true
	}
	return nil, false
}

// IdleTaken is called by owner when it takes one of its idle connections for a request.
func (c *Cluster) IdleTaken(owner IdleOwner) {
	s := &c.slots
	s.mu.Lock()
	s.unidle(owner)
	s.mu.Unlock()
}

// ConnClosed reports that a connection OpenConn allowed (or a granted slot) is gone;
// wasIdle says it was idle in owner's pool. Its slot goes to the queue's head, if any.
func (c *Cluster) ConnClosed(owner IdleOwner, wasIdle bool) {
	s := &c.slots
	s.mu.Lock()
	if wasIdle {
		s.unidle(owner)
	}
	var w *ConnWaiter
	if len(s.waiters) > 0 && s.open <= int(c.cfg.Load().Limits.MaxConnections) {
		w = s.pop() // the slot passes on: open stays
	} else {
		s.open--
	}
	s.mu.Unlock()
	if w != nil {
		w.notify()
	}
}

// regrant gives slots to waiters while the cap allows: after a config swap raised it.
func (c *Cluster) regrant() {
	s := &c.slots
	var ready []*ConnWaiter
	s.mu.Lock()
	for len(s.waiters) > 0 && s.open < int(c.cfg.Load().Limits.MaxConnections) {
		s.open++
		ready = append(ready, s.pop())
	}
	s.mu.Unlock()
	for _, w := range ready {
		w.notify()
	}
}

// pop removes and returns the head waiter, marked granted. s.mu is held.
func (s *connSlots) pop() *ConnWaiter {
	w := s.waiters[0]
	s.waiters[0] = nil
	s.waiters = s.waiters[1:]
	if len(s.waiters) == 0 {
		s.waiters = nil // do not keep a long queue's array
	}
	w.granted = true
	return w
}

// unidle counts one idle connection of owner out. s.mu is held.
// An owner whose count drops to zero leaves the list, so it holds only owners with idle
// connections (event loops come and go with their listeners).
func (s *connSlots) unidle(owner IdleOwner) {
	for i := range s.idle {
		if x := &s.idle[i]; x.owner == owner {
			x.n--
			s.idleSum--
			if x.n == 0 {
				last := len(s.idle) - 1
				s.idle[i] = s.idle[last]
				s.idle[last] = ownerIdle{}
				s.idle = s.idle[:last]
			}
			return
		}
	}
}

// count is owner's idle count, added on first use. s.mu is held.
func (s *connSlots) count(owner IdleOwner) *ownerIdle {
	for i := range s.idle {
		if s.idle[i].owner == owner {
			return &s.idle[i]
		}
	}
	s.idle = append(s.idle, ownerIdle{owner: owner})
	return &s.idle[len(s.idle)-1]
}

// ConnStats are the gauges /stats shows: connections open and requests waiting for one.
func (c *Cluster) ConnStats() (open, idle, pending int) {
	s := &c.slots
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open, s.idleSum, len(s.waiters)
}

// PoolTimeoutError is a request that waited for a connection until its deadline (the
// route's timeout, or the attempt's per-try timeout) without getting one.
type PoolTimeoutError struct{ Cluster string }

func (e *PoolTimeoutError) Error() string {
	return "timed out waiting for a connection to upstream cluster " + e.Cluster + " (maxConnections reached)"
}

// Timeout marks the wait's end as a timeout (net.Error).
func (e *PoolTimeoutError) Timeout() bool { return true }

// Temporary implements net.Error.
func (e *PoolTimeoutError) Temporary() bool { return true }

// IsPoolError reports whether err is a request that got no connection: the pool was full
// or the wait for a connection timed out. The attempt never reached its host.
func IsPoolError(err error) bool {
	var full *PoolFullError
	var timeout *PoolTimeoutError
	return errors.As(err, &full) || errors.As(err, &timeout)
}
