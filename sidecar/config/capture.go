package config

import (
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	httpinspv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	origdstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	tlsinspv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	connlimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/connection_limit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"

	"github.com/weftmesh/weft/contract"
)

// A capture listener (issue 15) is a listener with envoy.filters.listener.original_dst:
// every connection is matched, by its original destination (SO_ORIGINAL_DST), against the
// listener's filter chains, as Envoy does (listener_components.proto: destination port,
// then destination IP, then application protocol; the most specific match wins at each
// step). A chain is either an HTTP connection manager (served by the HTTP machinery with
// the chain's route table) or a tcp_proxy.

// CaptureListener is a decoded capture listener.
type CaptureListener struct {
	Name    string
	Address string // host:port
	// Inbound is set for the inbound listener (traffic_direction INBOUND): its passthrough
	// goes to 127.0.0.1:<original port>.
	Inbound bool
	// Sniff is set when http_inspector is among the listener filters: chains with
	// application_protocols are chosen by the connection's first bytes.
	Sniff bool
	// TLSInspector is set when tls_inspector is among the listener filters: the SNI of a
	// TLS ClientHello is read (for stats) before the chain runs.
	TLSInspector bool
	// Chains in config order, and the default chain (nil: connections no chain matches are
	// closed, as Envoy does).
	Chains  []*FilterChain
	Default *FilterChain
	// Limits of the listener: the connection cap of its chains' connection_limit filters
	// and the HTTP limits of its explicit-proxy chain.
	Limits HTTPLimits
	// Bind is set for an inbound listener with no HTTP chain for its own port (a pod that
	// serves only TCP; docs/mtls.md, "TCP"): no HTTP listener is bound at Address, so the
	// capture plane binds it itself and closes connections that were not redirected.
	Bind bool
}

// FilterChain is one decoded filter chain.
type FilterChain struct {
	Name string
	// Port is filter_chain_match.destination_port; 0 matches any port.
	Port uint32
	// Prefixes are filter_chain_match.prefix_ranges; none matches any address.
	Prefixes []netip.Prefix
	// AppProtocols are filter_chain_match.application_protocols ("http/1.1", "h2c"): the
	// chain applies only to a connection the HTTP inspector found to speak one of them.
	AppProtocols []string
	// Explicit marks the chain of connections that were not redirected (HTTP_PROXY
	// callers): each request picks its route table by its Host's port.
	Explicit bool
	// HTTP is set on HTTP chains: the route configuration's name and, once built, the
	// (unbound) HTTP listener that serves this chain's connections.
	HTTP *HTTPChain
	// TCP is set on tcp_proxy chains.
	TCP *TCPProxy
}

// HTTPChain is an HTTP connection manager chain.
type HTTPChain struct {
	// RDSName names the route configuration; empty when the routes are Inline.
	RDSName    string
	Inline     *RouteTable
	StatPrefix string
	Limits     HTTPLimits
	Authz      *Authz // the HCM's RBAC filters; nil: none
	// Listener names the HTTPListener that serves the chain's connections (set by Build):
	// the capture listener's own for its explicit-proxy chain (and, on the inbound
	// listener, the chains that share its routes), else an unbound one
	// (ChainListenerName) the capture listener hands connections to.
	Listener string
}

// TCPProxy is a decoded envoy.filters.network.tcp_proxy.
type TCPProxy struct {
	StatPrefix string
	Cluster    string
	// IdleTimeout closes a connection with no bytes either way for this long; 0: never.
	IdleTimeout time.Duration
}

// The application protocols http_inspector reports.
const (
	ProtoHTTP1 = "http/1.1"
	ProtoH2C   = "h2c"
)

// isCapture reports whether l must be decoded as a capture listener.
func isCapture(l *listenerv3.Listener) bool {
	return len(l.GetListenerFilters()) > 0 || l.GetDefaultFilterChain() != nil || len(l.GetFilterChains()) > 1 ||
		(len(l.GetFilterChains()) == 1 && l.GetFilterChains()[0].GetFilterChainMatch() != nil)
}

