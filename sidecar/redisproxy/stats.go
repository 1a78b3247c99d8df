package redisproxy

import (
	"fmt"
	"io"
	"sort"
	"strconv"
	"sync/atomic"
	"time"
)

// latencyBuckets are the histogram upper bounds in seconds: from 50µs (a
// loopback round trip) to 1s (well past any sane opTimeout).
var latencyBuckets = []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}

var bucketBounds = func() []time.Duration {
	out := make([]time.Duration, len(latencyBuckets))
	for i, b := range latencyBuckets {
		out[i] = time.Duration(b * float64(time.Second))
	}
	return out
}()

// cmdStats is lock-free: one writer goroutine per client adds to it.
type cmdStats struct {
	total   atomic.Uint64
	errors  atomic.Uint64
	sumNs   atomic.Uint64
	buckets [15]atomic.Uint64 // len(latencyBuckets)+1, the last is +Inf
}

type stats struct {
	cmds           []cmdStats // by command.idx; the last slot is unknown commands
	clientsTotal   atomic.Uint64
	clientsActive  atomic.Int64
	protocolErrors atomic.Uint64
	unsupported    atomic.Uint64
	authFailures   atomic.Uint64
	// clients closed for passing their output limit
	outputLimitClosed atomic.Uint64
	// TLS handshakes that failed (authz.go)
	handshakeErrors atomic.Uint64
	authz           authzCounts
}

func newStats() *stats { return &stats{cmds: make([]cmdStats, unknownIdx+1)} }

func (s *stats) record(idx int, isErr bool, d time.Duration) {
	c := &s.cmds[idx]
	c.total.Add(1)
	if isErr {
		c.errors.Add(1)
	}
	c.sumNs.Add(uint64(d))
	i := 0
	for i < len(bucketBounds) && d > bucketBounds[i] {
		i++
	}
	c.buckets[i].Add(1)
}

