package httpproxy

import (
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftmesh/weft/sidecar/connio"
	"github.com/weftmesh/weft/sidecar/httphead"
)

// The event loop's side of a listener's limits (frontlimits.go): accepting within the
// connection cap and backing off when out of descriptors, growing a head's buffer within
// headBudget, and refusing a head with a lingering close.

// accept takes up to 64 queued connections (the rest wait for the next event, so one
// busy listener does not starve the batch): each beyond the listener's connection cap is
// closed at once, the others join the loop with their first head's deadline armed.
func (h *hloop) accept() {
	if h.draining.Load() || h.paused {
		return
	}
	_ = h.lrc.Control(func(lfd uintptr) {
		for range 64 {
			fd, sa, err := unix.Accept4(int(lfd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			switch err {
			case nil:
			case unix.EAGAIN, unix.EINTR, unix.ECONNABORTED:
				return // none queued, or one that left: the level-triggered event comes back
			default:
				// Out of descriptors (EMFILE, ENFILE) or memory: the connection stays queued
				// and the listener readable, so trying again at once fails again at once.
				h.l.acceptErrors.Add(1)
				h.pauseAccept()
				return
			}
			h.backoff.reset()
			if h.l.divert(fd) { // captured for another filter chain (capture.go)
				unix.Close(fd)
				continue
			}
			h.l.connections.Add(1)
			if !h.l.admitConn() {
				unix.Close(fd) // over max_connections: refused at once
				continue
			}
			_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
			d := &sock{fd: fd, remote: sockaddrString(sa), writable: true}
			if err := h.ev.Add(fd); err != nil {
				unix.Close(fd)
				h.l.connClosed()
				continue
			}
			h.track(d)
			h.down++
			// The first head counts from the accept: a connection that sends nothing is
			// closed at the head timeout too.
			d.inHead = true
			if d.deadline = deadlineNanos(h.ev.Now(), h.l.lim().HeadTimeout); d.deadline != 0 {
				h.ev.Arm(d.deadline)
			}
		}
	})
}

// pauseAccept takes the listener out of the loop's set until the back-off passes (Tick).
func (h *hloop) pauseAccept() {
	h.paused = true
	h.ev.Remove(h.lfd)
	h.acceptAt = h.ev.Now().Add(h.backoff.next()).UnixNano()
	h.ev.Arm(h.acceptAt)
}

// resumeAccept puts the listener back in the set (Tick, once the back-off passed).
func (h *hloop) resumeAccept() {
	h.paused = false
	if h.draining.Load() || h.drained {
		return
	}
	if err := h.ev.AddListener(h.lfd); err != nil {
		h.pauseAccept()
		return
	}
	h.accept()
}

// deadlineNanos is now+d in unix nanos, or 0 (none) for d == 0.
func deadlineNanos(now time.Time, d time.Duration) int64 {
	if d == 0 {
		return 0
	}
	return now.Add(d).UnixNano()
}

// grownCap is the capacity fill gives s.in when it has less than loopReadSize free.
func grownCap(s *sock) int { return max(2*cap(s.in), len(s.in)+loopReadSize) }

// reserveHead reserves from headBudget what the next fill of d, waiting for a head, will
// grow d.in to beyond loopReadSize; false if the budget is spent.
func (h *hloop) reserveHead(d *sock) bool {
	if cap(d.in)-len(d.in) >= loopReadSize {
		return true
	}
	n := grownCap(d)
	if n <= loopReadSize {
		return true
	}
	if !headBudget.reserve(n - d.reserved) {
		return false
	}
	d.reserved = n
	return true
}

// dropIn lets go of s.in and what it reserved.
func dropIn(s *sock) {
	s.in = nil
	if s.reserved > 0 {
		headBudget.release(s.reserved)
		s.reserved = 0
	}
}

// downClosed accounts for a downstream connection that closed.
func (h *hloop) downClosed(d *sock) {
	dropIn(d)
	h.l.connClosed()
}

// refuse answers a head that failed httphead.CheckRequest and closes the connection
// after lingering (endDown): where the refused request ends is unknown.
func (h *hloop) refuse(d *sock, p *httphead.Problem) {
	h.l.refused.Add(1)
	d.out = httphead.AppendProblem(d.out, p)
	dropIn(d)
	d.closeNext, d.linger = true, true
	h.flush(d)
}

// endDown closes d once its output is written; after a refusal it first shuts the write
// side and drops input for up to lingerTime or lingerBytes (see lingerClose).
func (h *hloop) endDown(d *sock) {
	if !d.linger {
		h.closeDown(d)
		return
	}
	if !d.shut {
		d.shut = true
		_ = unix.Shutdown(d.fd, unix.SHUT_WR)
		d.lingerFor = lingerBytes
		d.deadline = h.ev.Now().Add(lingerTime).UnixNano()
		h.ev.Arm(d.deadline)
	}
	for d.lingerFor > 0 {
		n, e := connio.ReadFD(d.fd, h.discard[:])
		if e == unix.EAGAIN {
			return // Tick closes it at the deadline if nothing more comes
		}
		if e != 0 || n == 0 {
			break
		}
		d.lingerFor -= n
	}
	h.closeDown(d)
}
