package httpproxy

import (
	"net/http"

	"golang.org/x/sys/unix"
)

// How the event loop ends an attempt and an exchange (see loop.go): outcomes, retries,
// answers, closing connections.

// attemptDone reports the attempt's outcome, as the policy classed it in s, for its host
// (outlier detection, least request); true unless s forwards the response.
func (h *hloop) attemptDone(ex *exchange, s step) bool {
	if ex.host != nil {
		ex.c.Report(ex.host, s.outcome)
		ex.host = nil
	}
	return s.kind != stepForward
}

// release detaches ex's upstream connection, pooling it if it can carry another request.
func (h *hloop) release(ex *exchange, reuse bool) {
	u := ex.u
	if u == nil {
		return
	}
	ex.u, u.ex = nil, nil
	if _, sealed := queued(u); len(sealed) > 0 {
		reuse = false // records half written: the stream cannot carry another request
	}
	u.out, u.off, u.sealed = u.out[:0], 0, 0
	if reuse && u.reusable && !u.eof && !u.closed && !u.hungUp {
		h.putIdle(u, ex.c.Config(), h.ev.Now().UnixNano())
		return
	}
	h.closeUp(u)
}

func (h *hloop) upstreamEOF(u *sock, ex *exchange) {
	if ex.gotHead {
		h.abort(ex.d) // the body was cut short: the caller cannot be told otherwise
		return
	}
	if len(u.in) == 0 && u.reused && !ex.stale {
		// A pooled connection the server had closed: send once more on a new one, as
		// net/http's transport does, without counting an attempt. Not on another pooled
		// one: a server that closed one has likely closed them all (it restarted).
		ex.stale = true
		h.release(ex, false)
		h.send(ex, h.ev.Now(), true)
		return
	}
	h.attemptFailed(ex, errUpstreamReset)
}

// attemptFailed ends an attempt that got no response and retries or answers.
func (h *hloop) attemptFailed(ex *exchange, err error) {
	if ex == nil {
		return
	}
	h.release(ex, false)
	if ex.gotHead {
		h.abort(ex.d)
		return
	}
	s := ex.retry.onError(err, h.ev.Now())
	h.attemptDone(ex, s)
	h.next(ex, s)
}

// next carries out the policy's step after an attempt whose answer is not forwarded:
// the next attempt, now or when its back-off ends (Tick), or the policy's answer.
func (h *hloop) next(ex *exchange, s step) {
	switch {
	case s.kind == stepReply:
		h.reply(ex, s)
	case s.delay <= 0:
		h.startAttempt(ex)
	default:
		ex.wakeAt = h.ev.Now().Add(s.delay).UnixNano()
		h.ev.Arm(ex.wakeAt)
	}
}

// reply answers ex with the policy's error reply and finishes it.
func (h *hloop) reply(ex *exchange, s step) {
	ex.status, ex.rec.Flags, ex.rec.RespBytes = s.status, responseFlag(s.err), int64(len(s.msg))
	w := h.writer(ex)
	markOverloaded(w, s.err)
	localReply(w, s.status, s.msg)
	h.endReply(ex)
	h.finish(ex)
}

// finish ends ex: stats, circuit breaker, the upstream connection back to the pool, and
// the downstream connection on to its next request.
func (h *hloop) finish(ex *exchange) {
	d := ex.d
	ex.end(h.l, h.ev.Now().Sub(ex.start))
	h.release(ex, true)
	d.ex = nil
	ex.r, ex.route, ex.wc, ex.c = nil, nil, nil, nil
	h.afterResponse(d, ex.close)
}

// callerLeft ends d's exchange when the caller hung up before its answer was through.
// Envoy's HTTP connection manager has no half-close: a downstream end of stream resets the
// stream, and the request upstream with it. Here the upstream connection is closed rather
// than pooled, which cancels the request at the app and frees its circuit-breaker and
// concurrency slots at once instead of when the answer would have come. An exchange that
// had no answer yet is counted with no status (class "none"), as Envoy logs response
// code 0 with the DC flag; the listener counts it in weft_listener_caller_resets_total.
func (h *hloop) callerLeft(d *sock) {
	h.l.callerResets.Add(1)
	if d.ex != nil {
		d.ex.rec.Flags = "DC"
	}
	h.end(d, 0)
}

// abort ends d's exchange (if any) without an answer and closes d.
func (h *hloop) abort(d *sock) { h.end(d, http.StatusServiceUnavailable) }

// end ends d's exchange (if any) without an answer, counting it as noAnswer if no
// response had begun, and closes d.
func (h *hloop) end(d *sock, noAnswer int) {
	if ex := d.ex; ex != nil {
		d.ex = nil
		h.abandonWait(ex)
		if ex.host != nil {
			ex.c.Report(ex.host, ex.retry.onAbandon())
			ex.host = nil
		}
		h.release(ex, false)
		if ex.status == 0 {
			ex.status = noAnswer
		}
		ex.end(h.l, h.ev.Now().Sub(ex.start))
	}
	h.closeDown(d)
}

func (h *hloop) closeDown(d *sock) {
	if d.closed {
		return
	}
	if d.ex != nil {
		h.abort(d)
		return
	}
	d.closed = true
	h.socks[d.fd] = nil
	unix.Close(d.fd)
	h.forgetPeer(d) // looptls.go
	h.down--
	h.downClosed(d)
	h.checkDrained()
}

func (h *hloop) closeUp(u *sock) {
	if u.closed {
		return
	}
	u.closed = true
	if u.fd >= 0 { // a placeholder has none yet (looptls.go)
		h.socks[u.fd] = nil
		unix.Close(u.fd)
	}
	if u.cluster != nil {
		u.cluster.ConnClosed(h, u.idle)
		u.idle = false
	}
}
