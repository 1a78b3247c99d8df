package config

import (
	"net/netip"
	"testing"
)

// Select follows Envoy's filter-chain match order: destination port (exact beats none),
// then the longest prefix containing the address (a chain without prefixes matches any
// address, after every prefix), then application protocols (sniffing); no match takes the
// default chain.
func TestCaptureSelect(t *testing.T) {
	pfx := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, p := range s {
			out = append(out, netip.MustParsePrefix(p))
		}
		return out
	}
	httpChain := func(name string) *HTTPChain { return &HTTPChain{RDSName: name} }
	tcp := func(c string) *TCPProxy { return &TCPProxy{Cluster: c} }
	var (
		explicit = &FilterChain{Name: "explicit", Port: 15001, Explicit: true, HTTP: httpChain("80")}
		http9080 = &FilterChain{Name: "http9080", Port: 9080, HTTP: httpChain("9080")}
		tcp9080  = &FilterChain{Name: "tcp9080", Port: 9080, Prefixes: pfx("10.96.0.50/32"), TCP: tcp("db")}
		wide     = &FilterChain{Name: "wide", Port: 7000, Prefixes: pfx("10.96.0.0/16"), TCP: tcp("wide")}
		narrow   = &FilterChain{Name: "narrow", Port: 7000, Prefixes: pfx("10.96.0.40/32"), TCP: tcp("narrow")}
		sniffed  = &FilterChain{Name: "sniffed", Port: 7000, Prefixes: pfx("10.96.0.40/32"), AppProtocols: []string{ProtoHTTP1}, HTTP: httpChain("7000")}
		http80   = &FilterChain{Name: "http80", Port: 80, AppProtocols: []string{ProtoHTTP1}, HTTP: httpChain("80")}
		anyPort  = &FilterChain{Name: "anyport", Prefixes: pfx("10.99.0.0/16"), TCP: tcp("anyport")}
		def      = &FilterChain{Name: "default", TCP: tcp("PassthroughCluster")}
	)
	l := &CaptureListener{Address: "127.0.0.1:15001", Sniff: true, Default: def,
		Chains: []*FilterChain{explicit, http9080, tcp9080, wide, narrow, sniffed, http80, anyPort}}
	for _, tc := range []struct {
		dst         string
		http, other *FilterChain
	}{
		{"10.96.0.10:9080", http9080, http9080}, // declared HTTP port: no sniffing
		{"10.96.0.50:9080", nil, tcp9080},       // the TCP Service's address wins on its port
		{"10.96.0.40:7000", sniffed, narrow},    // undeclared: sniff between HTTP and TCP
		{"10.96.0.41:7000", nil, wide},          // the /16 covers it
		{"10.97.0.1:7000", nil, def},            // port matches, no prefix does: default
		{"1.2.3.4:80", http80, def},             // sniffed HTTP on 80, else passthrough
		{"10.99.1.1:5432", nil, anyPort},        // no chain for the port: chains with none
		{"8.8.8.8:443", nil, def},
		{"127.0.0.1:15001", explicit, explicit},
	} {
		m := l.Select(netip.MustParseAddrPort(tc.dst))
		if m.HTTP != tc.http || m.Other != tc.other {
			name := func(c *FilterChain) string {
				if c == nil {
					return "nil"
				}
				return c.Name
			}
			t.Errorf("Select(%s) = http %s other %s, want http %s other %s", tc.dst, name(m.HTTP), name(m.Other), name(tc.http), name(tc.other))
		}
	}
	if got := l.ExplicitChain(); got != explicit {
		t.Errorf("ExplicitChain = %v", got)
	}
	for host, want := range map[string]uint32{"reviews": 80, "reviews:9090": 9090, "[::1]:8080": 8080, "[::1]": 80, "a:b": 80} {
		if got := HostPort(host); got != want {
			t.Errorf("HostPort(%q) = %d, want %d", host, got, want)
		}
	}
}
