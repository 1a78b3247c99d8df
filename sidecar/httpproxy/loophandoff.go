package httpproxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/weftmesh/weft/sidecar/connio"
	"github.com/weftmesh/weft/sidecar/httphead"
	"github.com/weftmesh/weft/sidecar/telemetry"
)

// The event loop's hand-offs to the goroutine path, its timers and its drain (see
// loop.go).

// detach takes s out of the loop as a net.Conn.
func (h *hloop) detach(s *sock) net.Conn {
	h.ev.Remove(s.fd)
	h.socks[s.fd] = nil
	s.closed = true
	if !s.up {
		h.down--
		if s.reserved > 0 { // the goroutine path takes s.in as it is, unaccounted
			headBudget.release(s.reserved)
			s.reserved = 0
		}
	}
	nc := tlsConn(fdConn(s.fd, s.dst), s) // loopcapture.go, looptls.go
	if nc != nil && s.peer != "" && h.l.mtls != nil {
		// The goroutine path finds the verified peer by the remote address (listed when
		// the connection joined the loop); closing forgets it.
		nc = &mtlsConn{Conn: nc, f: h.l.mtls, key: s.remote}
	}
	return nc
}

// handoff moves d, with what it has buffered, to the goroutine path.
func (h *hloop) handoff(d *sock) {
	h.l.handoffs.Add(1)
	in := d.in
	out, _ := queued(d) // what was sealed goes with the TLS state (looptls.go)
	nc := h.detach(d)
	h.checkDrained()
	if nc == nil {
		h.l.connClosed()
		return
	}
	go h.l.serveConn(nc, in, out)
}

// slowResponse moves ex — its downstream and upstream connections and what each has
// buffered — to a goroutine that reads the response with net/http, sends it, and then
// serves the downstream connection on the goroutine path.
func (h *hloop) slowResponse(ex *exchange) {
	h.l.handoffs.Add(1)
	d, u := ex.d, ex.u
	d.ex, u.ex, ex.u = nil, nil, nil
	x := *ex // the goroutine's own copy: d.exv is reused by the loop
	dout, _ := queued(d)
	din, uin := d.in, u.in
	dnc, unc := h.detach(d), h.detach(u)
	if unc != nil && u.cluster != nil {
		unc = &slotConn{Conn: unc, c: u.cluster, owner: h} // its slot is held until the goroutine closes it
	} else if u.cluster != nil {
		u.cluster.ConnClosed(h, false)
	}
	h.checkDrained()
	go h.l.finishSlow(&x, dnc, din, dout, unc, uin)
}

// Tick implements evloop.Handler: deadlines.
func (h *hloop) Tick(now time.Time) {
	t := now.UnixNano()
	var next int64
	later := func(d int64) {
		if d != 0 && (next == 0 || d < next) {
			next = d
		}
	}
	for _, s := range h.socks {
		switch {
		case s == nil || s.closed:
		case s.up && s.ex == nil:
			if s.idleFor > 0 {
				if t-s.idleAt > s.idleFor {
					h.dropIdle(s)
				} else {
					later(s.idleAt + s.idleFor)
				}
			}
		case s.up:
			ex := s.ex
			switch {
			case s.connecting && t >= s.connectBy:
				h.attemptFailed(ex, errConnTimeout)
			case ex.tryBy != 0 && t >= ex.tryBy:
				h.attemptFailed(ex, errTryTimeout)
			default:
				if s.connecting {
					later(s.connectBy)
				}
				later(ex.tryBy)
			}
		case s.ex != nil && s.ex.wait != nil:
			h.waitTick(s.ex, t, later)
		case s.ex != nil && s.ex.u != nil && s.ex.u.fd < 0: // a placeholder while its TLS dial runs
			h.handshakeTick(s.ex, t, later) // looptls.go
		case s.ex != nil:
			if ex := s.ex; ex.wakeAt != 0 {
				if t >= ex.wakeAt {
					ex.wakeAt = 0
					h.startAttempt(ex)
				} else {
					later(ex.wakeAt)
				}
			}
		case s.deadline != 0:
			if t >= s.deadline {
				h.closeDown(s)
			} else {
				later(s.deadline)
			}
		}
	}
	if h.paused {
		if t >= h.acceptAt {
			h.resumeAccept()
		}
		if h.paused {
			later(h.acceptAt)
		}
	}
	if len(h.addrs) > 0 {
		if t >= h.sweepAt {
			h.sweepHosts()
			h.noteSlow(now)
			h.sweepAt = t + int64(hostSweep)
		}
		later(h.sweepAt)
	}
	if next != 0 {
		h.ev.Arm(next)
	}
}

