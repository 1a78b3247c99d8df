package httpproxy

import (
	"fmt"
	"io"
	"sort"
)

// WritePrometheus writes per-listener counters and then the upstream clusters' stats.
func (p *Proxy) WritePrometheus(w io.Writer) {
	p.mu.Lock()
	ls := make([]*Listener, 0, len(p.listeners))
	for _, l := range p.listeners {
		ls = append(ls, l)
	}
	p.mu.Unlock()
	sort.Slice(ls, func(i, j int) bool { return ls[i].Name < ls[j].Name })
	fmt.Fprintln(w, "# TYPE weft_listener_connections_total counter")
	for _, l := range ls {
		fmt.Fprintf(w, "weft_listener_connections_total{listener=%q} %d\n", l.Name, l.connections.Load())
	}
	fmt.Fprintln(w, "# TYPE weft_listener_requests_total counter")
	for _, l := range ls {
		fmt.Fprintf(w, "weft_listener_requests_total{listener=%q} %d\n", l.Name, l.requests.Load())
	}
	fmt.Fprintln(w, "# TYPE weft_listener_requests_inflight gauge")
	for _, l := range ls {
		fmt.Fprintf(w, "weft_listener_requests_inflight{listener=%q} %d\n", l.Name, l.inflight.Load())
	}
	fmt.Fprintln(w, "# HELP weft_listener_loop_handoffs_total Connections the event loop passed to the goroutine-per-connection path (h2c, chunked or large bodies, Upgrade, fault/mirror/redirect/direct routes, functions, responses it cannot frame).")
	fmt.Fprintln(w, "# TYPE weft_listener_loop_handoffs_total counter")
	for _, l := range ls {
		fmt.Fprintf(w, "weft_listener_loop_handoffs_total{listener=%q} %d\n", l.Name, l.handoffs.Load())
	}
	fmt.Fprintln(w, "# HELP weft_listener_caller_resets_total Requests cancelled upstream because the caller hung up before its answer was through.")
	fmt.Fprintln(w, "# TYPE weft_listener_caller_resets_total counter")
	for _, l := range ls {
		fmt.Fprintf(w, "weft_listener_caller_resets_total{listener=%q} %d\n", l.Name, l.callerResets.Load())
	}
	p.opts.Upstreams.WritePrometheus(w)
}
