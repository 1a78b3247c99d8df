package async

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
)

// pubStats counts one function's publishes on this caller sidecar.
type pubStats struct {
	published, duplicates uint64
	refused               map[int]uint64 // by HTTP status
}

// publisherStats are all functions' publish counters, guarded by mu.
type publisherStats struct {
	mu  sync.Mutex
	fns map[string]*pubStats
}

func (s *publisherStats) record(fn FunctionRef, dup bool, refusedStatus int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fns == nil {
		s.fns = map[string]*pubStats{}
	}
	st := s.fns[fn.String()]
	if st == nil {
		st = &pubStats{refused: map[int]uint64{}}
		s.fns[fn.String()] = st
	}
	switch {
	case refusedStatus != 0:
		st.refused[refusedStatus]++
	case dup:
		st.duplicates++
	default:
		st.published++
	}
}

// WritePrometheus writes the caller-side async metrics, sorted by function:
// weft_async_published_total, weft_async_duplicates_total (Idempotency-Key repeats not
// queued again) and weft_async_refused_total by status (404, 413, 503).
func (p *Publisher) WritePrometheus(w io.Writer) {
	s := &p.stats
	s.mu.Lock()
	names := make([]string, 0, len(s.fns))
	for n := range s.fns {
		names = append(names, n)
	}
	slices.Sort(names)
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	defer s.mu.Unlock()
	fmt.Fprintf(bw, "# HELP weft_async_published_total Calls this sidecar queued.\n# TYPE weft_async_published_total counter\n")
	for _, n := range names {
		fmt.Fprintf(bw, "weft_async_published_total{function=%q} %d\n", n, s.fns[n].published)
	}
	fmt.Fprintf(bw, "# HELP weft_async_duplicates_total Calls not queued again because their Idempotency-Key was seen.\n# TYPE weft_async_duplicates_total counter\n")
	for _, n := range names {
		fmt.Fprintf(bw, "weft_async_duplicates_total{function=%q} %d\n", n, s.fns[n].duplicates)
	}
	fmt.Fprintf(bw, "# HELP weft_async_refused_total Async calls refused, by the HTTP status answered.\n# TYPE weft_async_refused_total counter\n")
	for _, n := range names {
		codes := make([]int, 0, len(s.fns[n].refused))
		for c := range s.fns[n].refused {
			codes = append(codes, c)
		}
		slices.Sort(codes)
		for _, c := range codes {
			fmt.Fprintf(bw, "weft_async_refused_total{function=%q,code=\"%d\"} %d\n", n, c, s.fns[n].refused[c])
		}
	}
}

// consumerStats count how this sidecar settled its function's calls.
type consumerStats struct {
	done, retried, dead, callbacksOK, callbacksFailed atomic.Uint64
	// dispatched counts calls this sidecar sent to a revision by the split; redispatched
	// those among them it moved off its own revision after that lost its traffic.
	dispatched, redispatched atomic.Uint64
}

// WritePrometheus writes the callee-side async metrics: weft_async_calls_total by outcome
// (done: the app's final answer; retried; dead: out of attempts or age), the in-flight
// gauge, and weft_async_callbacks_total by result.
func (c *Consumer) WritePrometheus(w io.Writer) {
	fn := c.opts.Function.String()
	c.mu.Lock()
	inflight := c.inflight
	c.mu.Unlock()
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	fmt.Fprintf(bw, "# HELP weft_async_calls_total Async call attempts this sidecar settled, by outcome.\n# TYPE weft_async_calls_total counter\n")
	for _, o := range []struct {
		name string
		v    *atomic.Uint64
	}{{"done", &c.stats.done}, {"retried", &c.stats.retried}, {"dead", &c.stats.dead}} {
		fmt.Fprintf(bw, "weft_async_calls_total{function=%q,outcome=%q} %d\n", fn, o.name, o.v.Load())
	}
	if c.opts.Revision != "" {
		fmt.Fprintf(bw, "# HELP weft_async_dispatched_total Queued calls this sidecar sent to a revision by the traffic split, by where they were taken from.\n# TYPE weft_async_dispatched_total counter\n")
		fmt.Fprintf(bw, "weft_async_dispatched_total{function=%q,from=\"function\"} %d\n", fn, c.stats.dispatched.Load()-c.stats.redispatched.Load())
		fmt.Fprintf(bw, "weft_async_dispatched_total{function=%q,from=\"revision\"} %d\n", fn, c.stats.redispatched.Load())
	}
	fmt.Fprintf(bw, "# HELP weft_async_inflight Async calls this sidecar is running now.\n# TYPE weft_async_inflight gauge\n")
	fmt.Fprintf(bw, "weft_async_inflight{function=%q} %d\n", fn, inflight)
	fmt.Fprintf(bw, "# HELP weft_async_callbacks_total Callback deliveries, by result.\n# TYPE weft_async_callbacks_total counter\n")
	fmt.Fprintf(bw, "weft_async_callbacks_total{function=%q,result=\"delivered\"} %d\n", fn, c.stats.callbacksOK.Load())
	fmt.Fprintf(bw, "weft_async_callbacks_total{function=%q,result=\"failed\"} %d\n", fn, c.stats.callbacksFailed.Load())
}
