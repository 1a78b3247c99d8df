package httpproxy

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/httphead"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// The exchange policy both HTTP paths follow, in one place: how many attempts a request
// gets, when an attempt's answer or failure is retried, how long to back off, the route
// and per-try deadlines, how an attempt is counted against its host, and what the caller
// is told when the proxy gives up. It is Envoy's RetryStateImpl in miniature. The goroutine
// path (forward.go) and the event loop (loopexchange.go, loopupstream.go) drive it, each
// passing now from its own clock; it does no I/O and reads no clock, and its one effect
// is on the cluster's max_retries count (retryBudget).

// retryBudget is the cluster's max_retries circuit breaker (*upstream.Cluster).
type retryBudget interface {
	AdmitRetry() bool
	RetryDone()
}

// stepKind says what to do after an attempt.
type stepKind uint8

const (
	stepForward stepKind = iota // pass the upstream's response on to the caller
	stepRetry                   // try again after step.delay, on a host not yet tried
	stepReply                   // give up: answer step.status with step.msg
)

// step is the policy's answer to an attempt's end.
type step struct {
	kind    stepKind
	outcome upstream.Outcome // how the attempt counts against its host (outlier detection)
	delay   time.Duration    // stepRetry: the back-off before the next attempt
	status  int              // stepReply
	msg     string           // stepReply
	err     error            // stepReply: the failure answered
}

// retryState is the policy of one exchange: its attempts, the max_retries slot its
// current retry holds, and its deadlines. Set it up in place with init (tried points into
// the struct itself).
type retryState struct {
	rp       *config.RetryPolicy // nil: no retries
	budget   retryBudget
	attempt  int // the current attempt, 0 for the first
	attempts int // 1 + num_retries, or 1
	deadline time.Time
	slot     bool // a max_retries slot is held until the current attempt ends
	left     bool // the caller has gone: no retries, and failures are not the host's
	triedBuf [4]*upstream.Host
	tried    []*upstream.Host  // hosts already attempted: the next Pick avoids them
	jitter   func(int64) int64 // draws the back-off in [0, n); rand.Int64N unless a test sets it
}

// init readies rs for a request that arrived at start on a route. A request whose body
// cannot be replayed (it streamed through) is not retried.
func (rs *retryState) init(route *config.Route, replayable bool, budget retryBudget, start time.Time) {
	*rs = retryState{budget: budget, attempts: 1}
	rs.tried = rs.triedBuf[:0]
	// The route timeout covers every attempt and the whole response, as in Envoy.
	if route.Timeout > 0 {
		rs.deadline = start.Add(route.Timeout)
	}
	if route.Retry != nil && replayable {
		rs.rp = route.Retry
		rs.attempts += rs.rp.NumRetries
	}
}

// begin notes an attempt sent to h at now and returns its deadline: the per-try timeout
// or the route's, whichever comes first (zero: none).
func (rs *retryState) begin(h *upstream.Host, now time.Time) time.Time {
	rs.tried = append(rs.tried, h)
	by := rs.deadline
	if rs.rp != nil && rs.rp.PerTryTimeout > 0 {
		if t := now.Add(rs.rp.PerTryTimeout); by.IsZero() || t.Before(by) {
			by = t
		}
	}
	return by
}

// callerLeft notes that the caller has gone: nothing more is retried, and an attempt
// that fails from now on is not counted against its host.
func (rs *retryState) callerLeft() { rs.left = true }

// onAbandon ends an attempt cut short because the caller left (the event loop closes
// the upstream connection at once) and returns how it counts against its host: not at
// all, the failure is not the host's.
func (rs *retryState) onAbandon() upstream.Outcome {
	rs.callerLeft()
	rs.release()
	return upstream.Success
}

