// Command capture is the helper behind hack/bench-capture.sh: it writes a static sidecar
// config whose outbound listener is the capture listener an iptables REDIRECT feeds,
// shaped as internal/snapshot emits it (original_dst, http_inspector and tls_inspector
// listener filters; one filter chain per Service port; the explicit-proxy chain for
// HTTP_PROXY callers; passthrough for the rest):
//
//   - 10.96.0.10:9080 (HTTP, route configuration "9080") → the HTTP backend;
//
//   - 10.96.0.30:5201 (TCP proxy) → the iperf3 server across the veth link;
//
//   - 10.96.0.31:5201 (TCP proxy) → the iperf3 server on the namespace's loopback;
//
//   - 10.96.0.40:50051 (gRPC: route configuration "50051", HTTP/2 upstream) → the grpc-go
//     backend.
//
//     capture config -listen 127.0.0.1:15001 -http 127.0.0.1:28080 -tcp 10.99.0.2:5201 -tcp-lo 127.0.0.1:5202 -grpc 127.0.0.1:28280 > sidecar.json
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	httpinspv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	origdstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	tlsinspv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	httpupv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/snapshot"
)

func main() {
	if len(os.Args) < 2 || os.Args[1] != "config" {
		fmt.Fprintln(os.Stderr, "usage: capture config [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet("config", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:15001", "the capture listener's address (the REDIRECT's target)")
	httpBackend := fs.String("http", "127.0.0.1:28080", "endpoint of the HTTP Service reviews:9080")
	tcpBackend := fs.String("tcp", "10.99.0.2:5201", "endpoint of the TCP Service at 10.96.0.30:5201")
	tcpLo := fs.String("tcp-lo", "127.0.0.1:5202", "endpoint of the TCP Service at 10.96.0.31:5201")
	grpcBackend := fs.String("grpc", "127.0.0.1:28280", "endpoint of the gRPC Service greeter:50051 (10.96.0.40)")
	_ = fs.Parse(os.Args[2:])
	if err := write(os.Stdout, *listen, *httpBackend, *tcpBackend, *tcpLo, *grpcBackend); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func anyOf(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

func sock(hostport string) *corev3.Address {
	h, p, _ := net.SplitHostPort(hostport)
	port, _ := strconv.Atoi(p)
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: h, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)}}}}
}

func ads() *corev3.ConfigSource {
	return &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
}

func hcm(rc string) *listenerv3.Filter {
	h := &hcmv3.HttpConnectionManager{StatPrefix: "outbound_http",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: rc, ConfigSource: ads()}},
		HttpFilters:    []*hcmv3.HttpFilter{{Name: contract.RouterFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: anyOf(&routerv3.Router{})}}}}
	return &listenerv3.Filter{Name: contract.HCMFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: anyOf(h)}}
}

func tcp(cluster string) *listenerv3.Filter {
	tp := &tcpproxyv3.TcpProxy{StatPrefix: cluster, ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
		IdleTimeout: durationpb.New(time.Hour)}
	return &listenerv3.Filter{Name: contract.TCPProxyFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: anyOf(tp)}}
}

func chain(name string, port uint32, ip string, apps []string, f *listenerv3.Filter) *listenerv3.FilterChain {
	m := &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(port), ApplicationProtocols: apps}
	if ip != "" {
		m.PrefixRanges = []*corev3.CidrRange{{AddressPrefix: ip, PrefixLen: wrapperspb.UInt32(32)}}
	}
	return &listenerv3.FilterChain{Name: name, FilterChainMatch: m, Filters: []*listenerv3.Filter{f}}
}

func vhost(name string, domains []string, cluster string) *routev3.VirtualHost {
	return &routev3.VirtualHost{Name: name, Domains: domains, Routes: []*routev3.Route{{
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}}}}}
}

// h2 is the cluster option the control plane emits for a port whose appProtocol or name
// says grpc or http2: HTTP/2 upstream connections.
var h2 = map[string]*anypb.Any{contract.HTTPProtocolOptionsKey: anyOf(&httpupv3.HttpProtocolOptions{
	UpstreamProtocolOptions: snapshot.ExplicitHTTP2()})}

