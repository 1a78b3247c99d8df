package httpproxy

import (
	"golang.org/x/sys/unix"

	"github.com/weftmesh/weft/sidecar/connio"
)

// The event loop's socket I/O: reading into a connection's input, and writing its queued
// output at the end of a batch.

// fill reads once into s.in, making room first; a short read means the socket is
// drained (edge-triggered: the next arrival raises a new event).
func (h *hloop) fill(s *sock) bool {
	if s.tls != nil {
		return h.fillTLS(s) // looptls.go
	}
	if cap(s.in)-len(s.in) < loopReadSize {
		grown := make([]byte, len(s.in), grownCap(s))
		copy(grown, s.in)
		s.in = grown
	}
	n, ok := readSock(s, s.in[len(s.in):cap(s.in)])
	s.in = s.in[:len(s.in)+n]
	return ok
}

// readSock reads once from s into space and notes what the read says of the socket: a
// short read drained it, EAGAIN found it empty, EOF or an error ended its input. ok is
// false when nothing was read.
func readSock(s *sock, space []byte) (n int, ok bool) {
	n, e := connio.ReadFD(s.fd, space)
	switch {
	case e == unix.EAGAIN:
		s.readable = false
		return 0, false
	case e != 0 || n == 0:
		s.readable, s.eof = false, true
		return 0, false
	}
	if n < len(space) {
		s.readable = false
	}
	return n, true
}

// consume drops the first n bytes of s.in.
func consume(s *sock, n int) {
	s.in = s.in[:copy(s.in, s.in[n:])]
	if len(s.in) == 0 && cap(s.in) > keepBuffer {
		dropIn(s)
	}
}

// keepBuffer is the largest buffer a connection keeps between messages.
const keepBuffer = 16 << 10

// flush marks s's queued output for writing at the end of the batch (Flush).
func (h *hloop) flush(s *sock) bool {
	if !s.dirty && !s.closed {
		s.dirty = true
		h.dirty = append(h.dirty, s)
	}
	return true
}

// Flush implements evloop.Handler: it writes the output queued during the batch. A
// write that drains a downstream connection may resume the upstream read it paused,
// which queues more; that is written in the same call.
func (h *hloop) Flush() {
	for len(h.dirty) > 0 {
		batch := h.dirty
		h.dirty = h.spare[:0]
		for i, s := range batch {
			batch[i] = nil
			s.dirty = false
			// A socket not writable still has output queued: EPOLLOUT brings it back. A
			// connecting one is written when the connect completes.
			if s.closed || s.connecting || !s.writable || !h.write(s) || s.up {
				continue
			}
			if ex := s.ex; ex != nil && ex.gotHead && ex.u != nil && ex.u.readable && len(s.out)-s.off < loopMaxOut {
				h.upstreamReady(ex.u)
			}
		}
		h.spare = batch[:0]
	}
}

// write writes s's queued output now; false if the connection failed (it is then
// dealt with).
func (h *hloop) write(s *sock) bool {
	pending := s.out[s.off:]
	if s.tls != nil {
		// Seal what was queued since the last write; out keeps it until the records are
		// all written, so len(out)-off still says how much output waits.
		if s.sealed < len(s.out) {
			s.enc = s.tls.Seal(s.enc, s.out[s.sealed:])
			s.sealed = len(s.out)
		}
		pending = s.enc[s.encOff:]
	}
	if len(pending) == 0 {
		if s.closeNext && !s.up {
			h.endDown(s)
			return false
		}
		return true
	}
	rest, e := connio.WriteFD(s.fd, pending)
	switch e {
	case 0:
		s.out, s.off, s.sealed = s.out[:0], 0, 0
		s.enc, s.encOff = s.enc[:0], 0
		if cap(s.out) > keepBuffer {
			s.out = nil // a large response passed: do not keep its buffer per connection
		}
		if cap(s.enc) > keepBuffer {
			s.enc = nil
		}
		if s.closeNext {
			h.endDown(s)
			return false
		}
		return true
	case unix.EAGAIN:
		if s.tls != nil {
			s.encOff = len(s.enc) - len(rest)
		} else {
			s.off = len(s.out) - len(rest)
		}
		s.writable = false
		return true
	}
	if s.up {
		s.eof = true
		h.upstreamEOF(s, s.ex)
	} else {
		h.abort(s)
	}
	return false
}
