package sidecartest

import (
	"net"
	"strconv"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	redisv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/redis_proxy/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/weftmesh/weft/contract"
)

// Names of the contract, repeated here so tests read st.OutboundListenerName.
const (
	OutboundListenerName = contract.OutboundListenerName
	InboundListenerName  = contract.InboundListenerName
	OutboundRouteName    = contract.OutboundRouteName
)

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

func socket(addr string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: addr, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

func ads() *corev3.ConfigSource {
	return &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
}

func hcmListener(name, addr string, port uint32, hcm *hcmv3.HttpConnectionManager) *listenerv3.Listener {
	return &listenerv3.Listener{Name: name, Address: socket(addr, port),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: contract.HCMFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)}}}}}}
}

func router() *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: contract.RouterFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})}}
}

// OutboundListener is the outbound_http listener on 127.0.0.1:15001 with RDS over ADS.
func OutboundListener() *listenerv3.Listener {
	return hcmListener(OutboundListenerName, contract.OutboundAddress, contract.OutboundPort, &hcmv3.HttpConnectionManager{
		StatPrefix: contract.OutboundListenerName, CodecType: hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{ConfigSource: ads(), RouteConfigName: OutboundRouteName}},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: contract.FaultFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&faultv3.HTTPFault{})}},
			router(),
		}})
}

// InboundCluster is the static inbound|<appPort> cluster to 127.0.0.1:<appPort>.
func InboundCluster(appPort uint32) *clusterv3.Cluster {
	name := contract.InboundClusterName(appPort)
	return &clusterv3.Cluster{Name: name, ConnectTimeout: durationpb.New(time.Second),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		LoadAssignment:       Endpoints(name, Endpoint{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(int(appPort)))})}
}

// InboundListener is the inbound_http listener on 0.0.0.0:15006 forwarding to the app.
func InboundListener(appPort uint32) *listenerv3.Listener {
	rc := &routev3.RouteConfiguration{Name: contract.InboundRouteName, VirtualHosts: []*routev3.VirtualHost{{
		Name: contract.InboundRouteName, Domains: []string{"*"},
		Routes: []*routev3.Route{Route(contract.InboundRouteName, Prefix("/"), To(contract.InboundClusterName(appPort)))}}}}
	return hcmListener(InboundListenerName, contract.InboundAddress, contract.InboundPort, &hcmv3.HttpConnectionManager{
		StatPrefix: contract.InboundListenerName, CodecType: hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: rc},
		HttpFilters:    []*hcmv3.HttpFilter{router()}})
}

// RedisListener is a listener named after pool, on 127.0.0.1:6379, whose redis_proxy
// filter sends every key to the cluster pool.
func RedisListener(pool string) *listenerv3.Listener {
	rp := &redisv3.RedisProxy{StatPrefix: "redis",
		Settings:     &redisv3.RedisProxy_ConnPoolSettings{OpTimeout: durationpb.New(time.Second)},
		PrefixRoutes: &redisv3.RedisProxy_PrefixRoutes{CatchAllRoute: &redisv3.RedisProxy_PrefixRoutes_Route{Cluster: pool}}}
	return &listenerv3.Listener{Name: pool, Address: socket("127.0.0.1", 6379),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: contract.RedisFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(rp)}}}}}}
}

// RouteConfig is the outbound_http route configuration.
func RouteConfig(vhs ...*routev3.VirtualHost) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{Name: OutboundRouteName, VirtualHosts: vhs}
}

// VirtualHost is `<ns>/<name>|<host>` with every domain form callers use for service
// host in namespace ns, each also with :port for ports.
func VirtualHost(owner, host, ns string, ports []int, routes ...*routev3.Route) *routev3.VirtualHost {
	var domains []string
	for _, d := range []string{host, host + "." + ns, host + "." + ns + ".svc", host + "." + ns + ".svc.cluster.local"} {
		domains = append(domains, d)
		for _, p := range ports {
			domains = append(domains, d+":"+strconv.Itoa(p))
		}
	}
	return &routev3.VirtualHost{Name: owner + "|" + host, Domains: domains, Routes: routes}
}