// WritePrometheus writes the proxy's metrics in the Prometheus text format:
// per command counts, errors and a latency histogram; per server up/down,
// open connections, connection errors and ejections; client connections.
// Output is sorted so it is stable for tests and diffs.
func (p *Proxy) WritePrometheus(w io.Writer) error {
	s := p.stats
	var b []byte
	b = append(b, "# HELP weft_redis_commands_total Commands received, by command.\n# TYPE weft_redis_commands_total counter\n"...)
	type row struct {
		name string
		c    *cmdStats
	}
	var rows []row
	for i := range s.cmds {
		c := &s.cmds[i]
		if c.total.Load() == 0 {
			continue
		}
		name := "unknown"
		if i < unknownIdx {
			name = commandList[i].name
		}
		rows = append(rows, row{name, c})
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].name < rows[j].name })
	for _, r := range rows {
		b = fmt.Appendf(b, "weft_redis_commands_total{command=%q} %d\n", r.name, r.c.total.Load())
	}
	b = append(b, "# HELP weft_redis_command_errors_total Commands answered with an error reply, by command.\n# TYPE weft_redis_command_errors_total counter\n"...)
	for _, r := range rows {
		b = fmt.Appendf(b, "weft_redis_command_errors_total{command=%q} %d\n", r.name, r.c.errors.Load())
	}
	b = append(b, "# HELP weft_redis_command_duration_seconds Time from reading a command to writing its reply.\n# TYPE weft_redis_command_duration_seconds histogram\n"...)
	for _, r := range rows {
		var cum uint64
		for i, le := range latencyBuckets {
			cum += r.c.buckets[i].Load()
			b = fmt.Appendf(b, "weft_redis_command_duration_seconds_bucket{command=%q,le=%q} %d\n", r.name, strconv.FormatFloat(le, 'g', -1, 64), cum)
		}
		cum += r.c.buckets[len(latencyBuckets)].Load()
		b = fmt.Appendf(b, "weft_redis_command_duration_seconds_bucket{command=%q,le=\"+Inf\"} %d\n", r.name, cum)
		b = fmt.Appendf(b, "weft_redis_command_duration_seconds_sum{command=%q} %g\n", r.name, float64(r.c.sumNs.Load())/1e9)
		b = fmt.Appendf(b, "weft_redis_command_duration_seconds_count{command=%q} %d\n", r.name, cum)
	}
	p.mu.Lock()
	ups := make([]*upstream, 0, len(p.ups))
	for _, u := range p.ups {
		ups = append(ups, u)
	}
	p.mu.Unlock()
	sort.Slice(ups, func(i, j int) bool { return ups[i].key < ups[j].key })
	metric := func(name, typ, help string, val func(u *upstream) string) {
		b = fmt.Appendf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
		for _, u := range ups {
			b = fmt.Appendf(b, "%s{pool=%q,server=%q,address=%q} %s\n", name, u.poolName, u.name, u.addr, val(u))
		}
	}
	metric("weft_redis_server_up", "gauge", "1 when the server takes traffic, 0 when it is ejected or failing health checks.", func(u *upstream) string {
		if u.down.Load() {
			return "0"
		}
		return "1"
	})
	metric("weft_redis_server_connections", "gauge", "Open pipelined connections to the server.", func(u *upstream) string { return strconv.FormatInt(u.connsOpen.Load(), 10) })
	metric("weft_redis_server_connection_errors_total", "counter", "Server connections that failed (connect error, timeout, EOF).", func(u *upstream) string { return strconv.FormatUint(u.connErrors.Load(), 10) })
	metric("weft_redis_server_mtls_handshake_failures_total", "counter", "Mutual TLS handshakes to a server behind a sidecar that failed (meshtls.go).", func(u *upstream) string { return strconv.FormatUint(u.tlsFailures.Load(), 10) })
	metric("weft_redis_server_ejections_total", "counter", "Times the server was ejected by passive or active health checking.", func(u *upstream) string { return strconv.FormatUint(u.ejections.Load(), 10) })
	b = fmt.Appendf(b, "# HELP weft_redis_client_connections Open client connections.\n# TYPE weft_redis_client_connections gauge\nweft_redis_client_connections %d\n", s.clientsActive.Load())
	b = fmt.Appendf(b, "# HELP weft_redis_client_connections_total Client connections accepted.\n# TYPE weft_redis_client_connections_total counter\nweft_redis_client_connections_total %d\n", s.clientsTotal.Load())
	b = fmt.Appendf(b, "# HELP weft_redis_protocol_errors_total Client connections closed for malformed RESP.\n# TYPE weft_redis_protocol_errors_total counter\nweft_redis_protocol_errors_total %d\n", s.protocolErrors.Load())
	b = fmt.Appendf(b, "# HELP weft_redis_client_output_limit_closed_total Client connections closed because their unread replies passed the output limit.\n# TYPE weft_redis_client_output_limit_closed_total counter\nweft_redis_client_output_limit_closed_total %d\n", s.outputLimitClosed.Load())
	b = fmt.Appendf(b, "# HELP weft_redis_unsupported_commands_total Commands refused because they cannot be routed over shards.\n# TYPE weft_redis_unsupported_commands_total counter\nweft_redis_unsupported_commands_total %d\n", s.unsupported.Load())
	b = fmt.Appendf(b, "# HELP weft_redis_auth_failures_total Failed client AUTH attempts.\n# TYPE weft_redis_auth_failures_total counter\nweft_redis_auth_failures_total %d\n", s.authFailures.Load())
	b = fmt.Appendf(b, "# HELP weft_redis_tls_handshake_errors_total Client connections whose mutual-TLS handshake failed or stalled.\n# TYPE weft_redis_tls_handshake_errors_total counter\nweft_redis_tls_handshake_errors_total %d\n", s.handshakeErrors.Load())
	b = s.authz.write(b)
	_, err := w.Write(b)
	return err
}