func decodeCaptureListener(l *listenerv3.Listener, info *ListenerInfo, where string) error {
	cl := &CaptureListener{Name: l.GetName(), Address: info.Address, Inbound: l.GetTrafficDirection() == corev3.TrafficDirection_INBOUND, Limits: DefaultHTTPLimits()}
	hasOrigDst := false
	for i, f := range l.GetListenerFilters() {
		fw := fmt.Sprintf("%s listener filter %d (%s)", where, i, f.GetName())
		if err := onlyFields(f, fw, "name", "typed_config"); err != nil {
			return err
		}
		var m proto.Message
		switch f.GetName() {
		case contract.OriginalDstFilterName:
			hasOrigDst, m = true, &origdstv3.OriginalDst{}
		case contract.HTTPInspectorFilterName:
			cl.Sniff, m = true, &httpinspv3.HttpInspector{}
		case contract.TLSInspectorFilterName:
			cl.TLSInspector, m = true, &tlsinspv3.TlsInspector{}
		default:
			return fmt.Errorf("%s: is not supported; use %s, %s or %s", fw, contract.OriginalDstFilterName,
				contract.HTTPInspectorFilterName, contract.TLSInspectorFilterName)
		}
		if tc := f.GetTypedConfig(); tc != nil {
			if err := tc.UnmarshalTo(m); err != nil {
				return fmt.Errorf("%s: %w", fw, err)
			}
			if err := onlyFields(m, fw); err != nil {
				return err
			}
		}
	}
	if !hasOrigDst {
		return fmt.Errorf("%s: a listener with several filter chains or a filter_chain_match needs the %s listener filter", where, contract.OriginalDstFilterName)
	}
	maxConns := 0
	for i, fc := range l.GetFilterChains() {
		c, n, err := decodeFilterChain(fc, fmt.Sprintf("%s filter chain %d (%s)", where, i, fc.GetName()), cl)
		if err != nil {
			return err
		}
		maxConns = max(maxConns, n)
		cl.Chains = append(cl.Chains, c)
	}
	if fc := l.GetDefaultFilterChain(); fc != nil {
		if fc.GetFilterChainMatch() != nil {
			return fmt.Errorf("%s default_filter_chain: filter_chain_match is not allowed", where)
		}
		c, n, err := decodeFilterChain(fc, where+" default_filter_chain", cl)
		if err != nil {
			return err
		}
		maxConns = max(maxConns, n)
		cl.Default = c
	}
	if err := checkChainsDistinct(cl.Chains, where); err != nil {
		return err
	}
	if maxConns > 0 {
		cl.Limits.MaxConnections = maxConns
	}
	info.Capture = cl
	return nil
}