// onResponse decides what follows an attempt answered with status at now. holdTimeout
// marks a function sidecar's answer that the caller's hold ran out: another try would
// be refused at once.
func (rs *retryState) onResponse(status int, holdTimeout bool, now time.Time) step {
	rs.release()
	s := step{kind: stepForward, outcome: statusOutcome(status)}
	if !holdTimeout && rs.mayRetry(now) && retryOnStatus(rs.rp, status) {
		if r, ok := rs.retry(s.outcome, now); ok {
			return r
		}
	}
	return s
}

// onGRPCStatus decides what follows a gRPC answer s forwards whose headers carry
// grpc-status code (a Trailers-Only response): retried when retryOn names the code.
func (rs *retryState) onGRPCStatus(code int, s step, now time.Time) step {
	if rs.mayRetry(now) && rs.rp.On.RetriesGRPCCode(code) {
		if r, ok := rs.retry(s.outcome, now); ok {
			return r
		}
	}
	return s
}

// cannotReplay turns the retry s into the attempt's end when the request's body cannot be
// sent again: its answer is forwarded (err nil) or its failure answered.
func (rs *retryState) cannotReplay(s step, err error, now time.Time) step {
	rs.release()
	if err == nil {
		return step{kind: stepForward, outcome: s.outcome}
	}
	r := rs.giveUp(err, now)
	r.outcome = s.outcome
	return r
}

// capDeadline brings the route deadline forward to by, if by comes first.
func (rs *retryState) capDeadline(by time.Time) {
	if rs.deadline.IsZero() || by.Before(rs.deadline) {
		rs.deadline = by
	}
}

// onError decides what follows an attempt that failed with err, before any response,
// at now.
func (rs *retryState) onError(err error, now time.Time) step {
	rs.release()
	o := upstream.GatewayError
	switch {
	case rs.left || rs.expired(now):
		o = upstream.Success // the route timed out or the caller left: not the host's fault
	case isConnectFailure(err) || isReset(err):
		o = upstream.LocalOriginFailure
	}
	if rs.mayRetry(now) && retryOnError(rs.rp, err) {
		if r, ok := rs.retry(o, now); ok {
			return r
		}
	}
	s := rs.giveUp(err, now)
	s.outcome = o
	return s
}

// onHandedOff ends the attempt whose response the event loop handed to a goroutine to
// read (finishSlow): it is not retried, whatever came. A response (err nil) with status
// is forwarded; a failure counts against the host as a gateway error, whatever it was,
// and is answered as Envoy would, the route timeout aside (the read stops at the
// attempt's deadline).
func (rs *retryState) onHandedOff(status int, err error) step {
	rs.release()
	if err == nil {
		return step{kind: stepForward, outcome: statusOutcome(status)}
	}
	code, msg := errorReply(err, false)
	return step{kind: stepReply, outcome: upstream.GatewayError, status: code, msg: msg, err: err}
}

// giveUp ends the exchange with the answer Envoy gives for err at now: no host to try
// (errNoHost), the caller gone during a back-off, or a failed last attempt.
func (rs *retryState) giveUp(err error, now time.Time) step {
	rs.release()
	status, msg := errorReply(err, rs.expired(now))
	return step{kind: stepReply, status: status, msg: msg, err: err}
}

// release gives back the max_retries slot, if one is held: the attempt it admitted is
// over, or the exchange is.
func (rs *retryState) release() {
	if rs.slot {
		rs.slot = false
		rs.budget.RetryDone()
	}
}

// mayRetry is the retry gate before the outcome's own test: a policy, an attempt left,
// time left on the route, and a caller still there.
func (rs *retryState) mayRetry(now time.Time) bool {
	return rs.rp != nil && rs.attempt+1 < rs.attempts && !rs.left && !rs.expired(now)
}

