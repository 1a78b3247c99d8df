package capture

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
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
	connlimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/connection_limit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/utils/clock"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/httpproxy"
	st "github.com/weftmesh/weft/sidecar/sidecartest"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// The test mesh, shaped as internal/snapshot emits it: Service reviews (ClusterIP
// reviewsIP) with HTTP ports 9080 and 9090; Service redis (redisIP) with TCP port 6379;
// Service app (appIP) with the undeclared port 7000, whose sniffed HTTP goes to one
// endpoint and whose other bytes go to another (so a test can tell which chain ran).
var (
	reviewsIP = netip.MustParseAddr("10.96.0.10")
	redisIP   = netip.MustParseAddr("10.96.0.30")
	appIP     = netip.MustParseAddr("10.96.0.40")
)

// endpoints of the test mesh's clusters, by cluster name.
type mesh struct {
	reviews9080, reviews9090, redis, app7000HTTP, app7000TCP string
	blocked                                                  bool
	listenAddr                                               string // the outbound listener's address
	bindExact                                                bool   // bind listenAddr itself, not 127.0.0.1:0
	idle                                                     time.Duration
	maxConns                                                 uint64 // a connection_limit on every chain
	// meshTLS is the caller's workload identity: the redis cluster's endpoint is marked
	// tlsMode: weft (with the cluster's transport socket matches) and dialed over mutual TLS.
	meshTLS upstream.MeshTLS
}

func anyOf(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

func sockAddr(hostport string) *corev3.Address {
	h, p, _ := net.SplitHostPort(hostport)
	port, _ := strconv.Atoi(p)
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: h, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)}}}}
}

func hcm(rc string) *listenerv3.Filter {
	h := &hcmv3.HttpConnectionManager{StatPrefix: "outbound_http",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: rc,
			ConfigSource: &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}},
		HttpFilters: []*hcmv3.HttpFilter{{Name: contract.RouterFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: anyOf(&routerv3.Router{})}}}}
	return &listenerv3.Filter{Name: contract.HCMFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: anyOf(h)}}
}

var tcpIdle = time.Hour

func tcpFilter(cluster string) *listenerv3.Filter {
	tp := &tcpproxyv3.TcpProxy{StatPrefix: cluster, ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
		IdleTimeout: durationpb.New(tcpIdle)}
	return &listenerv3.Filter{Name: contract.TCPProxyFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: anyOf(tp)}}
}

func chain(name string, port uint32, ip netip.Addr, apps []string, f *listenerv3.Filter) *listenerv3.FilterChain {
	m := &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(port), ApplicationProtocols: apps}
	if ip.IsValid() {
		m.PrefixRanges = []*corev3.CidrRange{{AddressPrefix: ip.String(), PrefixLen: wrapperspb.UInt32(32)}}
	}
	return &listenerv3.FilterChain{Name: name, FilterChainMatch: m, Filters: []*listenerv3.Filter{f}}
}

func vhost(name string, domains []string, cluster string) *routev3.VirtualHost {
	return &routev3.VirtualHost{Name: name, Domains: domains, Routes: []*routev3.Route{{
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}}}}}
}

func eds(name, addr string) (*clusterv3.Cluster, *endpointv3.ClusterLoadAssignment) {
	c := &clusterv3.Cluster{Name: name, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{ServiceName: name, EdsConfig: &corev3.ConfigSource{
			ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}},
		ConnectTimeout: durationpb.New(2 * time.Second)}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
		LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: sockAddr(addr)}}}}}}}
	return c, cla
}

