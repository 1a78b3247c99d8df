package poll

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestUntilReturnsOnceTheConditionHolds(t *testing.T) {
	var n atomic.Int32
	Until(t, 5*time.Second, func() bool { return n.Add(1) >= 3 }, "three evaluations")
	if got := n.Load(); got != 3 {
		t.Errorf("cond evaluated %d times, want 3 (it must stop once it holds)", got)
	}
}

// fatalRecorder records Fatalf instead of failing, and stops the caller as t.Fatalf would.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}
func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = format
	panic(f)
}

func TestUntilFailsWithWhatItWaitedFor(t *testing.T) {
	rec := &fatalRecorder{TB: t}
	func() {
		defer func() {
			if r := recover(); r != rec {
				t.Fatalf("Until did not fail through Fatalf: %v", r)
			}
		}()
		Until(rec, 30*time.Millisecond, func() bool { return false }, "the %s", "thing")
	}()
	if rec.msg != "timed out after %v: the %s" {
		t.Errorf("failure message format %q", rec.msg)
	}
}
