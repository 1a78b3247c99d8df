package httpproxy

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"syscall"
	"time"

	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// A function pod is Ready, and its endpoint published, once its sidecar runs; its app may
// listen much later (a slow runtime, a large model to load). The caller's sidecar that held
// a call for the function's cold start has a hold timeout to keep, but the wait for the app
// happens in the function's own sidecar, which cannot know it. So the caller's sidecar sends
// what is left of the hold with every function call, and the function's sidecar waits for
// its app no longer than that, then answers 503 with Retry-After, as the caller's holder
// would have (issue 12 item 6).
const (
	// startBudgetHeader carries, in milliseconds, how much longer the caller will wait for
	// the function to start: holdTimeout minus the time since the call reached the caller's
	// sidecar. Relative, like Envoy's x-envoy-expected-rq-timeout-ms, so clocks need not
	// agree. Every sidecar removes it from what an app sends and from what it passes to an
	// app, and it can only shorten the wait (never past appStartWait or the route timeout),
	// so a forged value costs its sender alone.
	startBudgetHeader = "X-Weft-Start-Budget-Ms"
	// appStartTimeoutHeader marks the 503 of a function whose app did not start within
	// the budget, so the caller's sidecar counts a hold timeout and does not retry it.
	appStartTimeoutHeader = "X-Weft-Hold-Timeout"
	// appStartRetryAfter is the Retry-After of that 503 (the activator's, for a hold
	// that timed out in the caller's sidecar).
	appStartRetryAfter = time.Second
	// defaultHoldTimeout is the hold of a function whose metadata has none
	// (activator.DefaultHoldTimeout).
	defaultHoldTimeout = 30 * time.Second
)

// appStartWait bounds how long the inbound listener waits for the pod's app to accept its
// first connection when the caller sent no budget. The pod is published once the sidecar
// has started and the app container runs, which can be a few milliseconds before the app
// listens; a request that arrives in that window waits here instead of failing (its caller
// has usually just waited for a cold start already). Once the app has answered, a refused
// connection fails at once as usual.
const (
	appStartWait = 10 * time.Second
	appStartPoll = 10 * time.Millisecond
)

// HoldTimeoutRecorder is implemented by a Holder that counts, as hold timeouts, the calls
// a function's sidecar refused because its app did not start within their hold.
type HoldTimeoutRecorder interface {
	HoldTimedOut(fn FunctionRef)
}

// setStartBudget tells the function's sidecar how long this call may still wait for the
// function to start.
func setStartBudget(h http.Header, fn *config.FunctionMeta, start time.Time) {
	hold := fn.HoldTimeout
	if hold <= 0 {
		hold = defaultHoldTimeout
	}
	left := max(time.Until(start.Add(hold)), 0)
	h[startBudgetHeader] = []string{strconv.FormatInt(left.Milliseconds(), 10)}
}

// startBy is when the inbound listener stops waiting for its app to start for this
// request: the caller's budget, if it sent one; zero otherwise (appStartWait applies).
func (l *Listener) startBy(h http.Header, start time.Time) time.Time {
	if !l.inbound {
		return time.Time{}
	}
	v := h[startBudgetHeader]
	if len(v) != 1 {
		return time.Time{}
	}
	ms, err := strconv.ParseInt(v[0], 10, 64)
	if err != nil || ms < 0 || ms > int64(appStartWait/time.Millisecond) {
		return time.Time{} // malformed, or no shorter than appStartWait anyway
	}
	return start.Add(time.Duration(ms) * time.Millisecond)
}

// appStartError is a request the app could not take because it had not started within
// the caller's budget or appStartWait.
type appStartError struct{ err error }

func (e *appStartError) Error() string {
	return "app not started within the caller's hold: " + e.err.Error()
}
func (e *appStartError) Unwrap() error { return e.err }

// waitForApp retries a connection the pod's app refused until it accepts, or until
// appStartWait, the caller's start budget (startBy, if set) or the request's deadline
// passes, or the caller leaves.
func (l *Listener) waitForApp(ctx context.Context, c *upstream.Cluster, out *upstream.Request, h *upstream.Host,
	deadline, startBy time.Time, err error) (*http.Response, error) {
	limit := time.Now().Add(appStartWait)
	if !startBy.IsZero() && startBy.Before(limit) {
		limit = startBy
	}
	starting := true // a refusal at the limit means the app is still starting
	if !deadline.IsZero() && deadline.Before(limit) {
		limit, starting = deadline, false // the route timeout answers: 504
	}
	for errors.Is(err, syscall.ECONNREFUSED) && time.Now().Add(appStartPoll).Before(limit) {
		if !l.proxy.sleep(ctx, appStartPoll) {
			return nil, err
		}
		var resp *http.Response
		resp, err = c.RoundTrip(ctx, out, h, deadline)
		if err == nil {
			return resp, nil
		}
	}
	if starting && errors.Is(err, syscall.ECONNREFUSED) {
		return nil, &appStartError{err}
	}
	return nil, err
}

// appStartTimedOut answers a request whose app did not start within the caller's budget
// (or appStartWait):
// 503, Retry-After, a body naming the function, and the mark the caller's sidecar counts.
func (l *Listener) appStartTimedOut(w http.ResponseWriter, c *upstream.Cluster, err error, start time.Time) bool {
	var ae *appStartError
	if !errors.As(err, &ae) {
		return false
	}
	l.appStartTimeouts.Add(1)
	what := "the app behind this sidecar"
	if fn := l.proxy.opts.Function; fn != "" {
		what = "function " + fn
	}
	h := w.Header()
	h.Set("Retry-After", strconv.Itoa(int(appStartRetryAfter/time.Second)))
	h.Set(appStartTimeoutHeader, "true")
	c.Stats.Observe(http.StatusServiceUnavailable, time.Since(start))
	localReply(w, http.StatusServiceUnavailable, what+" is still starting: its app did not accept a connection within the caller's hold timeout "+
		"(at most "+appStartWait.String()+"); "+
		"retry after "+appStartRetryAfter.String()+", or raise spec.activation.holdTimeout if it always starts this slowly\n")
	return true
}

// isAppStartTimeout reports whether resp is a function sidecar's appStartTimedOut answer.
func isAppStartTimeout(resp *http.Response) bool {
	return resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get(appStartTimeoutHeader) != ""
}
