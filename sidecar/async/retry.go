package async

import (
	"fmt"
	"time"
)

// verdict is what to do with a call after an attempt.
type verdict int

const (
	done  verdict = iota // final: ack, report the app's answer
	retry                // nak with a delay; JetStream redelivers it
	dead                 // out of attempts or age: dead-letter, terminate, report the failure
)

// attempt is the outcome of one run against the app: status is 0 when the app did not
// answer (connection refused, reset, timeout); then err says why.
type attempt struct {
	status int
	err    error
}

// decide is the retry policy (pure). n is the 1-based attempt number (JetStream's delivery
// count). Connection failures, timeouts and statuses in RetryOn are retried until
// MaxAttempts; everything else, 2xx or not, is the app's final answer.
func decide(cfg Config, a attempt, n int) (v verdict, delay time.Duration, reason string) {
	switch {
	case a.err != nil:
		reason = fmt.Sprintf("attempt %d: the function did not answer: %v", n, a.err)
	case cfg.Retryable(a.status):
		reason = fmt.Sprintf("attempt %d: the function answered %d, which spec.async.retryOn retries", n, a.status)
	default:
		return done, 0, ""
	}
	if n >= cfg.MaxAttempts {
		return dead, 0, fmt.Sprintf("gave up after %d attempts (spec.async.maxAttempts); last %s", n, reason)
	}
	return retry, backoff(cfg, n), reason
}

// backoff before attempt n+1 is Backoff × 2^(n-1), capped at MaxBackoff: with 1s and 60s,
// the waits are 1s, 2s, 4s, … 32s, 60s, 60s.
func backoff(cfg Config, n int) time.Duration {
	d := cfg.Backoff
	for i := 1; i < n; i++ {
		if d >= cfg.MaxBackoff/2 {
			return cfg.MaxBackoff
		}
		d *= 2
	}
	return min(d, cfg.MaxBackoff)
}

// expired reports whether a call accepted at enqueued is past MaxAge at now, and why.
func expired(cfg Config, enqueued, now time.Time) (bool, string) {
	if enqueued.IsZero() || cfg.MaxAge <= 0 {
		return false, ""
	}
	if age := now.Sub(enqueued); age > cfg.MaxAge {
		return true, fmt.Sprintf("the call waited %s, longer than spec.async.maxAge %s, and was not run",
			age.Round(time.Second), cfg.MaxAge)
	}
	return false, ""
}
