package httpproxy

import (
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/httphead"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// fakeBudget is a max_retries circuit breaker with max slots.
type fakeBudget struct{ max, inUse, refused int }

func (b *fakeBudget) AdmitRetry() bool {
	if b.inUse >= b.max {
		b.refused++
		return false
	}
	b.inUse++
	return true
}

func (b *fakeBudget) RetryDone() {
	if b.inUse--; b.inUse < 0 {
		panic("RetryDone without AdmitRetry")
	}
}

// policyEvent is an attempt's end at a time since the request began: a response
// (status), an error (err), no host to pick (neither), or the caller leaving (left).
type policyEvent struct {
	at     time.Duration
	status int
	hold   bool // the response is a function sidecar's hold-timeout 503
	err    error
	left   bool

	want        stepKind
	wantOutcome upstream.Outcome
	wantDelay   time.Duration // stepRetry
	wantStatus  int           // stepReply
	wantMsg     string        // stepReply
}

var (
	errDialRefused = &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	errReadReset   = &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
)

const (
	msgTimeout     = "upstream request timeout\n"
	msgNoHost      = "no healthy upstream\n"
	msgTermination = "upstream connect error or disconnect/reset before headers. reset reason: connection termination\n"
	msgConnFailure = "upstream connect error or disconnect/reset before headers. reset reason: connection failure\n"
	msgConnTimeout = "upstream connect error or disconnect/reset before headers. reset reason: connection timeout\n"
)

func retries(on config.RetryOn, n int) *config.RetryPolicy {
	return &config.RetryPolicy{On: on, NumRetries: n, BaseInterval: 20 * time.Millisecond, MaxInterval: 200 * time.Millisecond}
}

// The exchange policy both HTTP paths follow, event by event, on a fake clock. The
// back-off's jitter is pinned to half its ceiling, so the n-th retry waits
// min(20 ms·2^(n-1), 200 ms)/2.
func TestRetryState(t *testing.T) {
	codes := retries(config.RetryRetriableStatusCodes, 1)
	codes.RetriableCodes = []int{418}
	cases := []struct {
		name          string
		rp            *config.RetryPolicy
		timeout       time.Duration
		notReplayable bool
		budget        int // max_retries; 0 means 100
		events        []policyEvent
	}{
		{name: "no retry policy forwards a 503", events: []policyEvent{
			{status: 503, want: stepForward, wantOutcome: upstream.GatewayError}}},
		{name: "no retry policy answers a reset", events: []policyEvent{
			{err: errUpstreamReset, want: stepReply, wantOutcome: upstream.LocalOriginFailure, wantStatus: 503, wantMsg: msgTermination}}},
		{name: "5xx retries a 500 then forwards a 200", rp: retries(config.Retry5xx, 2), events: []policyEvent{
			{status: 500, want: stepRetry, wantOutcome: upstream.ServerError, wantDelay: 10 * time.Millisecond},
			{at: 30 * time.Millisecond, status: 200, want: stepForward, wantOutcome: upstream.Success}}},
		{name: "5xx retries any failure before a response", rp: retries(config.Retry5xx, 1), events: []policyEvent{
			{err: errReadReset, want: stepRetry, wantOutcome: upstream.GatewayError, wantDelay: 10 * time.Millisecond},
			{status: 200, want: stepForward, wantOutcome: upstream.Success}}},
		{name: "gateway-error forwards a 500", rp: retries(config.RetryGatewayError, 1), events: []policyEvent{
			{status: 500, want: stepForward, wantOutcome: upstream.ServerError}}},
		{name: "gateway-error retries 502, 503 and 504", rp: retries(config.RetryGatewayError, 3), events: []policyEvent{
			{status: 502, want: stepRetry, wantOutcome: upstream.GatewayError, wantDelay: 10 * time.Millisecond},
			{status: 503, want: stepRetry, wantOutcome: upstream.GatewayError, wantDelay: 20 * time.Millisecond},
			{status: 504, want: stepRetry, wantOutcome: upstream.GatewayError, wantDelay: 40 * time.Millisecond},
			{status: 504, want: stepForward, wantOutcome: upstream.GatewayError}}},
		{name: "connect-failure retries a refused dial", rp: retries(config.RetryConnectFailure, 1), events: []policyEvent{
			{err: errDialRefused, want: stepRetry, wantOutcome: upstream.LocalOriginFailure, wantDelay: 10 * time.Millisecond},
			{err: errDialRefused, want: stepReply, wantOutcome: upstream.LocalOriginFailure, wantStatus: 503, wantMsg: msgConnFailure}}},
		{name: "connect-failure answers a reset at once", rp: retries(config.RetryConnectFailure, 1), events: []policyEvent{
			{err: errUpstreamReset, want: stepReply, wantOutcome: upstream.LocalOriginFailure, wantStatus: 503, wantMsg: msgTermination}}},
		{name: "connect-failure forwards a 503", rp: retries(config.RetryConnectFailure, 1), events: []policyEvent{
			{status: 503, want: stepForward, wantOutcome: upstream.GatewayError}}},
		{name: "connect timeout is Envoy's 503", rp: retries(config.RetryConnectFailure, 1), events: []policyEvent{
			{err: errConnTimeout, want: stepRetry, wantOutcome: upstream.LocalOriginFailure, wantDelay: 10 * time.Millisecond},
			{err: errConnTimeout, want: stepReply, wantOutcome: upstream.LocalOriginFailure, wantStatus: 503, wantMsg: msgConnTimeout}}},
		{name: "reset retries a reset", rp: retries(config.RetryReset, 1), events: []policyEvent{
			{err: errUpstreamReset, want: stepRetry, wantOutcome: upstream.LocalOriginFailure, wantDelay: 10 * time.Millisecond},
			{status: 200, want: stepForward, wantOutcome: upstream.Success}}},
		{name: "retriable-4xx retries a 409, not a 404", rp: retries(config.RetryRetriable4xx, 2), events: []policyEvent{
			{status: 409, want: stepRetry, wantOutcome: upstream.Success, wantDelay: 10 * time.Millisecond},
			{status: 404, want: stepForward, wantOutcome: upstream.Success}}},
		{name: "retriable-status-codes retries a listed code", rp: codes, events: []policyEvent{
			{status: 418, want: stepRetry, wantOutcome: upstream.Success, wantDelay: 10 * time.Millisecond},
			{status: 418, want: stepForward, wantOutcome: upstream.Success}}},
		{name: "retriable-status-codes forwards an unlisted 503", rp: codes, events: []policyEvent{
			{status: 503, want: stepForward, wantOutcome: upstream.GatewayError}}},
		{name: "the hold-timeout 503 is not retried", rp: retries(config.Retry5xx, 2), events: []policyEvent{
			{status: 503, hold: true, want: stepForward, wantOutcome: upstream.GatewayError}}},
		{name: "a streamed body is not retried", rp: retries(config.Retry5xx, 2), notReplayable: true, events: []policyEvent{
			{status: 503, want: stepForward, wantOutcome: upstream.GatewayError}}},
		{name: "back-off doubles up to its maximum", rp: retries(config.Retry5xx, 6), events: []policyEvent{
			{status: 500, want: stepRetry, wantOutcome: upstream.ServerError, wantDelay: 10 * time.Millisecond},
			{status: 500, want: stepRetry, wantOutcome: upstream.ServerError, wantDelay: 20 * time.Millisecond},
			{status: 500, want: stepRetry, wantOutcome: upstream.ServerError, wantDelay: 40 * time.Millisecond},
			{status: 500, want: stepRetry, wantOutcome: upstream.ServerError, wantDelay: 80 * time.Millisecond},
			{status: 500, want: stepRetry, wantOutcome: upstream.ServerError, wantDelay: 100 * time.Millisecond},
			{status: 500, want: stepRetry, wantOutcome: upstream.ServerError, wantDelay: 100 * time.Millisecond},
			{status: 500, want: stepForward, wantOutcome: upstream.ServerError}}},
		{name: "max_retries exhausted forwards the response", rp: retries(config.Retry5xx, 2), budget: -1, events: []policyEvent{
			{status: 503, want: stepForward, wantOutcome: upstream.GatewayError}}},
		{name: "max_retries exhausted answers the error", rp: retries(config.Retry5xx, 2), budget: -1, events: []policyEvent{
			{err: errDialRefused, want: stepReply, wantOutcome: upstream.LocalOriginFailure, wantStatus: 503, wantMsg: msgConnFailure}}},
		{name: "one max_retries slot serves retry after retry", rp: retries(config.Retry5xx, 3), budget: 1, events: []policyEvent{
			{status: 500, want: stepRetry, wantOutcome: upstream.ServerError, wantDelay: 10 * time.Millisecond},
			{status: 500, want: stepRetry, wantOutcome: upstream.ServerError, wantDelay: 20 * time.Millisecond},
			{status: 500, want: stepRetry, wantOutcome: upstream.ServerError, wantDelay: 40 * time.Millisecond},
			{status: 500, want: stepForward, wantOutcome: upstream.ServerError}}},
		{name: "per-try timeout is retried", rp: retries(config.Retry5xx, 1), timeout: time.Second, events: []policyEvent{
			{at: 100 * time.Millisecond, err: errTryTimeout, want: stepRetry, wantOutcome: upstream.GatewayError, wantDelay: 10 * time.Millisecond},
			{at: 200 * time.Millisecond, err: errTryTimeout, want: stepReply, wantOutcome: upstream.GatewayError, wantStatus: 504, wantMsg: msgTimeout}}},
		{name: "route timeout reached mid back-off answers 504", rp: retries(config.Retry5xx, 2), timeout: 100 * time.Millisecond, events: []policyEvent{
			{at: 95 * time.Millisecond, status: 503, want: stepReply, wantOutcome: upstream.GatewayError, wantStatus: 504, wantMsg: msgTimeout}}},
		{name: "back-off ending on the route deadline still retries", rp: retries(config.Retry5xx, 2), timeout: 100 * time.Millisecond, events: []policyEvent{
			{at: 90 * time.Millisecond, status: 503, want: stepRetry, wantOutcome: upstream.GatewayError, wantDelay: 10 * time.Millisecond}}},
		{name: "route timeout passed: no retry, not the host's fault", rp: retries(config.Retry5xx, 2), timeout: 100 * time.Millisecond, events: []policyEvent{
			{at: 100 * time.Millisecond, err: errTryTimeout, want: stepReply, wantOutcome: upstream.Success, wantStatus: 504, wantMsg: msgTimeout}}},
		{name: "route timeout passed forwards the response", rp: retries(config.Retry5xx, 2), timeout: 100 * time.Millisecond, events: []policyEvent{
			{at: 150 * time.Millisecond, status: 503, want: stepForward, wantOutcome: upstream.GatewayError}}},
		{name: "caller gone: no retry, not the host's fault", rp: retries(config.Retry5xx, 2), events: []policyEvent{
			{left: true, err: errReadReset, want: stepReply, wantOutcome: upstream.Success, wantStatus: 503, wantMsg: msgTermination}}},
		{name: "ambiguous response framing answers 502", events: []policyEvent{
			{err: &httphead.Problem{Status: 502, Reason: "two lengths"}, want: stepReply, wantOutcome: upstream.GatewayError, wantStatus: 502, wantMsg: "two lengths\n"}}},
		{name: "no host answers 503", rp: retries(config.Retry5xx, 2), events: []policyEvent{
			{status: 500, want: stepRetry, wantOutcome: upstream.ServerError, wantDelay: 10 * time.Millisecond},
			{want: stepReply, wantStatus: 503, wantMsg: msgNoHost}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			clk := clocktesting.NewFakeClock(start)
			b := &fakeBudget{max: 100}
			switch {
			case tc.budget < 0:
				b.max = 0
			case tc.budget > 0:
				b.max = tc.budget
			}
			var rs retryState
			rs.init(&config.Route{Retry: tc.rp, Timeout: tc.timeout}, !tc.notReplayable, b, start)
			rs.jitter = func(n int64) int64 { return n / 2 }
			for i, e := range tc.events {
				if now := start.Add(e.at); now.After(clk.Now()) {
					clk.SetTime(now)
				}
				if e.left {
					rs.callerLeft()
				}
				var s step
				switch {
				case e.err != nil:
					s = rs.onError(e.err, clk.Now())
				case e.status != 0:
					s = rs.onResponse(e.status, e.hold, clk.Now())
				default:
					s = rs.giveUp(errNoHost, clk.Now())
				}
				if s.kind != e.want || s.outcome != e.wantOutcome || s.delay != e.wantDelay || s.status != e.wantStatus || s.msg != e.wantMsg {
					t.Fatalf("event %d: got kind %d outcome %d delay %v reply %d %q; want kind %d outcome %d delay %v reply %d %q",
						i, s.kind, s.outcome, s.delay, s.status, s.msg, e.want, e.wantOutcome, e.wantDelay, e.wantStatus, e.wantMsg)
				}
				if (s.kind == stepRetry) != (b.inUse == 1) {
					t.Fatalf("event %d: %d max_retries slots held after kind %d; want one exactly while a retry is under way", i, b.inUse, s.kind)
				}
				if s.kind == stepRetry {
					clk.Step(s.delay)
				}
			}
			rs.release()
			if b.inUse != 0 {
				t.Fatalf("%d max_retries slots still held once the exchange ended", b.inUse)
			}
			if tc.budget < 0 && b.refused == 0 {
				t.Fatalf("no retry was refused by an empty max_retries budget")
			}
		})
	}
}

// Each attempt's deadline is its per-try timeout or the route's, whichever comes first,
// and every host tried is remembered so the next pick avoids it (previous_hosts).
func TestRetryStateAttemptDeadlinesAndTriedHosts(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakeClock(start)
	rp := retries(config.Retry5xx, 5)
	rp.PerTryTimeout = 300 * time.Millisecond
	var rs retryState
	rs.init(&config.Route{Retry: rp, Timeout: time.Second}, true, &fakeBudget{max: 10}, start)
	hosts := []*upstream.Host{{Address: "10.0.0.1:80"}, {Address: "10.0.0.2:80"}, {Address: "10.0.0.3:80"}}
	wantBy := []time.Time{start.Add(300 * time.Millisecond), start.Add(900 * time.Millisecond), start.Add(time.Second)}
	for i, h := range hosts {
		clk.SetTime(start.Add(time.Duration(i) * 600 * time.Millisecond))
		if by := rs.begin(h, clk.Now()); !by.Equal(wantBy[i]) {
			t.Fatalf("attempt %d at %v: deadline %v, want %v", i, clk.Now().Sub(start), by.Sub(start), wantBy[i].Sub(start))
		}
		if len(rs.tried) != i+1 || rs.tried[i] != h {
			t.Fatalf("attempt %d: tried %v, want the hosts so far in order", i, rs.tried)
		}
	}

	// Without a per-try or route timeout an attempt has no deadline.
	rs.init(&config.Route{Retry: retries(config.Retry5xx, 1)}, true, &fakeBudget{max: 1}, start)
	if by := rs.begin(hosts[0], start); !by.IsZero() {
		t.Fatalf("deadline %v with neither timeout, want none", by)
	}
}

// A response the event loop hands to a goroutine to read ends its attempt there: never
// retried, a failure counted as a gateway error and answered as Envoy would.
func TestRetryStateHandedOffAttemptIsFinal(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b := &fakeBudget{max: 1}
	var rs retryState
	rs.init(&config.Route{Retry: retries(config.Retry5xx, 3)}, true, b, start)
	if s := rs.onResponse(503, false, start); s.kind != stepRetry || b.inUse != 1 {
		t.Fatalf("first 503: kind %d with %d slots held, want a retry holding one", s.kind, b.inUse)
	}
	if s := rs.onHandedOff(503, nil); s.kind != stepForward || s.outcome != upstream.GatewayError || b.inUse != 0 {
		t.Fatalf("handed-off 503: kind %d outcome %d with %d slots held; want it forwarded as a gateway error, slot back",
			s.kind, s.outcome, b.inUse)
	}
	s := rs.onHandedOff(0, errTryTimeout)
	if s.kind != stepReply || s.outcome != upstream.GatewayError || s.status != 504 || s.msg != msgTimeout {
		t.Fatalf("handed-off timeout: kind %d outcome %d reply %d %q; want 504 %q as a gateway error", s.kind, s.outcome, s.status, s.msg, msgTimeout)
	}
}
