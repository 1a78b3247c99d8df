package snapshot

import (
	"crypto/sha256"
	"sort"
	"strconv"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	httpinspv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	origdstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	tlsinspv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	connlimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/connection_limit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/weftmesh/weft/contract"
)

// The capture listeners (issue 15, docs/xds-contract.md): Istio's virtualOutbound and
// virtualInbound. Every chain of a listener caps connections with the listener's one
// connection_limit (the sidecar counts them per listener, as Envoy's filter counts per
// filter instance).

// specialClusters are the clusters every sidecar gets for capture: the passthrough
// (ORIGINAL_DST), the black hole (STATIC, no endpoints) and the inbound passthrough.
func specialClusters() []*clusterv3.Cluster {
	orig := func(name string) *clusterv3.Cluster {
		return &clusterv3.Cluster{
			Name:                 name,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
			LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
			ConnectTimeout:       durationpb.New(serviceConnectTimeout),
		}
	}
	return []*clusterv3.Cluster{
		orig(contract.PassthroughClusterName),
		orig(contract.InboundPassthroughClusterName),
		{
			Name:                 contract.BlackHoleClusterName,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
			ConnectTimeout:       durationpb.New(serviceConnectTimeout),
		},
	}
}

func listenerFilter(name string, cfg proto.Message) *listenerv3.ListenerFilter {
	return &listenerv3.ListenerFilter{Name: name, ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(cfg)}}
}

func connLimit(name string) *listenerv3.Filter {
	limit := &connlimitv3.ConnectionLimit{StatPrefix: name, MaxConnections: wrapperspb.UInt64(maxDownstreamConns)}
	return &listenerv3.Filter{Name: contract.ConnectionLimitFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(limit)}}
}

func tcpProxyFilter(statPrefix, cluster string) *listenerv3.Filter {
	tp := &tcpproxyv3.TcpProxy{StatPrefix: statPrefix, ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
		IdleTimeout: durationpb.New(contract.TCPIdleTimeout)}
	return &listenerv3.Filter{Name: contract.TCPProxyFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(tp)}}
}

// outboundHCM is the HTTP connection manager of one outbound port: routes over RDS from
// the route configuration named by the port.
func outboundHCM(rc string) *listenerv3.Filter {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: contract.OutboundListenerName,
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource: adsSource(), RouteConfigName: rc}},
		HttpFilters: []*hcmv3.HttpFilter{
			httpFilter(contract.FaultFilterName, &faultv3.HTTPFault{}),
			httpFilter(contract.RouterFilterName, &routerv3.Router{}),
		},
	}
	setHCMLimits(hcm)
	return &listenerv3.Filter{Name: contract.HCMFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)}}
}

func portMatch(port uint32) *wrapperspb.UInt32Value { return wrapperspb.UInt32(port) }

func cidrs(prefixes []string) []*corev3.CidrRange {
	out := make([]*corev3.CidrRange, 0, len(prefixes))
	for _, p := range prefixes {
		addr, bits, _ := strings.Cut(p, "/")
		n, _ := strconv.Atoi(bits)
		out = append(out, &corev3.CidrRange{AddressPrefix: addr, PrefixLen: wrapperspb.UInt32(uint32(n))})
	}
	return out
}