// resources builds the test mesh's xDS resources.
func (m mesh) resources() config.Resources {
	if m.idle > 0 {
		tcpIdle = m.idle
		defer func() { tcpIdle = time.Hour }()
	}
	res := config.Resources{resourcev3.ListenerType: {}, resourcev3.RouteType: {}, resourcev3.ClusterType: {}, resourcev3.EndpointType: {}}
	add := func(name, addr string) {
		c, cla := eds(name, addr)
		res[resourcev3.ClusterType][name] = c
		res[resourcev3.EndpointType][name] = cla
	}
	add("outbound|9080||reviews.default.svc.cluster.local", m.reviews9080)
	add("outbound|9090||reviews.default.svc.cluster.local", m.reviews9090)
	add("outbound|6379||redis.default.svc.cluster.local", m.redis)
	add("app-http", m.app7000HTTP)
	add("app-tcp", m.app7000TCP)
	if m.meshTLS != nil {
		redis := "outbound|6379||redis.default.svc.cluster.local"
		st.MeshTLSMatches()(res[resourcev3.ClusterType][redis].(*clusterv3.Cluster))
		res[resourcev3.EndpointType][redis] = st.Endpoints(redis, st.Endpoint{Addr: m.redis, MeshTLS: true})
		if m.app7000TCP != "" {
			st.MeshTLSMatches()(res[resourcev3.ClusterType]["app-tcp"].(*clusterv3.Cluster))
			res[resourcev3.EndpointType]["app-tcp"] = st.Endpoints("app-tcp", st.Endpoint{Addr: m.app7000TCP, MeshTLS: true})
		}
	}
	for _, n := range []string{contract.PassthroughClusterName} {
		res[resourcev3.ClusterType][n] = &clusterv3.Cluster{Name: n, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
			LbPolicy: clusterv3.Cluster_CLUSTER_PROVIDED, ConnectTimeout: durationpb.New(2 * time.Second)}
	}
	res[resourcev3.ClusterType][contract.BlackHoleClusterName] = &clusterv3.Cluster{Name: contract.BlackHoleClusterName,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}}
	def := contract.PassthroughClusterName
	catchAll := vhost(contract.AllowAnyRouteName, []string{"*"}, contract.PassthroughClusterName)
	if m.blocked {
		def = contract.BlackHoleClusterName
		catchAll = vhost(contract.BlockAllRouteName, []string{"*"}, contract.BlackHoleClusterName)
	}
	rc := func(port string, vhs ...*routev3.VirtualHost) {
		res[resourcev3.RouteType][port] = &routev3.RouteConfiguration{Name: port, VirtualHosts: append(vhs, catchAll)}
	}
	names := func(port string, ip netip.Addr, n string) []string {
		var out []string
		for _, d := range []string{n, n + ".default", n + ".default.svc", n + ".default.svc.cluster.local", ip.String()} {
			out = append(out, d, d+":"+port)
		}
		return out
	}
	rc("80")
	rc("9080", vhost("reviews:9080", names("9080", reviewsIP, "reviews"), "outbound|9080||reviews.default.svc.cluster.local"))
	rc("9090", vhost("reviews:9090", names("9090", reviewsIP, "reviews"), "outbound|9090||reviews.default.svc.cluster.local"))
	rc("7000", vhost("app:7000", names("7000", appIP, "app"), "app-http"))
	explicit := chain("explicit-proxy", contract.OutboundPort, netip.Addr{}, nil, hcm("80"))
	explicit.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{contract.ExplicitProxyMetadataKey: {}}}
	http := []string{"http/1.1", "h2c"}
	l := &listenerv3.Listener{
		Name:    contract.OutboundListenerName,
		Address: sockAddr(m.listenAddr),
		ListenerFilters: []*listenerv3.ListenerFilter{
			{Name: contract.OriginalDstFilterName, ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: anyOf(&origdstv3.OriginalDst{})}},
			{Name: contract.HTTPInspectorFilterName, ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: anyOf(&httpinspv3.HttpInspector{})}},
			{Name: contract.TLSInspectorFilterName, ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: anyOf(&tlsinspv3.TlsInspector{})}},
		},
		FilterChains: []*listenerv3.FilterChain{
			explicit,
			chain("http|80", 80, netip.Addr{}, http, hcm("80")),
			chain("http|9080", 9080, netip.Addr{}, nil, hcm("9080")),
			chain("http|9090", 9090, netip.Addr{}, nil, hcm("9090")),
			chain("tcp|redis", 6379, redisIP, nil, tcpFilter("outbound|6379||redis.default.svc.cluster.local")),
			chain("tcp|app", 7000, appIP, nil, tcpFilter("app-tcp")),
			chain("sniffed-http|app", 7000, appIP, http, hcm("7000")),
		},
		DefaultFilterChain: &listenerv3.FilterChain{Name: def, Filters: []*listenerv3.Filter{tcpFilter(def)}},
	}
	if m.maxConns > 0 {
		lim := &listenerv3.Filter{Name: contract.ConnectionLimitFilterName, ConfigType: &listenerv3.Filter_TypedConfig{
			TypedConfig: anyOf(&connlimitv3.ConnectionLimit{StatPrefix: "outbound", MaxConnections: wrapperspb.UInt64(m.maxConns)})}}
		for _, c := range append(l.FilterChains, l.DefaultFilterChain) {
			c.Filters = append([]*listenerv3.Filter{lim}, c.Filters...)
		}
	}
	res[resourcev3.ListenerType][l.Name] = l
	return res
}

// sidecar is a running HTTP plane and capture plane serving a test mesh.
type sidecar struct {
	px   *httpproxy.Proxy
	capt *Capture
	addr string // the outbound listener, for explicit-proxy callers
}

type ref struct{ p *httpproxy.Proxy }

func (r *ref) ServeCaptured(l string, nc net.Conn, in []byte) bool {
	return r.p.ServeCaptured(l, nc, in)
}

func startSidecar(t testing.TB, m mesh, goroutines bool, sniff time.Duration) *sidecar {
	t.Helper()
	if m.listenAddr == "" {
		m.listenAddr = "127.0.0.1:15001"
	}
	cfg, err := config.Build(m.resources(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ups := upstream.NewManager(ctx, clock.RealClock{})
	if m.meshTLS != nil {
		ups.SetMeshTLS(m.meshTLS)
	}
	r := &ref{}
	capt := New(Options{Upstreams: ups, HTTP: r, SniffTimeout: sniff, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	listen := map[string]string{contract.OutboundListenerName: "127.0.0.1:0"}
	if m.bindExact {
		listen = nil
	}
	px := httpproxy.New(httpproxy.Options{Upstreams: ups, Diverter: capt, GoroutinePerConnection: goroutines,
		ListenAddress: listen, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	r.p = px
	capt.Apply(cfg)
	if err := px.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = px.Shutdown(sctx)
		cancel()
	})
	return &sidecar{px: px, capt: capt, addr: px.Listener(contract.OutboundListenerName).Addr().String()}
}

// front stands in for iptables: every connection to the returned address is handed to
// the capture plane as if it had been redirected from dst.
func (s *sidecar) front(t testing.TB, dst string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	d := netip.MustParseAddrPort(dst)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.capt.ServeConn(contract.OutboundListenerName, c, d)
		}
	}()
	return ln.Addr().String()
}

// named is an HTTP server that answers with its name and the request's Host.
func named(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s host=%s", name, r.Host)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func body(resp *http.Response, err error) (int, string) {
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func stats(s *sidecar) string {
	var b strings.Builder
	s.capt.WritePrometheus(&b)
	s.px.WriteCaptureStats(&b)
	return b.String()
}
