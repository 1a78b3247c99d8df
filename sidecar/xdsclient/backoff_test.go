package xdsclient

import (
	"testing"
	"time"
)

func TestBackoffIsJitteredAndBounded(t *testing.T) {
	base, max := 250*time.Millisecond, 30*time.Second
	for attempt, ceil := range []time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second} {
		seen := map[time.Duration]bool{}
		for range 200 {
			d := backoff(base, max, attempt)
			if d < base/2 || d >= base/2+ceil {
				t.Fatalf("attempt %d: %v outside [%v, %v)", attempt, d, base/2, base/2+ceil)
			}
			seen[d] = true
		}
		if len(seen) < 50 {
			t.Errorf("attempt %d: only %d distinct delays in 200; reconnects must be jittered", attempt, len(seen))
		}
	}
	if d := backoff(base, max, 40); d >= base/2+max {
		t.Errorf("attempt 40: %v exceeds the %v cap", d, max)
	}
}
