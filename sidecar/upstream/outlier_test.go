package upstream

import (
	"context"
	"testing"
	"time"

	testclock "k8s.io/utils/clock/testing"

	"github.com/weftmesh/weft/sidecar/config"
)

func cluster(t *testing.T, clk *testclock.FakeClock, n int, od *config.Outlier, limits config.Limits) (*Cluster, []*Host) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	m := NewManager(ctx, clk)
	cc := &config.Cluster{Name: "c", Outlier: od, Limits: limits}
	for i := range n {
		cc.Endpoints = append(cc.Endpoints, config.Endpoint{Address: "10.0.0." + string(rune('1'+i)) + ":80", Weight: 1})
	}
	m.Update(map[string]*config.Cluster{"c": cc})
	c := m.Get("c")
	return c, c.Hosts()
}

func fail(c *Cluster, h *Host, n int, o Outcome) {
	for range n {
		h.Start()
		c.Report(h, o)
	}
}

func TestEjectionTimeGrowsWithEjectionCount(t *testing.T) {
	clk := testclock.NewFakeClock(time.Unix(1000, 0))
	od := &config.Outlier{Consecutive5xx: 2, Enforce5xx: true, Interval: time.Second, BaseEjection: 10 * time.Second, MaxEjectionPercent: 100}
	c, hs := cluster(t, clk, 2, od, config.Limits{MaxRequests: 10, MaxConnections: 10, MaxPending: 10, MaxRetries: 3})
	h := hs[0]
	fail(c, h, 1, ServerError)
	if h.ejected.Load() {
		t.Fatal("ejected after one failure; consecutive_5xx is 2")
	}
	fail(c, h, 1, ServerError)
	if !h.ejected.Load() {
		t.Fatal("not ejected after two consecutive failures")
	}
	c.sweep(clk.Now().Add(9 * time.Second))
	if !h.ejected.Load() {
		t.Error("returned before base_ejection_time")
	}
	c.sweep(clk.Now().Add(10 * time.Second))
	if h.ejected.Load() {
		t.Error("still ejected after base_ejection_time")
	}
	fail(c, h, 2, GatewayError)
	c.sweep(clk.Now().Add(19 * time.Second))
	if !h.ejected.Load() {
		t.Error("second ejection must last 2 × base_ejection_time")
	}
	c.sweep(clk.Now().Add(20 * time.Second))
	if h.ejected.Load() {
		t.Error("still ejected after 2 × base_ejection_time")
	}
}

func TestSuccessResetsConsecutiveFailures(t *testing.T) {
	clk := testclock.NewFakeClock(time.Unix(1000, 0))
	od := &config.Outlier{Consecutive5xx: 2, Enforce5xx: true, Interval: time.Second, BaseEjection: time.Second, MaxEjectionPercent: 100}
	c, hs := cluster(t, clk, 1, od, config.Limits{MaxRequests: 10, MaxConnections: 10, MaxPending: 10})
	fail(c, hs[0], 1, ServerError)
	fail(c, hs[0], 1, Success)
	fail(c, hs[0], 1, ServerError)
	if hs[0].ejected.Load() {
		t.Error("ejected although failures were not consecutive")
	}
}

func TestMaxEjectionPercentCapsEjections(t *testing.T) {
	clk := testclock.NewFakeClock(time.Unix(1000, 0))
	od := &config.Outlier{Consecutive5xx: 1, Enforce5xx: true, Interval: time.Second, BaseEjection: time.Minute, MaxEjectionPercent: 50}
	c, hs := cluster(t, clk, 4, od, config.Limits{MaxRequests: 10, MaxConnections: 10, MaxPending: 10})
	for _, h := range hs {
		fail(c, h, 1, ServerError)
	}
	ejected := 0
	for _, h := range hs {
		if h.ejected.Load() {
			ejected++
		}
	}
	if ejected != 2 {
		t.Errorf("%d of 4 hosts ejected, want 2 (max_ejection_percent 50)", ejected)
	}
	if got := c.Stats.Ejections.Load(); got != 2 {
		t.Errorf("ejection counter %d, want 2", got)
	}
}

func TestCircuitBreakers(t *testing.T) {
	clk := testclock.NewFakeClock(time.Unix(1000, 0))
	c, _ := cluster(t, clk, 1, nil, config.Limits{MaxRequests: 3, MaxConnections: 1, MaxPending: 1, MaxRetries: 1})
	results := []bool{}
	for range 4 {
		_, ok := c.Admit()
		results = append(results, ok)
	}
	// max_requests 3: the fourth overflows. Connections and pending requests are
	// connlimit.go's (TestConnSlots).
	if want := []bool{true, true, true, false}; results[0] != want[0] || results[1] != want[1] || results[2] != want[2] || results[3] != want[3] {
		t.Errorf("admissions %v, want %v", results, want)
	}
	if c.Stats.OverflowRequests.Load() != 1 {
		t.Errorf("request overflows %d, want 1", c.Stats.OverflowRequests.Load())
	}
	if !c.AdmitRetry() || c.AdmitRetry() {
		t.Error("max_retries 1 must admit exactly one concurrent retry")
	}
}