// retry takes a max_retries slot for the next attempt and draws its back-off; without a
// slot it reports false, and the attempt's answer stands. A back-off that would outlast
// the route timeout answers 504 at once. o is the ending attempt's outcome.
func (rs *retryState) retry(o upstream.Outcome, now time.Time) (step, bool) {
	if !rs.budget.AdmitRetry() {
		return step{}, false
	}
	rs.slot = true
	rs.attempt++
	d := rs.backoff(rs.attempt)
	if !rs.deadline.IsZero() && now.Add(d).After(rs.deadline) {
		s := rs.giveUp(errRouteTimeout, now)
		s.outcome = o
		return s, true
	}
	return step{kind: stepRetry, outcome: o, delay: d}, true
}

// backoff is Envoy's jittered exponential back-off: uniform in
// [0, min(base·2^(n-1), max)) for the n-th retry; base 25 ms and max 10× base by default.
func (rs *retryState) backoff(n int) time.Duration {
	ceil := rs.rp.BaseInterval << min(n-1, 30)
	if ceil > rs.rp.MaxInterval || ceil <= 0 {
		ceil = rs.rp.MaxInterval
	}
	if ceil <= 0 {
		return 0
	}
	if rs.jitter != nil {
		return time.Duration(rs.jitter(int64(ceil)))
	}
	return time.Duration(rand.Int64N(int64(ceil)))
}

func (rs *retryState) expired(now time.Time) bool {
	return !rs.deadline.IsZero() && !now.Before(rs.deadline)
}

// statusOutcome classifies a response for outlier detection.
func statusOutcome(code int) upstream.Outcome {
	switch {
	case code == 502 || code == 503 || code == 504:
		return upstream.GatewayError
	case code >= 500:
		return upstream.ServerError
	}
	return upstream.Success
}

var (
	errNoHost       = errors.New("no healthy upstream")
	errRouteTimeout = errors.New("route timeout")
)

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, errRouteTimeout) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout())
}

func isConnectFailure(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// isReset reports whether the upstream closed the connection before the response's
// head: the event loop's errUpstreamReset, or the goroutine path's pooled connection
// found closed.
func isReset(err error) bool {
	return errors.Is(err, errUpstreamReset) || upstream.IsResetBeforeResponse(err)
}

// retryOnError reports whether a failed attempt (no response) may be retried.
func retryOnError(rp *config.RetryPolicy, err error) bool {
	if rp.On&(config.Retry5xx|config.RetryGatewayError|config.RetryReset) != 0 {
		return true
	}
	return rp.On&config.RetryConnectFailure != 0 && isConnectFailure(err)
}

// retryOnStatus reports whether a response with this status may be retried.
func retryOnStatus(rp *config.RetryPolicy, code int) bool {
	switch {
	case rp.On&config.Retry5xx != 0 && code >= 500:
		return true
	case rp.On&config.RetryGatewayError != 0 && (code == 502 || code == 503 || code == 504):
		return true
	case rp.On&config.RetryRetriable4xx != 0 && code == 409:
		return true
	case rp.On&config.RetryRetriableStatusCodes != 0:
		for _, rc := range rp.RetriableCodes {
			if rc == code {
				return true
			}
		}
	}
	return false
}

// errorReply is what Envoy answers for a failed last attempt; timedOut says the route
// timeout has passed.
func errorReply(err error, timedOut bool) (int, string) {
	var bad *httphead.Problem
	var full *upstream.PoolFullError
	switch {
	case errors.As(err, &full):
		return http.StatusServiceUnavailable, full.Error() + "\n"
	case errors.Is(err, errNoHost):
		return http.StatusServiceUnavailable, "no healthy upstream\n"
	case errors.As(err, &bad):
		return bad.Status, bad.Reason + "\n" // 502: the response's framing is ambiguous
	case timedOut:
		return http.StatusGatewayTimeout, "upstream request timeout\n"
	case isConnectFailure(err) && isTimeout(err):
		// Envoy's words for a connect_timeout: 503, not the 504 of a request timeout.
		return http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: connection timeout\n"
	case isTimeout(err):
		return http.StatusGatewayTimeout, "upstream request timeout\n"
	case isConnectFailure(err):
		return http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: connection failure\n"
	default:
		return http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: connection termination\n"
	}
}