// captureOutboundListener is the outbound listener on 127.0.0.1:15001: original_dst,
// http_inspector and tls_inspector; a chain for explicit-proxy connections (destination
// port 15001, RDS "80", the weft.dev/explicit-proxy mark); per port declared HTTP a chain
// to its route configuration; per TCP or undeclared Service port a chain on the
// ClusterIP (undeclared ports also an HTTP chain for sniffed HTTP); per port that has
// only a route configuration, an HTTP chain for sniffed HTTP; and the default chain to the
// passthrough cluster, or the black hole under REGISTRY_ONLY.
func captureOutboundListener(plan *outboundPlan, blocked bool) *listenerv3.Listener {
	name := contract.OutboundListenerName
	explicit := &listenerv3.FilterChain{
		Name:             "explicit-proxy",
		FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: portMatch(contract.OutboundPort)},
		Filters:          []*listenerv3.Filter{connLimit(name), outboundHCM(contract.RouteConfigName(contract.DefaultHTTPPort))},
		Metadata:         metadata(contract.ExplicitProxyMetadataKey, &structpb.Struct{}),
	}
	chains := []*listenerv3.FilterChain{explicit}
	httpApp := []string{"http/1.1", "h2c"}
	ports := make([]uint32, 0, len(plan.rcPorts))
	for p := range plan.rcPorts {
		ports = append(ports, p)
	}
	sort.Slice(ports, func(i, j int) bool { return ports[i] < ports[j] })
	for _, p := range ports {
		if p == contract.OutboundPort || (!plan.httpPorts[p] && p != contract.DefaultHTTPPort) {
			// An undeclared Service port is sniffed on its Service's addresses only (the
			// chains below); other destinations on it pass through without waiting.
			continue
		}
		rc := contract.RouteConfigName(p)
		m := &listenerv3.FilterChainMatch{DestinationPort: portMatch(p)}
		chainName := "http|" + rc
		if !plan.httpPorts[p] {
			// Port 80 carries the hosts of objects that are no Service: HTTP if it sniffs so.
			m.ApplicationProtocols = httpApp
			chainName = "sniffed-http|" + rc
		}
		chains = append(chains, &listenerv3.FilterChain{Name: chainName, FilterChainMatch: m,
			Filters: []*listenerv3.Filter{connLimit(name), outboundHCM(rc)}})
	}
	tcp := append([]tcpChain(nil), plan.chains...)
	sort.Slice(tcp, func(i, j int) bool { return tcp[i].name < tcp[j].name })
	seen := map[string]bool{}
	for _, c := range tcp {
		var fresh []string
		for _, p := range c.prefixes {
			k := strconv.Itoa(int(c.port)) + "|" + p
			if !seen[k] { // two headless Services sharing a pod address: the first keeps it
				seen[k] = true
				fresh = append(fresh, p)
			}
		}
		if len(fresh) == 0 {
			continue
		}
		chains = append(chains, &listenerv3.FilterChain{
			Name:             "tcp|" + c.name,
			FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: portMatch(c.port), PrefixRanges: cidrs(fresh)},
			Filters:          []*listenerv3.Filter{connLimit(name), tcpProxyFilter(c.cluster, c.cluster)},
		})
		if c.sniff {
			chains = append(chains, &listenerv3.FilterChain{
				Name: "sniffed-http|" + c.name,
				FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: portMatch(c.port), PrefixRanges: cidrs(fresh),
					ApplicationProtocols: httpApp},
				Filters: []*listenerv3.Filter{connLimit(name), outboundHCM(contract.RouteConfigName(c.port))},
			})
		}
	}
	// Every route configuration must be reachable by some chain (a snapshot whose listeners
	// name fewer route configurations than it holds is not consistent): a port left without
	// one gets a chain for sniffed HTTP on any address.
	referenced := map[uint32]bool{contract.DefaultHTTPPort: true}
	for _, c := range chains {
		if c.GetFilterChainMatch().GetApplicationProtocols() != nil || len(c.GetFilterChainMatch().GetPrefixRanges()) == 0 {
			referenced[c.GetFilterChainMatch().GetDestinationPort().GetValue()] = true
		}
	}
	for _, c := range tcp {
		if c.sniff {
			referenced[c.port] = true
		}
	}
	for _, p := range ports {
		if !referenced[p] && p != contract.OutboundPort {
			rc := contract.RouteConfigName(p)
			chains = append(chains, &listenerv3.FilterChain{Name: "sniffed-http|" + rc,
				FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: portMatch(p), ApplicationProtocols: httpApp},
				Filters:          []*listenerv3.Filter{connLimit(name), outboundHCM(rc)}})
		}
	}
	def := contract.PassthroughClusterName
	if blocked {
		def = contract.BlackHoleClusterName
	}
	return &listenerv3.Listener{
		Name:    name,
		Address: socketAddress(contract.OutboundAddress, contract.OutboundPort),
		ListenerFilters: []*listenerv3.ListenerFilter{
			listenerFilter(contract.OriginalDstFilterName, &origdstv3.OriginalDst{}),
			listenerFilter(contract.HTTPInspectorFilterName, &httpinspv3.HttpInspector{}),
			listenerFilter(contract.TLSInspectorFilterName, &tlsinspv3.TlsInspector{}),
		},
		FilterChains: chains,
		DefaultFilterChain: &listenerv3.FilterChain{Name: def,
			Filters: []*listenerv3.Filter{connLimit(name), tcpProxyFilter(def, def)}},
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
	}
}