// decodeFilterChain decodes one chain; n is its connection_limit's max_connections (0: none).
func decodeFilterChain(fc *listenerv3.FilterChain, where string, cl *CaptureListener) (_ *FilterChain, n int, _ error) {
	if err := onlyFields(fc, where, "filters", "name", "filter_chain_match", "metadata"); err != nil {
		return nil, 0, err
	}
	c := &FilterChain{Name: fc.GetName()}
	if md := fc.GetMetadata(); md != nil {
		if err := onlyFields(md, where+" metadata", "filter_metadata"); err != nil {
			return nil, 0, err
		}
		for k, v := range md.GetFilterMetadata() {
			if k != contract.ExplicitProxyMetadataKey {
				return nil, 0, fmt.Errorf("%s: metadata key %q is not supported", where, k)
			}
			if len(v.GetFields()) > 0 {
				return nil, 0, fmt.Errorf("%s: metadata %s must be empty", where, k)
			}
			c.Explicit = true
		}
	}
	if m := fc.GetFilterChainMatch(); m != nil {
		if err := onlyFields(m, where+" filter_chain_match", "destination_port", "prefix_ranges", "application_protocols"); err != nil {
			return nil, 0, err
		}
		c.Port = m.GetDestinationPort().GetValue()
		for _, r := range m.GetPrefixRanges() {
			if err := onlyFields(r, where+" prefix_ranges", "address_prefix", "prefix_len"); err != nil {
				return nil, 0, err
			}
			a, err := netip.ParseAddr(r.GetAddressPrefix())
			if err != nil {
				return nil, 0, fmt.Errorf("%s: prefix_ranges address %q: %w", where, r.GetAddressPrefix(), err)
			}
			bits := a.BitLen()
			if pl := r.GetPrefixLen(); pl != nil {
				bits = int(pl.GetValue())
			}
			p, err := a.Prefix(bits)
			if err != nil {
				return nil, 0, fmt.Errorf("%s: prefix_ranges %s/%d: %w", where, a, bits, err)
			}
			c.Prefixes = append(c.Prefixes, p)
		}
		for _, ap := range m.GetApplicationProtocols() {
			if ap != ProtoHTTP1 && ap != ProtoH2C {
				return nil, 0, fmt.Errorf("%s: application_protocols %q is not supported; use %q or %q", where, ap, ProtoHTTP1, ProtoH2C)
			}
			c.AppProtocols = append(c.AppProtocols, ap)
		}
		if len(c.AppProtocols) > 0 && !cl.Sniff {
			return nil, 0, fmt.Errorf("%s: application_protocols needs the %s listener filter", where, contract.HTTPInspectorFilterName)
		}
	}
	filters := fc.GetFilters()
	if len(filters) == 2 && filters[0].GetName() == ConnectionLimitFilterName {
		var lim connlimitv3.ConnectionLimit
		if err := filters[0].GetTypedConfig().UnmarshalTo(&lim); err != nil {
			return nil, 0, fmt.Errorf("%s: decoding connection_limit: %w", where, err)
		}
		l := DefaultHTTPLimits()
		if err := decodeConnectionLimit(&lim, &l, where); err != nil {
			return nil, 0, err
		}
		n = l.MaxConnections
		filters = filters[1:]
	}
	if len(filters) != 1 {
		return nil, 0, fmt.Errorf("%s: has %d filters; one network filter (%s or %s) is supported, %s may come first",
			where, len(fc.GetFilters()), contract.HCMFilterName, contract.TCPProxyFilterName, ConnectionLimitFilterName)
	}
	f := filters[0]
	switch f.GetName() {
	case contract.HCMFilterName:
		var hcm hcmv3.HttpConnectionManager
		if err := f.GetTypedConfig().UnmarshalTo(&hcm); err != nil {
			return nil, 0, fmt.Errorf("%s: decoding http_connection_manager: %w", where, err)
		}
		hi := &ListenerInfo{Limits: DefaultHTTPLimits()}
		if n > 0 {
			hi.Limits.MaxConnections = n
		}
		if err := decodeHCM(&hcm, hi, where); err != nil {
			return nil, 0, err
		}
		c.HTTP = &HTTPChain{RDSName: hi.RDSName, Inline: hi.Inline, StatPrefix: hi.StatPrefix, Limits: hi.Limits, Authz: hi.Authz}
		if c.Explicit || cl.Limits == DefaultHTTPLimits() {
			cl.Limits = hi.Limits
		}
	case contract.TCPProxyFilterName:
		if c.Explicit {
			return nil, 0, fmt.Errorf("%s: the explicit-proxy chain must be an %s", where, contract.HCMFilterName)
		}
		var tp tcpproxyv3.TcpProxy
		if err := f.GetTypedConfig().UnmarshalTo(&tp); err != nil {
			return nil, 0, fmt.Errorf("%s: decoding tcp_proxy: %w", where, err)
		}
		if err := onlyFields(&tp, where+" tcp_proxy", "stat_prefix", "cluster", "idle_timeout"); err != nil {
			return nil, 0, err
		}
		if tp.GetCluster() == "" {
			return nil, 0, fmt.Errorf("%s: tcp_proxy needs cluster", where)
		}
		c.TCP = &TCPProxy{StatPrefix: tp.GetStatPrefix(), Cluster: tp.GetCluster(), IdleTimeout: time.Hour}
		if tp.IdleTimeout != nil {
			c.TCP.IdleTimeout = dur(tp.GetIdleTimeout())
		}
	default:
		return nil, 0, fmt.Errorf("%s: network filter %q is not supported in a capture listener; use %s or %s",
			where, f.GetName(), contract.HCMFilterName, contract.TCPProxyFilterName)
	}
	return c, n, nil
}

