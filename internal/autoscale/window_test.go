package autoscale

import (
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func at(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }

func TestWindowAverage(t *testing.T) {
	w := newWindow(60 * time.Second)
	// Seconds 1..6: two pods at 30 and 70, summed per bucket → 100.
	for s := 1; s <= 6; s++ {
		w.addStat(at(s), 30, 3)
		w.addStat(at(s), 70, 7)
	}
	// Partial window: only 6 seconds of data, so 600/6 = 100, not 600/60.
	if got := w.average(at(6), 60*time.Second, MetricConcurrency); got != 100 {
		t.Errorf("stable average after 6 s = %v, want 100", got)
	}
	if got := w.average(at(6), 60*time.Second, MetricRPS); got != 10 {
		t.Errorf("stable rps after 6 s = %v, want 10", got)
	}
	// Nothing at 7..9, then 40 at second 10: gaps in between count as zero,
	// (600 + 40) / 10 = 64.
	w.addStat(at(10), 40, 0)
	if got := w.average(at(10), 60*time.Second, MetricConcurrency); got != 64 {
		t.Errorf("average with a gap = %v, want 64", got)
	}
	// Panic window of 6 s at second 10 covers 5..10: (100 + 100 + 40) / 6 = 40.
	if got := w.average(at(10), 6*time.Second, MetricConcurrency); got != 40 {
		t.Errorf("panic average = %v, want 40", got)
	}
	// No data after second 10: at second 20 the average leaves the trailing
	// seconds out, like Knative, so it is still 640/10.
	if got := w.average(at(20), 60*time.Second, MetricConcurrency); got != 64 {
		t.Errorf("average with stale tail = %v, want 64", got)
	}
	// Second 70 covers 11..70: no data in it, so 0.
	if got := w.average(at(70), 60*time.Second, MetricConcurrency); got != 0 {
		t.Errorf("average a window after the last data = %v, want 0", got)
	}
	// Data again at second 100, a whole window after 10: the partial window
	// restarts there, so 5/1 = 5 rather than 5/60.
	w.addStat(at(100), 5, 0)
	if got := w.average(at(100), 60*time.Second, MetricConcurrency); got != 5 {
		t.Errorf("average after a window-long gap = %v, want 5", got)
	}
	if len(w.buckets) != 60 {
		t.Errorf("window holds %d buckets, want 60 (bounded by the stable window)", len(w.buckets))
	}
}

func TestWindowDemandIsMaxPerSecond(t *testing.T) {
	w := newWindow(60 * time.Second)
	// Ten pokes in one second count once: demand is a max, stats are a sum.
	for range 10 {
		w.addDemand(at(1), 1)
	}
	w.addStat(at(1), 2, 0)
	if got := w.average(at(1), 60*time.Second, MetricConcurrency); got != 3 {
		t.Errorf("average = %v, want 2 (stat) + 1 (demand) = 3", got)
	}
}

func TestWindowResizeKeepsRecentData(t *testing.T) {
	w := newWindow(60 * time.Second)
	for s := 1; s <= 60; s++ {
		w.addStat(at(s), float64(s), 0)
	}
	w = w.resize(10 * time.Second)
	// Seconds 51..60 survive: (51+...+60)/10 = 55.5.
	if got := w.average(at(60), 10*time.Second, MetricConcurrency); got != 55.5 {
		t.Errorf("average after resize = %v, want 55.5", got)
	}
}
