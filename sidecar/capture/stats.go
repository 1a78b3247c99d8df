package capture

import (
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/weftmesh/weft/contract"
)

// maxSNIs bounds the distinct server names /stats keeps per cluster; more count as "other".
const maxSNIs = 256

// maxClusterStats bounds the clusters with TCP stats; beyond it (a config churning cluster
// names) new ones share "other".
const maxClusterStats = 4096

// Stats are the capture plane's counters.
type Stats struct {
	mu       sync.Mutex
	clusters map[string]*clusterStats
	noChain  atomic.Uint64
	overflow atomic.Uint64
	// Mutual TLS on captured inbound ports (meshtls.go).
	inboundHandshakes, inboundHandshakeErrors, inboundPlaintext, inboundRefused atomic.Uint64
	// inboundDirect: connections to a bound inbound listener's own port (bind.go).
	inboundDirect atomic.Uint64
}

type clusterStats struct {
	connections, connectFailures, blocked, idleTimeouts atomic.Uint64
	// mtls: connections to the cluster over mutual TLS; mtlsFailures: handshakes to a
	// meshed endpoint that failed (each a connect failure of that endpoint).
	mtls, mtlsFailures atomic.Uint64
	sent, received     atomic.Uint64
	active             atomic.Int64
	mu                 sync.Mutex
	snis               map[string]uint64
}

func newStats() *Stats { return &Stats{clusters: map[string]*clusterStats{}} }

func (s *Stats) cluster(name string) *clusterStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	cs := s.clusters[name]
	if cs == nil {
		if len(s.clusters) >= maxClusterStats {
			name = "other"
			if cs = s.clusters[name]; cs != nil {
				return cs
			}
		}
		cs = &clusterStats{snis: map[string]uint64{}}
		s.clusters[name] = cs
	}
	return cs
}

func (s *Stats) tls(cluster, sni string) {
	cs := s.cluster(cluster)
	cs.mu.Lock()
	if _, ok := cs.snis[sni]; !ok && len(cs.snis) >= maxSNIs {
		sni = "other"
	}
	cs.snis[sni]++
	cs.mu.Unlock()
}

// WritePrometheus writes the TCP proxy's counters per cluster, and the passthrough totals
// (Istio's istio_tcp_connections_opened_total with destination_service_name
// "PassthroughCluster").
func (c *Capture) WritePrometheus(w io.Writer) {
	s := c.stats
	s.mu.Lock()
	names := make([]string, 0, len(s.clusters))
	for n := range s.clusters {
		names = append(names, n)
	}
	s.mu.Unlock()
	sort.Strings(names)
	type m struct {
		name, kind, help string
		v                func(*clusterStats) int64
	}
	for _, mt := range []m{
		{"weft_tcp_connections_total", "counter", "TCP connections the capture plane proxied to the cluster.", func(c *clusterStats) int64 { return int64(c.connections.Load()) }},
		{"weft_tcp_connections_active", "gauge", "TCP connections open now.", func(c *clusterStats) int64 { return c.active.Load() }},
		{"weft_tcp_connect_failures_total", "counter", "TCP connections closed because no endpoint could be connected to.", func(c *clusterStats) int64 { return int64(c.connectFailures.Load()) }},
		{"weft_tcp_blocked_total", "counter", "TCP connections closed by REGISTRY_ONLY (BlackHoleCluster).", func(c *clusterStats) int64 { return int64(c.blocked.Load()) }},
		{"weft_tcp_idle_timeouts_total", "counter", "TCP connections closed after the idle timeout.", func(c *clusterStats) int64 { return int64(c.idleTimeouts.Load()) }},
		{"weft_tcp_mtls_connections_total", "counter", "TCP connections to the cluster over mutual TLS (meshed endpoints, ALPN weft-tcp).", func(c *clusterStats) int64 { return int64(c.mtls.Load()) }},
		{"weft_tcp_mtls_handshake_failures_total", "counter", "Mutual TLS handshakes to meshed endpoints of the cluster that failed (a connect failure; the caller's connection is closed when no endpoint is left).", func(c *clusterStats) int64 { return int64(c.mtlsFailures.Load()) }},
		{"weft_tcp_bytes_sent_total", "counter", "Bytes from the caller to the cluster.", func(c *clusterStats) int64 { return int64(c.sent.Load()) }},
		{"weft_tcp_bytes_received_total", "counter", "Bytes from the cluster to the caller.", func(c *clusterStats) int64 { return int64(c.received.Load()) }},
	} {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", mt.name, mt.help, mt.name, mt.kind)
		for _, n := range names {
			fmt.Fprintf(w, "%s{cluster=%q} %d\n", mt.name, n, mt.v(s.cluster(n)))
		}
	}
	fmt.Fprintf(w, "# HELP weft_tcp_tls_connections_total TLS connections passed through, by the SNI of their ClientHello.\n# TYPE weft_tcp_tls_connections_total counter\n")
	for _, n := range names {
		cs := s.cluster(n)
		cs.mu.Lock()
		snis := make([]string, 0, len(cs.snis))
		for k := range cs.snis {
			snis = append(snis, k)
		}
		sort.Strings(snis)
		for _, k := range snis {
			fmt.Fprintf(w, "weft_tcp_tls_connections_total{cluster=%q,sni=%q} %d\n", n, k, cs.snis[k])
		}
		cs.mu.Unlock()
	}
	p := s.cluster(contract.PassthroughClusterName)
	fmt.Fprintf(w, "# HELP weft_passthrough_connections_total TCP connections to destinations that are no Service, passed through (ALLOW_ANY).\n# TYPE weft_passthrough_connections_total counter\nweft_passthrough_connections_total %d\n", p.connections.Load())
	fmt.Fprintf(w, "# TYPE weft_passthrough_bytes_sent_total counter\nweft_passthrough_bytes_sent_total %d\n", p.sent.Load())
	fmt.Fprintf(w, "# TYPE weft_passthrough_bytes_received_total counter\nweft_passthrough_bytes_received_total %d\n", p.received.Load())
	for _, mt := range []struct {
		name, help string
		v          uint64
	}{
		{"weft_capture_inbound_tls_handshakes_total", "Captured inbound connections on ports other than the app port whose mutual TLS handshake completed.", s.inboundHandshakes.Load()},
		{"weft_capture_inbound_tls_handshake_errors_total", "Captured inbound mutual TLS handshakes refused (no or untrusted client certificate, timeout, garbage).", s.inboundHandshakeErrors.Load()},
		{"weft_capture_inbound_plaintext_total", "Captured inbound connections accepted without mesh TLS (permissive mode).", s.inboundPlaintext.Load()},
		{"weft_capture_inbound_plaintext_refused_total", "Captured inbound connections closed in strict mode: they did not open with TLS.", s.inboundRefused.Load()},
		{"weft_capture_inbound_direct_refused_total", "Connections to the inbound listener's own port on a pod with no HTTP app (only TCP ports captured): nothing serves them, closed.", s.inboundDirect.Load()},
	} {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s counter\n%s %d\n", mt.name, mt.help, mt.name, mt.name, mt.v)
	}
	fmt.Fprintf(w, "# HELP weft_capture_no_chain_total Captured connections no filter chain matched (closed).\n# TYPE weft_capture_no_chain_total counter\nweft_capture_no_chain_total %d\n", s.noChain.Load())
	fmt.Fprintf(w, "# HELP weft_capture_connections_overflow_total Captured TCP connections closed at once: the listener had max_connections open.\n# TYPE weft_capture_connections_overflow_total counter\nweft_capture_connections_overflow_total %d\n", s.overflow.Load())
}
