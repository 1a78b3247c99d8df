package autoscale

import "time"

// bucket is one second of observations for one function.
type bucket struct {
	sec         int64   // Unix second this bucket holds; stale when it differs from the slot's second
	concurrency float64 // sum over pods of their average concurrency in that second
	requests    float64 // sum over pods of requests in that second (= rps)
	demand      float64 // highest demand seen in that second: pokes (1) and pending messages
}

// window is a ring of per-second buckets as long as the stable window, so
// memory is bounded by the window (60 buckets by default) however long the
// function lives. Pods are summed per bucket, like Knative's collector, so a
// bucket holds the whole function's load for that second.
type window struct {
	buckets []bucket
	has     bool
	first   int64 // first written second since the last gap of a whole window
	last    int64 // latest written second
}

func newWindow(size time.Duration) *window {
	n := int(size / time.Second)
	if n < 1 {
		n = 1
	}
	return &window{buckets: make([]bucket, n)}
}

// resize keeps the buckets that still fall inside a window of the new size.
func (w *window) resize(size time.Duration) *window {
	nw := newWindow(size)
	if len(nw.buckets) == len(w.buckets) {
		return w
	}
	for _, b := range w.buckets {
		if b.sec != 0 && b.sec > w.last-int64(len(nw.buckets)) {
			nw.buckets[mod(b.sec, len(nw.buckets))] = b
		}
	}
	nw.has, nw.last = w.has, w.last
	nw.first = max(w.first, w.last-int64(len(nw.buckets))+1)
	return nw
}

// slot returns the bucket for second sec, or nil when sec is older than the
// ring can hold.
func (w *window) slot(sec int64) *bucket {
	n := int64(len(w.buckets))
	if w.has && sec <= w.last-n {
		return nil
	}
	if !w.has || sec-w.last >= n {
		// A whole window passed with no data: averages start afresh from here,
		// as Knative resets firstWrite.
		w.first = sec
	}
	if sec < w.first {
		w.first = sec
	}
	if !w.has || sec > w.last {
		w.last = sec
	}
	w.has = true
	b := &w.buckets[mod(sec, len(w.buckets))]
	if b.sec != sec {
		*b = bucket{sec: sec}
	}
	return b
}

func (w *window) addStat(now time.Time, concurrency, requests float64) {
	if b := w.slot(now.Unix()); b != nil {
		b.concurrency += concurrency
		b.requests += requests
	}
}

func (w *window) addDemand(now time.Time, v float64) {
	if b := w.slot(now.Unix()); b != nil {
		b.demand = max(b.demand, v)
	}
}

// average is the mean per-second value of metric m over the span ending at
// now (inclusive), Knative's WindowAverage: seconds before the first write or
// after the last write are left out (a partial window), gaps in between
// count as zero, and a span with no data at all is 0. Example: stable window
// 60 s, data only for the last 6 s at 100 each → 600 / 6 = 100, not 10.
func (w *window) average(now time.Time, span time.Duration, m Metric) float64 {
	if !w.has {
		return 0
	}
	n := min(int64(span/time.Second), int64(len(w.buckets)))
	nowSec := now.Unix()
	lo := max(w.first, nowSec-n+1)
	hi := min(w.last, nowSec)
	if hi < lo {
		return 0
	}
	var sum float64
	for s := lo; s <= hi; s++ {
		b := w.buckets[mod(s, len(w.buckets))]
		if b.sec != s {
			continue
		}
		v := b.concurrency
		if m == MetricRPS {
			v = b.requests
		}
		sum += v + b.demand
	}
	return sum / float64(hi-lo+1)
}

func mod(sec int64, n int) int {
	r := sec % int64(n)
	if r < 0 {
		r += int64(n)
	}
	return int(r)
}
