package upstream

import (
	"testing"
	"time"

	testclock "k8s.io/utils/clock/testing"

	"github.com/weftmesh/weft/sidecar/config"
)

func TestPick(t *testing.T) {
	clk := testclock.NewFakeClock(time.Unix(1000, 0))
	limits := config.Limits{MaxRequests: 10, MaxConnections: 10, MaxPending: 10}

	t.Run("round robin alternates", func(t *testing.T) {
		c, hs := cluster(t, clk, 2, nil, limits)
		seen := map[*Host]int{}
		for range 10 {
			seen[c.Pick(0, false, nil)]++
		}
		if seen[hs[0]] != 5 || seen[hs[1]] != 5 {
			t.Errorf("round robin over 10 picks: %d/%d, want 5/5", seen[hs[0]], seen[hs[1]])
		}
	})
	t.Run("retries avoid hosts already tried", func(t *testing.T) {
		c, hs := cluster(t, clk, 3, nil, limits)
		for range 20 {
			if h := c.Pick(0, false, []*Host{hs[0], hs[1]}); h != hs[2] {
				t.Fatalf("picked %s, want the untried %s", h.Address, hs[2].Address)
			}
		}
		if h := c.Pick(0, false, hs); h == nil {
			t.Error("with every host tried, a retry must still get one")
		}
	})
	t.Run("least request prefers the idle host", func(t *testing.T) {
		c, hs := cluster(t, clk, 2, nil, limits)
		cc := *c.Config()
		cc.LB = config.LeastRequest
		c.mgr.Update(map[string]*config.Cluster{"c": &cc})
		for range 5 {
			hs[0].Start()
		}
		busy := 0
		for range 100 {
			if c.Pick(0, false, nil) == hs[0] {
				busy++
			}
		}
		// Power of two choices: the busy host wins only when both draws land on it (~25%).
		if busy > 40 {
			t.Errorf("busy host picked %d/100 times", busy)
		}
	})
	t.Run("draining and ejected hosts get nothing", func(t *testing.T) {
		c, hs := cluster(t, clk, 3, nil, limits)
		hs[0].health.Store(int32(config.Draining))
		hs[1].ejected.Store(true)
		for range 10 {
			if h := c.Pick(0, false, nil); h != hs[2] {
				t.Fatalf("picked %s, want only the available host", h.Address)
			}
		}
	})
	t.Run("ring hash is stable per key", func(t *testing.T) {
		c, _ := cluster(t, clk, 3, nil, limits)
		cc := *c.Config()
		cc.LB, cc.MinRingSize = config.RingHash, 1024
		c.mgr.Update(map[string]*config.Cluster{"c": &cc})
		for key := uint64(1); key < 1<<60; key *= 7 {
			if a, b := c.Pick(key, true, nil), c.Pick(key, true, nil); a != b {
				t.Fatalf("key %d went to %s then %s", key, a.Address, b.Address)
			}
		}
	})
}