// routeConfigurations are the per-port route configurations as namespace ns sees them,
// each ending with the catch-all virtual host: allow_any to the passthrough cluster, or
// block_all to the black hole under REGISTRY_ONLY (Istio's).
func (r *Result) routeConfigurations(ns string) ([]*routev3.RouteConfiguration, [32]byte) {
	ports := make([]uint32, 0, len(r.plan.rcPorts))
	for p := range r.plan.rcPorts {
		ports = append(ports, p)
	}
	sort.Slice(ports, func(i, j int) bool { return contract.RouteConfigName(ports[i]) < contract.RouteConfigName(ports[j]) })
	byRC := map[string]*routev3.RouteConfiguration{}
	var out []*routev3.RouteConfiguration
	for _, p := range ports {
		rc := &routev3.RouteConfiguration{Name: contract.RouteConfigName(p)}
		byRC[rc.Name] = rc
		out = append(out, rc)
	}
	h := sha256.New()
	for i := range r.vhosts {
		e := &r.vhosts[i]
		rc := byRC[e.rc]
		if e.ns == ns && e.local != nil {
			rc.VirtualHosts = append(rc.VirtualHosts, e.local)
			h.Write(e.lHash[:])
		} else {
			rc.VirtualHosts = append(rc.VirtualHosts, e.global)
			h.Write(e.gHash[:])
		}
	}
	catchAll := catchAllVHost(r.blocked)
	ch := hashOf(catchAll)
	for _, rc := range out {
		rc.VirtualHosts = append(rc.VirtualHosts, catchAll)
		h.Write([]byte(rc.Name))
		h.Write(ch[:])
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return out, sum
}

// catchAllVHost is Istio's allow_any (or block_all) virtual host.
func catchAllVHost(blocked bool) *routev3.VirtualHost {
	name, cluster := contract.AllowAnyRouteName, contract.PassthroughClusterName
	if blocked {
		name, cluster = contract.BlockAllRouteName, contract.BlackHoleClusterName
	}
	return &routev3.VirtualHost{Name: name, Domains: []string{"*"}, Routes: []*routev3.Route{{
		Name:  name,
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
			Timeout:          timeoutOf(0),
		}},
	}}}
}

// tcpInbound is the inbound listener of a pod whose inbound ports are captured but which
// has no app port (View.InboundCapture: a pod that serves only TCP): original_dst and only
// the default chain, every connection to 127.0.0.1:<original port> through the inbound
// passthrough cluster (shared, specialClusters), under the listener's connection limit.
// No HTTP chain: a connection to :15006 itself has nothing to reach, and the sidecar
// closes it. The sidecar terminates mesh TLS in front of the chain (docs/mtls.md, "TCP").
func tcpInbound() *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:            contract.InboundListenerName,
		Address:         socketAddress(contract.InboundAddress, contract.InboundPort),
		ListenerFilters: []*listenerv3.ListenerFilter{listenerFilter(contract.OriginalDstFilterName, &origdstv3.OriginalDst{})},
		DefaultFilterChain: &listenerv3.FilterChain{Name: contract.InboundPassthroughClusterName, Filters: []*listenerv3.Filter{
			connLimit(contract.InboundListenerName),
			tcpProxyFilter(contract.InboundPassthroughClusterName, contract.InboundPassthroughClusterName)}},
		TrafficDirection: corev3.TrafficDirection_INBOUND,
	}
}

// captureInbound wraps the inbound HTTP listener's chain for capture: connections to the
// app port (redirected by iptables) and to 15006 itself (function Services) take the HTTP
// chain; connections to any other port go to 127.0.0.1:<original port> through the inbound
// passthrough cluster.
func captureInbound(l *listenerv3.Listener, appPort uint32) *listenerv3.Listener {
	hc := l.FilterChains[0]
	mk := func(port uint32) *listenerv3.FilterChain {
		return &listenerv3.FilterChain{Name: "http|" + strconv.Itoa(int(port)),
			FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: portMatch(port)}, Filters: hc.Filters}
	}
	l.FilterChains = []*listenerv3.FilterChain{mk(contract.InboundPort)}
	if appPort != contract.InboundPort {
		l.FilterChains = append(l.FilterChains, mk(appPort))
	}
	l.ListenerFilters = []*listenerv3.ListenerFilter{listenerFilter(contract.OriginalDstFilterName, &origdstv3.OriginalDst{})}
	l.DefaultFilterChain = &listenerv3.FilterChain{Name: contract.InboundPassthroughClusterName, Filters: []*listenerv3.Filter{
		connLimit(contract.InboundListenerName),
		tcpProxyFilter(contract.InboundPassthroughClusterName, contract.InboundPassthroughClusterName)}}
	return l
}
