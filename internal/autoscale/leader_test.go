package autoscale

import (
	"testing"
	"time"
)

// A manager replica that just became the leader has no stats history (docs/ha.md). The
// MeshFunction controller gives it each function's ready pods before its spec, and for a
// stable window without any stat (the followers' forwarded stats have not arrived yet) it
// must neither shed a busy function's pods nor take a one-pod function to zero.
func TestNewLeaderWithoutStatsKeepsRunningPods(t *testing.T) {
	a, fc, ch := startAutoscaler(t)
	three := FunctionKey{"shop", "orders"}
	one := FunctionKey{"shop", "thumbnails"}
	a.SetReady(three, 3)
	a.SetSpec(three, zeroSpec())
	a.SetReady(one, 1)
	a.SetSpec(one, zeroSpec())
	window := zeroSpec().StableWindow
	for elapsed := time.Duration(0); elapsed < window; elapsed += TickInterval {
		fc.Step(TickInterval)
		for range 2 {
			got := <-ch
			want := int32(3)
			if got.fn == one {
				want = 1
			}
			if got.d.Desired != want || got.d.WantsZero {
				t.Fatalf("%s after %s without stats: %+v, want %d pods kept", got.fn, elapsed+TickInterval, got.d, want)
			}
		}
	}
}
