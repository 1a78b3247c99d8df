package httpproxy

import (
	"errors"
	"net/http"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftmesh/weft/sidecar/upstream"
)

// How the event loop ends an attempt and an exchange (see loop.go): outcomes, retries,
// answers, closing connections.

// attemptDone reports the attempt's outcome for its host (outlier detection, least
// request) and releases a retry slot.
func (h *hloop) attemptDone(ex *exchange, o upstream.Outcome) {
	if ex.host == nil {
		return
	}
	ex.c.Report(ex.host, o)
	ex.tried = append(ex.tried, ex.host)
	ex.host = nil
	ex.releaseRetry()
}

// release detaches ex's upstream connection, pooling it if it can carry another request.
func (h *hloop) release(ex *exchange, reuse bool) {
	u := ex.u
	if u == nil {
		return
	}
	ex.u, u.ex = nil, nil
	u.out, u.off = u.out[:0], 0
	if reuse && u.reusable && !u.eof && !u.closed {
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
	o := upstream.GatewayError
	switch {
	case h.expired(ex.deadline):
		o = upstream.Success // the route timed out: not the host's fault
	case isConnectFailure(err) || errors.Is(err, errUpstreamReset):
		o = upstream.LocalOriginFailure
	}
	h.attemptDone(ex, o)
	if h.retryLeft(ex) && retryOnError(ex.rp, err) && ex.c.AdmitRetry() {
		h.retry(ex)
		return
	}
	h.finishError(ex, err)
}

// retryLeft reports whether ex's retry policy allows another attempt in the time the
// route has left; whether this outcome is retriable, and a max_retries slot, come after.
func (h *hloop) retryLeft(ex *exchange) bool {
	return ex.rp != nil && ex.attempt+1 < ex.attempts && !h.expired(ex.deadline)
}

// retry starts the next attempt, admitted by the max_retries circuit breaker, after
// Envoy's jittered back-off, or answers 504 if the back-off would outlast the route
// timeout.
func (h *hloop) retry(ex *exchange) {
	ex.attempt++
	ex.retrySlot = true
	backoff := retryBackoff(ex.rp, ex.attempt)
	now := h.ev.Now()
	if ex.deadline != 0 && now.Add(backoff).UnixNano() > ex.deadline {
		h.finishError(ex, errRouteTimeout)
		return
	}
	if backoff <= 0 {
		h.startAttempt(ex)
		return
	}
	ex.wakeAt = now.Add(backoff).UnixNano()
	h.ev.Arm(ex.wakeAt)
}

// finishError answers ex with the error Envoy would give for err.
func (h *hloop) finishError(ex *exchange, err error) {
	res := attemptResult{err: err}
	var deadline time.Time
	if ex.deadline != 0 {
		deadline = time.Unix(0, ex.deadline)
	}
	status, msg := res.errorReply(deadline)
	ex.status = status
	localReply(h.writer(ex), status, msg)
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
	h.end(d, 0)
}

// abort ends d's exchange (if any) without an answer and closes d.
func (h *hloop) abort(d *sock) { h.end(d, http.StatusServiceUnavailable) }

// end ends d's exchange (if any) without an answer, counting it as noAnswer if no
// response had begun, and closes d.
func (h *hloop) end(d *sock, noAnswer int) {
	if ex := d.ex; ex != nil {
		d.ex = nil
		if ex.host != nil {
			ex.c.Report(ex.host, upstream.Success) // the caller left: not the host's fault
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
	h.down--
	h.downClosed(d)
	h.checkDrained()
}

func (h *hloop) closeUp(u *sock) {
	if u.closed {
		return
	}
	u.closed = true
	h.socks[u.fd] = nil
	unix.Close(u.fd)
}
