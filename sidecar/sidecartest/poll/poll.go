// Package poll holds the one helper tests use to wait for a condition: it takes a
// condition and a bounded timeout and fails the test, saying what it waited for, when the
// condition does not hold in time. It imports nothing of Weft's, so the tests of every
// package (sidecar/sidecartest's own dependencies included) and of internal/ can use it.
package poll

import (
	"testing"
	"time"
)

// Interval is how often Until evaluates its condition: short next to any timeout a test
// gives, long enough not to busy-spin a loaded 2-core CI machine.
const Interval = 10 * time.Millisecond

// Until evaluates cond every Interval until it holds, and fails the test with format and
// args when timeout passes first: they say what did not happen ("waiting for the ACK",
// "the endpoint never came back").
func Until(t testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v: "+format, append([]any{timeout}, args...)...)
		}
		time.Sleep(Interval)
	}
}
