package async

import (
	"strings"
	"testing"
	"time"
)

func TestDecideAndBackoff(t *testing.T) {
	cfg := DefaultConfig() // 3 attempts, 1s doubling to 60s, retry 429/5xx
	for _, tc := range []struct {
		name      string
		a         attempt
		n         int
		want      verdict
		wantDelay time.Duration
	}{
		{"2xx is done", attempt{status: 200}, 1, done, 0},
		{"4xx not in retryOn is final", attempt{status: 404}, 1, done, 0},
		{"501 not in retryOn is final", attempt{status: 501}, 1, done, 0},
		{"500 retried after 1s", attempt{status: 500}, 1, retry, time.Second},
		{"429 retried after 2s on attempt 2", attempt{status: 429}, 2, retry, 2 * time.Second},
		{"connection error retried", attempt{err: errTimeout}, 1, retry, time.Second},
		{"last attempt dead", attempt{status: 503}, 3, dead, 0},
		{"redelivered past max dead", attempt{err: errTimeout}, 9, dead, 0},
	} {
		v, d, reason := decide(cfg, tc.a, tc.n)
		if v != tc.want || d != tc.wantDelay || (v != done && reason == "") {
			t.Errorf("%s: decide = %v %s %q, want %v %s", tc.name, v, d, reason, tc.want, tc.wantDelay)
		}
	}
	cfg.MaxAttempts = 100
	for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 6: 32 * time.Second, 7: 60 * time.Second, 99: 60 * time.Second} {
		if got := backoff(cfg, n); got != want {
			t.Errorf("backoff after attempt %d = %s, want %s", n, got, want)
		}
	}
}

func TestExpired(t *testing.T) {
	cfg := DefaultConfig()
	now := time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)
	if old, _ := expired(cfg, now.Add(-23*time.Hour), now); old {
		t.Error("23h-old call expired with maxAge 24h")
	}
	if old, why := expired(cfg, now.Add(-25*time.Hour), now); !old || !strings.Contains(why, "maxAge 24h0m0s") {
		t.Errorf("25h-old call: %v %q", old, why)
	}
	if old, _ := expired(cfg, time.Time{}, now); old {
		t.Error("a call without an enqueue time expired")
	}
}

func TestCallIDAndPreferences(t *testing.T) {
	a, b := FunctionRef{"ns", "a"}, FunctionRef{"ns", "b"}
	first, again := callID(a, "k"), callID(a, "k")
	if first != again || first == callID(b, "k") || first == callID(a, "k2") {
		t.Error("derived call ids must be stable per function and key, distinct otherwise")
	}
	if r1, r2 := callID(a, ""), callID(a, ""); r1 == r2 {
		t.Error("random call ids repeat")
	}
	if id := callID(a, ""); len(id) != 36 || strings.Count(id, "-") != 4 {
		t.Errorf("call id %q is not UUID-shaped", id)
	}
	if got := dropRespondAsync([]string{"respond-async, wait=10", "Respond-Async"}); len(got) != 1 || got[0] != "wait=10" {
		t.Errorf("dropRespondAsync = %q", got)
	}
}
