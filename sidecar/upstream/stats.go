package upstream

import (
	"fmt"
	"io"
	"strconv"
	"sync/atomic"
	"time"
)

// latencyBuckets are the histogram's upper bounds in seconds.
var latencyBuckets = [...]float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// Stats are a cluster's counters. Fields are atomics so the hot path never locks.
type Stats struct {
	ByClass                                            [6]atomic.Uint64 // index = status/100; 0 = no response
	Retries, Ejections                                 atomic.Uint64
	OverflowRequests, OverflowPending, OverflowRetries atomic.Uint64
	// ConnOverflow counts requests that found max_connections reached and had to wait or
	// go elsewhere, and HTTP/2 connections opened past it (Envoy's upstream_cx_overflow).
	ConnOverflow     atomic.Uint64
	latency          [len(latencyBuckets) + 1]atomic.Uint64
	latencySumMicros atomic.Uint64
	// GRPC counts gRPC responses by grpc-status: index = code 0–16, 17 = a code outside
	// gRPC's range or unreadable.
	GRPC [18]atomic.Uint64
}

// ObserveGRPC records one gRPC response's grpc-status (code < 0: none could be read).
func (s *Stats) ObserveGRPC(code int) {
	if code < 0 || code > 16 {
		code = 17
	}
	s.GRPC[code].Add(1)
}

// Observe records one completed request.
func (s *Stats) Observe(status int, d time.Duration) {
	cls := status / 100
	if cls < 0 || cls > 5 {
		cls = 0
	}
	s.ByClass[cls].Add(1)
	sec := d.Seconds()
	i := 0
	for i < len(latencyBuckets) && sec > latencyBuckets[i] {
		i++
	}
	s.latency[i].Add(1)
	s.latencySumMicros.Add(uint64(d.Microseconds()))
}

// WritePrometheus writes every cluster's stats in the Prometheus text format.
func (m *Manager) WritePrometheus(w io.Writer) {
	names := m.Names()
	fmt.Fprintln(w, "# TYPE weft_cluster_requests_total counter")
	for _, n := range names {
		c := m.Get(n)
		for cls := range c.Stats.ByClass {
			label := strconv.Itoa(cls) + "xx"
			if cls == 0 {
				label = "none"
			}
			fmt.Fprintf(w, "weft_cluster_requests_total{cluster=%q,class=%q} %d\n", n, label, c.Stats.ByClass[cls].Load())
		}
	}
	counter := func(metric string, get func(*Stats) uint64) {
		fmt.Fprintf(w, "# TYPE %s counter\n", metric)
		for _, n := range names {
			fmt.Fprintf(w, "%s{cluster=%q} %d\n", metric, n, get(&m.Get(n).Stats))
		}
	}
	counter("weft_cluster_retries_total", func(s *Stats) uint64 { return s.Retries.Load() })
	counter("weft_cluster_ejections_total", func(s *Stats) uint64 { return s.Ejections.Load() })
	fmt.Fprintln(w, "# TYPE weft_cluster_overflow_total counter")
	for _, n := range names {
		s := &m.Get(n).Stats
		fmt.Fprintf(w, "weft_cluster_overflow_total{cluster=%q,breaker=\"requests\"} %d\n", n, s.OverflowRequests.Load())
		fmt.Fprintf(w, "weft_cluster_overflow_total{cluster=%q,breaker=\"pending\"} %d\n", n, s.OverflowPending.Load())
		fmt.Fprintf(w, "weft_cluster_overflow_total{cluster=%q,breaker=\"retries\"} %d\n", n, s.OverflowRetries.Load())
		fmt.Fprintf(w, "weft_cluster_overflow_total{cluster=%q,breaker=\"connections\"} %d\n", n, s.ConnOverflow.Load())
	}
	// Each family's samples stay together, as the text format requires.
	fmt.Fprintln(w, "# TYPE weft_cluster_upstream_connections gauge")
	for _, n := range names {
		open, idle, _ := m.Get(n).ConnStats()
		fmt.Fprintf(w, "weft_cluster_upstream_connections{cluster=%q,state=\"open\"} %d\n", n, open)
		fmt.Fprintf(w, "weft_cluster_upstream_connections{cluster=%q,state=\"idle\"} %d\n", n, idle)
	}
	fmt.Fprintln(w, "# TYPE weft_cluster_pending_requests gauge")
	for _, n := range names {
		_, _, pending := m.Get(n).ConnStats()
		fmt.Fprintf(w, "weft_cluster_pending_requests{cluster=%q} %d\n", n, pending)
	}
	// Only the codes seen: one series per code ever answered, at most 18 per cluster.
	fmt.Fprintln(w, "# TYPE weft_cluster_grpc_responses_total counter")
	for _, n := range names {
		s := &m.Get(n).Stats
		for code := range s.GRPC {
			if v := s.GRPC[code].Load(); v > 0 {
				label := strconv.Itoa(code)
				if code == 17 {
					label = "other"
				}
				fmt.Fprintf(w, "weft_cluster_grpc_responses_total{cluster=%q,grpc_status=%q} %d\n", n, label, v)
			}
		}
	}
	fmt.Fprintln(w, "# TYPE weft_cluster_endpoints gauge")
	for _, n := range names {
		c := m.Get(n)
		avail := 0
		for _, h := range c.Hosts() {
			if h.Available() {
				avail++
			}
		}
		fmt.Fprintf(w, "weft_cluster_endpoints{cluster=%q,state=\"available\"} %d\n", n, avail)
		fmt.Fprintf(w, "weft_cluster_endpoints{cluster=%q,state=\"total\"} %d\n", n, len(c.Hosts()))
	}
	fmt.Fprintln(w, "# TYPE weft_cluster_request_duration_seconds histogram")
	for _, n := range names {
		s := &m.Get(n).Stats
		var cum uint64
		for i, b := range latencyBuckets {
			cum += s.latency[i].Load()
			fmt.Fprintf(w, "weft_cluster_request_duration_seconds_bucket{cluster=%q,le=\"%g\"} %d\n", n, b, cum)
		}
		cum += s.latency[len(latencyBuckets)].Load()
		fmt.Fprintf(w, "weft_cluster_request_duration_seconds_bucket{cluster=%q,le=\"+Inf\"} %d\n", n, cum)
		fmt.Fprintf(w, "weft_cluster_request_duration_seconds_sum{cluster=%q} %g\n", n, float64(s.latencySumMicros.Load())/1e6)
		fmt.Fprintf(w, "weft_cluster_request_duration_seconds_count{cluster=%q} %d\n", n, cum)
	}
}
