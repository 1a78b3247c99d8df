package activator

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"slices"
	"strconv"
	"time"
)

// coldStartBuckets are the histogram bounds in seconds: sub-second for a
// warm image, up to the 300 s a slow image pull can take.
var coldStartBuckets = [...]float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300}

// stats are one function's hold counters; guarded by Activator.mu.
type stats struct {
	held, released, overflowed, timedOut, canceled uint64
	buckets                                        [len(coldStartBuckets)]uint64 // cumulative counts per bound
	count                                          uint64
	sum                                            float64
}

func (s *stats) observe(d time.Duration) {
	v := d.Seconds()
	s.count++
	s.sum += v
	for i, b := range coldStartBuckets {
		if v <= b {
			s.buckets[i]++
		}
	}
}

// WritePrometheus writes the hold metrics in the Prometheus text format, one
// series per function, sorted by function so output is stable:
// weft_activator_cold_start_seconds (histogram of how long held requests
// waited before being sent), counters of requests held, released, refused
// because the queue was full, timed out and canceled, and the pending gauge.
func (a *Activator) WritePrometheus(w io.Writer) error {
	type row struct {
		fn      string
		s       stats
		pending int
	}
	a.mu.Lock()
	var rows []row
	for _, c := range a.clusters {
		if c.ref.Name == "" {
			continue // endpoints seen, never held
		}
		rows = append(rows, row{c.ref.String(), c.stats, len(c.queue)})
	}
	a.mu.Unlock()
	slices.SortFunc(rows, func(x, y row) int { return cmp.Compare(x.fn, y.fn) })

	bw := bufio.NewWriter(w)
	const h = "weft_activator_cold_start_seconds"
	fmt.Fprintf(bw, "# HELP %s Time requests waited in this sidecar for an endpoint of a function scaling from zero.\n# TYPE %s histogram\n", h, h)
	for _, r := range rows {
		for i, b := range coldStartBuckets {
			fmt.Fprintf(bw, "%s_bucket{function=%q,le=%q} %d\n", h, r.fn, strconv.FormatFloat(b, 'g', -1, 64), r.s.buckets[i])
		}
		fmt.Fprintf(bw, "%s_bucket{function=%q,le=\"+Inf\"} %d\n", h, r.fn, r.s.count)
		fmt.Fprintf(bw, "%s_sum{function=%q} %s\n", h, r.fn, strconv.FormatFloat(r.s.sum, 'g', -1, 64))
		fmt.Fprintf(bw, "%s_count{function=%q} %d\n", h, r.fn, r.s.count)
	}
	counters := []struct {
		name, help string
		get        func(stats) uint64
	}{
		{"weft_activator_held_total", "Requests queued because the function had no endpoint or no concurrency room.", func(s stats) uint64 { return s.held }},
		{"weft_activator_released_total", "Held requests sent on once an endpoint had room.", func(s stats) uint64 { return s.released }},
		{"weft_activator_overflowed_total", "Requests refused because the function's hold queue was full.", func(s stats) uint64 { return s.overflowed }},
		{"weft_activator_timed_out_total", "Held requests refused because no endpoint came within the hold timeout.", func(s stats) uint64 { return s.timedOut }},
		{"weft_activator_canceled_total", "Held requests whose caller gave up first.", func(s stats) uint64 { return s.canceled }},
	}
	for _, m := range counters {
		fmt.Fprintf(bw, "# HELP %s %s\n# TYPE %s counter\n", m.name, m.help, m.name)
		for _, r := range rows {
			fmt.Fprintf(bw, "%s{function=%q} %d\n", m.name, r.fn, m.get(r.s))
		}
	}
	fmt.Fprintf(bw, "# HELP weft_activator_pending Requests held now.\n# TYPE weft_activator_pending gauge\n")
	for _, r := range rows {
		fmt.Fprintf(bw, "weft_activator_pending{function=%q} %d\n", r.fn, r.pending)
	}
	return bw.Flush()
}