// checkChainsDistinct refuses two chains with the same match, as Envoy does ("multiple
// filter chains with the same matching rules").
func checkChainsDistinct(cs []*FilterChain, where string) error {
	seen := map[string]string{}
	for _, c := range cs {
		ps := make([]string, 0, len(c.Prefixes))
		for _, p := range c.Prefixes {
			ps = append(ps, p.String())
		}
		sort.Strings(ps)
		aps := append([]string(nil), c.AppProtocols...)
		sort.Strings(aps)
		k := fmt.Sprintf("%d|%v|%v", c.Port, ps, aps)
		if other, dup := seen[k]; dup {
			return fmt.Errorf("%s: filter chains %q and %q have the same filter_chain_match", where, other, c.Name)
		}
		seen[k] = c.Name
	}
	return nil
}

// ChainMatch is the result of selecting a chain for a destination before sniffing: the chain
// to use when the connection does not speak HTTP (Other, may be nil), and the chain for
// HTTP/1 or h2c (HTTP, nil when no chain of the matched group asks for it). When HTTP is
// set and differs from Other, the first bytes decide (Sniff).
type ChainMatch struct {
	HTTP, Other *FilterChain
}

// Sniff reports whether the connection's first bytes must be read to pick the chain.
func (m ChainMatch) Sniff() bool { return m.HTTP != nil && m.HTTP != m.Other }

// Select picks the chains for a connection to dst, in Envoy's order: chains whose
// destination_port equals dst's port before those with none, then the longest prefix
// containing dst's address before chains with no prefix, then application_protocols. A
// connection no chain matches gets the default chain.
func (l *CaptureListener) Select(dst netip.AddrPort) ChainMatch {
	addr := dst.Addr().Unmap()
	pick := func(port uint32) (ChainMatch, bool) {
		var group []*FilterChain
		best := -1
		for _, c := range l.Chains {
			if c.Port != port {
				continue
			}
			bits := -1 // matches any address: less specific than every prefix
			if len(c.Prefixes) > 0 {
				bits = -2
				for _, p := range c.Prefixes {
					if p.Contains(addr) && p.Bits() > bits {
						bits = p.Bits()
					}
				}
				if bits == -2 {
					continue
				}
			}
			switch {
			case bits > best:
				best, group = bits, []*FilterChain{c}
			case bits == best:
				group = append(group, c)
			}
		}
		if len(group) == 0 {
			return ChainMatch{}, false
		}
		var m ChainMatch
		for _, c := range group {
			if len(c.AppProtocols) > 0 {
				if m.HTTP == nil {
					m.HTTP = c
				}
			} else if m.Other == nil {
				m.Other = c
			}
		}
		if m.Other == nil {
			m.Other = l.Default
		}
		if m.HTTP == nil && m.Other != nil && m.Other.HTTP != nil {
			m.HTTP = m.Other
		}
		return m, true
	}
	if m, ok := pick(uint32(dst.Port())); ok {
		return m
	}
	if m, ok := pick(0); ok {
		return m
	}
	m := ChainMatch{Other: l.Default}
	if l.Default != nil && l.Default.HTTP != nil {
		m.HTTP = l.Default
	}
	return m
}

// ExplicitChain is the chain of connections that were not redirected: the one marked
// explicit, else the one whose port is the listener's own.
func (l *CaptureListener) ExplicitChain() *FilterChain {
	for _, c := range l.Chains {
		if c.Explicit {
			return c
		}
	}
	_, p, _ := net.SplitHostPort(l.Address)
	port, _ := strconv.Atoi(p)
	return l.Select(netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(port))).Other
}