func write(w io.Writer, listen, httpBackend, tcpBackend, tcpLo, grpcBackend string) error {
	var res []proto.Message
	eds := func(name, addr string, opts map[string]*anypb.Any) {
		res = append(res, &clusterv3.Cluster{Name: name, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{ServiceName: name, EdsConfig: ads()},
			ConnectTimeout:   durationpb.New(2 * time.Second), TypedExtensionProtocolOptions: opts},
			&endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: sock(addr)}}}}}}})
	}
	const reviews, iperf, iperfLo = "outbound|9080||reviews.default.svc.cluster.local", "outbound|5201||iperf.default.svc.cluster.local", "outbound|5201||iperf-lo.default.svc.cluster.local"
	const greeter = "outbound|50051||greeter.default.svc.cluster.local"
	eds(reviews, httpBackend, nil)
	eds(iperf, tcpBackend, nil)
	eds(iperfLo, tcpLo, nil)
	eds(greeter, grpcBackend, h2)
	res = append(res, &clusterv3.Cluster{Name: contract.PassthroughClusterName, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy: clusterv3.Cluster_CLUSTER_PROVIDED, ConnectTimeout: durationpb.New(2 * time.Second)})
	catchAll := vhost(contract.AllowAnyRouteName, []string{"*"}, contract.PassthroughClusterName)
	var domains []string
	for _, d := range []string{"reviews", "reviews.default", "reviews.default.svc", "reviews.default.svc.cluster.local", "10.96.0.10"} {
		domains = append(domains, d, d+":9080")
	}
	var grpcDomains []string
	for _, d := range []string{"greeter", "greeter.default", "greeter.default.svc", "greeter.default.svc.cluster.local", "10.96.0.40"} {
		grpcDomains = append(grpcDomains, d, d+":50051")
	}
	res = append(res,
		&routev3.RouteConfiguration{Name: "80", VirtualHosts: []*routev3.VirtualHost{catchAll}},
		&routev3.RouteConfiguration{Name: "9080", VirtualHosts: []*routev3.VirtualHost{vhost("reviews:9080", domains, reviews), catchAll}},
		&routev3.RouteConfiguration{Name: "50051", VirtualHosts: []*routev3.VirtualHost{vhost("greeter:50051", grpcDomains, greeter), catchAll}})
	explicit := chain("explicit-proxy", contract.OutboundPort, "", nil, hcm("80"))
	explicit.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{contract.ExplicitProxyMetadataKey: {}}}
	res = append(res, &listenerv3.Listener{
		Name:    contract.OutboundListenerName,
		Address: sock(listen),
		ListenerFilters: []*listenerv3.ListenerFilter{
			{Name: contract.OriginalDstFilterName, ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: anyOf(&origdstv3.OriginalDst{})}},
			{Name: contract.HTTPInspectorFilterName, ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: anyOf(&httpinspv3.HttpInspector{})}},
			{Name: contract.TLSInspectorFilterName, ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: anyOf(&tlsinspv3.TlsInspector{})}},
		},
		FilterChains: []*listenerv3.FilterChain{
			explicit,
			chain("http|9080", 9080, "", nil, hcm("9080")),
			chain("http|50051", 50051, "", nil, hcm("50051")),
			chain("tcp|iperf", 5201, "10.96.0.30", nil, tcp(iperf)),
			chain("tcp|iperf-lo", 5201, "10.96.0.31", nil, tcp(iperfLo)),
		},
		DefaultFilterChain: &listenerv3.FilterChain{Name: contract.PassthroughClusterName, Filters: []*listenerv3.Filter{tcp(contract.PassthroughClusterName)}},
	})
	dr := &discoveryv3.DiscoveryResponse{}
	for _, m := range res {
		dr.Resources = append(dr.Resources, anyOf(m))
	}
	b, err := protojson.MarshalOptions{Multiline: true}.Marshal(dr)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