func TestStateSurvivesConfigSwapForSameEndpoint(t *testing.T) {
	clk := testclock.NewFakeClock(time.Unix(1000, 0))
	od := &config.Outlier{Consecutive5xx: 1, Enforce5xx: true, Interval: time.Second, BaseEjection: time.Minute, MaxEjectionPercent: 100}
	c, hs := cluster(t, clk, 2, od, config.Limits{MaxRequests: 10, MaxConnections: 10, MaxPending: 10})
	fail(c, hs[0], 1, ServerError)
	cc := *c.Config()
	cc.Endpoints = append([]config.Endpoint(nil), cc.Endpoints...)
	cc.Endpoints = append(cc.Endpoints, config.Endpoint{Address: "10.0.0.9:80", Weight: 1})
	c.mgr.Update(map[string]*config.Cluster{"c": &cc})
	if got := c.mgr.Get("c"); got != c || !got.Hosts()[0].ejected.Load() || len(got.Hosts()) != 3 {
		t.Error("an endpoint kept across a swap lost its ejection")
	}
}

// Connect failures eject a host without outlier_detection (issue 12 item 5), for
// DefaultLocalOriginEjection × its ejection count, never the last available host, and
// only when they are consecutive.
func TestConnectFailuresEjectWithoutOutlierDetection(t *testing.T) {
	limits := config.Limits{MaxRequests: 10, MaxConnections: 10, MaxPending: 10}
	t.Run("ejected for the default time, longer the second time", func(t *testing.T) {
		clk := testclock.NewFakeClock(time.Unix(1000, 0))
		c, hs := cluster(t, clk, 2, nil, limits)
		fail(c, hs[0], DefaultConsecutiveLocalOriginFailure-1, LocalOriginFailure)
		if !hs[0].Available() {
			t.Fatal("ejected before DefaultConsecutiveLocalOriginFailure failures")
		}
		fail(c, hs[0], 1, LocalOriginFailure)
		if hs[0].Available() {
			t.Fatal("still available after DefaultConsecutiveLocalOriginFailure connect failures")
		}
		clk.Step(DefaultLocalOriginEjection - time.Millisecond)
		if hs[0].Available() {
			t.Fatal("back before DefaultLocalOriginEjection")
		}
		clk.Step(time.Millisecond)
		if !hs[0].Available() {
			t.Fatal("still ejected after DefaultLocalOriginEjection, with no outlier sweep to end it")
		}
		fail(c, hs[0], DefaultConsecutiveLocalOriginFailure, LocalOriginFailure)
		clk.Step(2*DefaultLocalOriginEjection - time.Millisecond)
		if hs[0].Available() {
			t.Fatal("the second ejection must last twice as long")
		}
		if n := c.Stats.Ejections.Load(); n != 2 {
			t.Errorf("%d ejections counted, want 2", n)
		}
	})
	t.Run("the last available host stays", func(t *testing.T) {
		clk := testclock.NewFakeClock(time.Unix(1000, 0))
		c, hs := cluster(t, clk, 1, nil, limits)
		fail(c, hs[0], 10, LocalOriginFailure)
		if !hs[0].Available() {
			t.Fatal("the only host was ejected: every request would fail with no healthy upstream")
		}
	})
	t.Run("an answer in between resets the count", func(t *testing.T) {
		clk := testclock.NewFakeClock(time.Unix(1000, 0))
		c, hs := cluster(t, clk, 2, nil, limits)
		for range 3 {
			fail(c, hs[0], DefaultConsecutiveLocalOriginFailure-1, LocalOriginFailure)
			fail(c, hs[0], 1, GatewayError)
		}
		if !hs[0].Available() {
			t.Fatal("ejected although its connect failures were not consecutive")
		}
	})
	t.Run("with outlier_detection they count as gateway errors too", func(t *testing.T) {
		clk := testclock.NewFakeClock(time.Unix(1000, 0))
		od := &config.Outlier{Consecutive5xx: 2, Enforce5xx: true, Interval: time.Second, BaseEjection: time.Minute, MaxEjectionPercent: 100}
		c, hs := cluster(t, clk, 2, od, limits)
		fail(c, hs[0], 2, LocalOriginFailure)
		if hs[0].Available() {
			t.Fatal("consecutive_5xx 2 did not count two connect failures")
		}
	})
}