// OutboundClusterName is the contract's route-destination cluster name.
func OutboundClusterName(port int, subset, svc, ns, routeNS, routeName string) string {
	return contract.ServiceClusterName(int32(port), subset, svc, ns, routeNS, routeName)
}

// ClusterOption edits a cluster.
type ClusterOption func(*clusterv3.Cluster)

// EDSCluster is an EDS cluster over ADS whose service_name is its name.
func EDSCluster(name string, opts ...ClusterOption) *clusterv3.Cluster {
	c := &clusterv3.Cluster{Name: name, ConnectTimeout: durationpb.New(time.Second),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads(), ServiceName: name}}
	for _, o := range opts {
		o(c)
	}
	return c
}

// MeshTLSMatches gives a cluster the control plane's transport_socket_matches (Service
// clusters): endpoints marked MeshTLS get mutual TLS, others plaintext.
func MeshTLSMatches() ClusterOption {
	return func(c *clusterv3.Cluster) {
		tlsMatch := &structpb.Struct{Fields: map[string]*structpb.Value{contract.TLSModeKey: structpb.NewStringValue(contract.TLSModeWeft)}}
		c.TransportSocketMatches = []*clusterv3.Cluster_TransportSocketMatch{
			{Name: contract.TLSModeMatchName, Match: tlsMatch, TransportSocket: &corev3.TransportSocket{Name: "envoy.transport_sockets.tls",
				ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(&tlsv3.UpstreamTlsContext{})}}},
			{Name: contract.PlaintextMatchName, Match: &structpb.Struct{}, TransportSocket: &corev3.TransportSocket{Name: "envoy.transport_sockets.raw_buffer",
				ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(&rawbufferv3.RawBuffer{})}}},
		}
	}
}

// FunctionMeta sets weft.dev/function metadata as the control plane does for
// function|<ns>/<name> clusters.
func FunctionMeta(ns, name string, holdTimeout time.Duration, maxPending int) ClusterOption {
	return func(c *clusterv3.Cluster) {
		m := contract.FunctionMeta{Namespace: ns, Name: name, HoldTimeout: holdTimeout, MaxPending: int32(maxPending)}
		c.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{contract.FunctionMetadataKey: m.Encode()}}
	}
}

// Endpoint is one endpoint for Endpoints; Health defaults to HEALTHY.
type Endpoint struct {
	Addr     string
	Hostname string
	Health   corev3.HealthStatus
	// MeshTLS marks the endpoint tlsMode: weft (envoy.transport_socket_match), as the
	// control plane marks a pod whose sidecar terminates mesh TLS on the port.
	MeshTLS bool
}

// Endpoints is a ClusterLoadAssignment with one locality, as the control plane emits.
func Endpoints(cluster string, eps ...Endpoint) *endpointv3.ClusterLoadAssignment {
	var lbs []*endpointv3.LbEndpoint
	for _, e := range eps {
		host, port, err := net.SplitHostPort(e.Addr)
		if err != nil {
			panic(err)
		}
		p, _ := strconv.Atoi(port)
		h := e.Health
		if h == corev3.HealthStatus_UNKNOWN {
			h = corev3.HealthStatus_HEALTHY
		}
		lbe := &endpointv3.LbEndpoint{HealthStatus: h, HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
			Endpoint: &endpointv3.Endpoint{Address: socket(host, uint32(p)), Hostname: e.Hostname}}}
		if e.MeshTLS {
			lbe.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{contract.TransportSocketMatchKey: {
				Fields: map[string]*structpb.Value{contract.TLSModeKey: structpb.NewStringValue(contract.TLSModeWeft)}}}}
		}
		lbs = append(lbs, lbe)
	}
	return &endpointv3.ClusterLoadAssignment{ClusterName: cluster,
		Endpoints: []*endpointv3.LocalityLbEndpoints{{Locality: &corev3.Locality{}, LbEndpoints: lbs}}}
}
