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
	metric := func(name, kind, help string, value func(*Listener) int64) {
		if help != "" {
			fmt.Fprintf(w, "# HELP %s %s\n", name, help)
		}
		fmt.Fprintf(w, "# TYPE %s %s\n", name, kind)
		for _, l := range ls {
			fmt.Fprintf(w, "%s{listener=%q} %d\n", name, l.Name, value(l))
		}
	}
	metric("weft_listener_connections_total", "counter", "", func(l *Listener) int64 { return int64(l.connections.Load()) })
	metric("weft_listener_requests_total", "counter", "", func(l *Listener) int64 { return int64(l.requests.Load()) })
	metric("weft_listener_requests_inflight", "gauge", "", func(l *Listener) int64 { return l.inflight.Load() })
	metric("weft_listener_loop_handoffs_total", "counter",
		"Connections the event loop passed to the goroutine-per-connection path (h2c, chunked or large bodies, Upgrade, fault/mirror/redirect/direct routes, functions, responses it cannot frame).",
		func(l *Listener) int64 { return int64(l.handoffs.Load()) })
	metric("weft_listener_loop_captured_total", "counter",
		"Captured connections (iptables) served by the event loop from their first request; the others are served a goroutine per connection.",
		func(l *Listener) int64 { return int64(l.capturedLoop.Load()) })
	metric("weft_listener_frame_relay_connections_total", "counter",
		"HTTP/2 cleartext connections served by the frame relay (one goroutine per connection and per upstream connection, none per stream); the others are served by net/http's HTTP/2 server.",
		func(l *Listener) int64 { return int64(l.frames.total.Load()) })
	metric("weft_listener_frame_relay_refused_total", "counter",
		"Requests the frame relay refused unprocessed (REFUSED_STREAM under GOAWAY) because their route needs net/http's server; the caller sends them again on a new connection.",
		func(l *Listener) int64 { return int64(l.frames.refused.Load()) })
	metric("weft_listener_loop_tls_connections_total", "counter",
		"Inbound mutual TLS connections (HTTP/1.1, TLS 1.3) served by the event loop after their handshake.",
		func(l *Listener) int64 { return int64(l.loopTLSConns.Load()) })
	metric("weft_listener_loop_tls_dials_total", "counter",
		"Mutual TLS connections the event loop opened to meshed endpoints (handshake on a goroutine, records on the loop).",
		func(l *Listener) int64 { return int64(l.loopTLSDials.Load()) })
	metric("weft_listener_loop_tls_dial_errors_total", "counter",
		"Mutual TLS dials of the event loop that failed (connect, handshake, or a peer below TLS 1.3).",
		func(l *Listener) int64 { return int64(l.loopTLSDialErrors.Load()) })
	metric("weft_listener_caller_resets_total", "counter",
		"Requests cancelled upstream because the caller hung up before its answer was through.",
		func(l *Listener) int64 { return int64(l.callerResets.Load()) })
	metric("weft_listener_app_start_timeouts_total", "counter",
		"Requests answered 503 because the app did not accept a connection within the caller's hold timeout.",
		func(l *Listener) int64 { return int64(l.appStartTimeouts.Load()) })
	metric("weft_listener_connections_active", "gauge", "Downstream connections open now.",
		func(l *Listener) int64 { return l.active.Load() })
	metric("weft_listener_connections_overflow_total", "counter",
		"Connections closed at accept because the listener had max_connections open (Envoy's downstream_cx_overflow).",
		func(l *Listener) int64 { return int64(l.overflow.Load()) })
	metric("weft_listener_accept_errors_total", "counter",
		"Failed accepts (out of descriptors or memory); each pauses accepting, 5 ms doubling to 1 s.",
		func(l *Listener) int64 { return int64(l.acceptErrors.Load()) })
	metric("weft_listener_requests_refused_total", "counter",
		"Request heads refused before routing: over the header limits (431) or framed ambiguously (400, 501).",
		func(l *Listener) int64 { return int64(l.refused.Load()) })
	metric("weft_listener_upgrades_total", "counter",
		"Upgrade requests (WebSocket and others) the upstream accepted with 101 and the sidecar tunneled.",
		func(l *Listener) int64 { return int64(l.upgrades.Load()) })
	metric("weft_listener_tunnels_active", "gauge", "Upgraded connections being tunneled now.",
		func(l *Listener) int64 { return l.tunnels.Load() })
	p.authz.WritePrometheus(w)
	p.opts.Upstreams.WritePrometheus(w)
}