// sweepHosts closes idle connections to, and forgets the addresses of, hosts that left
// their clusters.
func (h *hloop) sweepHosts() {
	for host, idle := range h.idle {
		if host.Removed() || len(idle) == 0 {
			for _, u := range idle {
				h.closeUp(u)
			}
			delete(h.idle, host)
		}
	}
	for host := range h.addrs {
		if host.Removed() {
			delete(h.addrs, host)
		}
	}
}

// Wake implements evloop.Handler: shutdown has begun.
func (h *hloop) Wake() {
	h.takeGrants()
	h.takeAdoptions() // loopcapture.go
	h.takeDials()     // looptls.go
	if !h.draining.Load() || h.drained {
		return
	}
	h.drained = true
	if h.lrc != nil {
		_ = h.lrc.Control(func(fd uintptr) { h.ev.Remove(int(fd)) })
	}
	for _, s := range h.socks {
		if s == nil || s.up || s.closed {
			continue
		}
		if s.ex == nil && s.off == len(s.out) {
			h.closeDown(s)
		} else {
			s.closeNext = true // after the response in flight (sent with Connection: close)
		}
	}
	h.checkDrained()
}

func (h *hloop) checkDrained() {
	if h.drained && h.down == 0 {
		select {
		case <-h.done:
		default:
			close(h.done)
			h.ev.Stop()
		}
	}
}

// drain stops accepting and lets each connection finish its request; done closes when
// none is left.
func (h *hloop) drain() {
	h.draining.Store(true)
	h.ev.Wake()
}

// closeAll closes what is left once the loop has stopped.
func (h *hloop) closeAll() {
	for _, s := range h.socks {
		if s != nil && !s.closed {
			if s.up {
				h.closeUp(s)
			} else {
				h.abort(s)
			}
		}
	}
	h.stopGrants()
	select {
	case <-h.done:
	default:
		close(h.done)
	}
}

// finishSlow completes, on its own goroutine, an exchange whose response the loop
// cannot frame, then serves the downstream connection on the goroutine path.
func (l *Listener) finishSlow(ex *exchange, dnc net.Conn, din, dout []byte, unc net.Conn, uin []byte) {
	c := ex.c
	ex.status = http.StatusServiceUnavailable
	defer func() { ex.end(l, time.Since(ex.start)) }()
	if dnc == nil {
		l.connClosed()
		if unc != nil {
			unc.Close()
		}
		return
	}
	conn := connio.NewConn(dnc)
	bw := bufio.NewWriter(conn)
	w := &h1Writer{conn: conn, bw: bw}
	w.reset(ex.r, ex.close || l.draining.Load())
	defer func() { ex.rec.RespBytes = w.rec.RespBytes }() // before ex.end: what was relayed (telemetry.go)
	var resp *http.Response
	err := errUpstreamReset
	if unc != nil {
		defer unc.Close()
		if ex.tryBy != 0 {
			_ = unc.SetDeadline(time.Unix(0, ex.tryBy))
		}
		br := bufio.NewReader(io.MultiReader(bytes.NewReader(uin), unc))
		for {
			if p := httphead.CheckResponseFrom(br); p != nil {
				resp, err = nil, p // ambiguous framing: answered 502, the connection closed
				break
			}
			if resp, err = http.ReadResponse(br, ex.r); err != nil || resp.StatusCode >= 200 {
				break
			}
		}
	}
	status := 0
	if resp != nil {
		status = resp.StatusCode
	}
	st := ex.retry.onHandedOff(status, err) // the attempt the loop started ends here either way
	if ex.host != nil {
		c.Report(ex.host, st.outcome)
	}
	if st.kind == stepReply {
		_, _ = bw.Write(dout)
		ex.status, ex.rec.Flags = st.status, responseFlag(st.err)
		localReply(w, st.status, st.msg)
		w.finish()
		// The caller's request was read whole: its connection goes on, only the
		// upstream one is dropped.
		if err := bw.Flush(); err != nil || w.close {
			dnc.Close()
			l.connClosed()
			return
		}
		go l.serveConn(dnc, din, nil)
		return
	}
	ex.status = resp.StatusCode
	_, _ = bw.Write(dout)
	l.responsePeer(&ex.rec, resp.Header) // telemetry.go
	responseHeader(w.Header(), resp.Header, ex.route, ex.wc, ex.setCookie)
	if l.answerPeer(&ex.rec) {
		w.Header()[telemetry.PeerHeader] = l.proxy.opts.Telemetry.PeerValue()
	}
	w.WriteHeader(resp.StatusCode)
	copyBody(w, resp)
	w.finish()
	resp.Body.Close()
	if err := bw.Flush(); err != nil || w.close {
		dnc.Close()
		l.connClosed()
		return
	}
	go l.serveConn(dnc, din, nil)
}
