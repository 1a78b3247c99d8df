package config

import (
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	rawbufferv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

func socketMatch(name string, match map[string]any, sockName string, cfg proto.Message) *clusterv3.Cluster_TransportSocketMatch {
	m, _ := structpb.NewStruct(match)
	a, _ := anypb.New(cfg)
	return &clusterv3.Cluster_TransportSocketMatch{Name: name, Match: m,
		TransportSocket: &corev3.TransportSocket{Name: sockName, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}}
}

// The control plane's shape (internal/snapshot withMeshTLSMatches).
func weftMatches() []*clusterv3.Cluster_TransportSocketMatch {
	return []*clusterv3.Cluster_TransportSocketMatch{
		socketMatch("tlsMode-weft", map[string]any{"tlsMode": "weft"}, "envoy.transport_sockets.tls", &tlsv3.UpstreamTlsContext{}),
		socketMatch("tlsMode-disabled", map[string]any{}, "envoy.transport_sockets.raw_buffer", &rawbufferv3.RawBuffer{}),
	}
}

func meshEndpoint(addr string, port uint32, mode string) *endpointv3.LbEndpoint {
	e := &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: addr,
			PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}}}}
	if mode != "" {
		e.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"envoy.transport_socket_match": {Fields: map[string]*structpb.Value{
			"tlsMode": structpb.NewStringValue(mode)}}}}
	}
	return e
}

// Endpoints marked tlsMode: weft are MeshTLS in a cluster with the control plane's
// matches; unmarked ones, other modes, and marked ones in a cluster without the TLS match
// are not (Envoy picks the transport socket among the cluster's matches).
func TestEndpointsMarkedForMeshTLS(t *testing.T) {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: "c", Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{
		meshEndpoint("10.0.0.5", 8080, "weft"), meshEndpoint("10.0.0.6", 8080, ""), meshEndpoint("10.0.0.7", 8080, "istio")}}}}
	for _, withMatches := range []bool{true, false} {
		c := &clusterv3.Cluster{Name: "c", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}}
		if withMatches {
			c.TransportSocketMatches = weftMatches()
		}
		cfg, err := Build(Resources{resourcev3.ClusterType: {"c": c}, resourcev3.EndpointType: {"c": cla}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		got := cfg.Clusters["c"]
		if got.MeshTLSMatch != withMatches {
			t.Errorf("matches %v: MeshTLSMatch %v", withMatches, got.MeshTLSMatch)
		}
		want := map[string]bool{"10.0.0.5:8080": withMatches, "10.0.0.6:8080": false, "10.0.0.7:8080": false}
		for _, e := range got.Endpoints {
			if e.MeshTLS != want[e.Address] {
				t.Errorf("matches %v: endpoint %s MeshTLS %v, want %v", withMatches, e.Address, e.MeshTLS, want[e.Address])
			}
		}
	}
}

// Anything the sidecar would not honour is refused by name, never ignored.
func TestTransportSocketMatchesRefused(t *testing.T) {
	sni := &tlsv3.UpstreamTlsContext{Sni: "outbound_.80_._.reviews"}
	for name, tc := range map[string]struct {
		m    *clusterv3.Cluster_TransportSocketMatch
		want string
	}{
		"another tlsMode":            {socketMatch("tlsMode-istio", map[string]any{"tlsMode": "istio"}, "envoy.transport_sockets.tls", &tlsv3.UpstreamTlsContext{}), "match"},
		"two keys":                   {socketMatch("x", map[string]any{"tlsMode": "weft", "zone": "a"}, "envoy.transport_sockets.tls", &tlsv3.UpstreamTlsContext{}), "match"},
		"a TLS setting":              {socketMatch("tlsMode-weft", map[string]any{"tlsMode": "weft"}, "envoy.transport_sockets.tls", sni), "sni"},
		"TLS for the plaintext case": {socketMatch("tlsMode-disabled", map[string]any{}, "envoy.transport_sockets.tls", &tlsv3.UpstreamTlsContext{}), "RawBuffer"},
		"plaintext for mesh TLS":     {socketMatch("tlsMode-weft", map[string]any{"tlsMode": "weft"}, "envoy.transport_sockets.raw_buffer", &rawbufferv3.RawBuffer{}), "UpstreamTlsContext"},
		"no typed config": {&clusterv3.Cluster_TransportSocketMatch{Name: "tlsMode-weft", Match: &structpb.Struct{Fields: map[string]*structpb.Value{"tlsMode": structpb.NewStringValue("weft")}},
			TransportSocket: &corev3.TransportSocket{Name: "envoy.transport_sockets.tls"}}, "typed_config"},
	} {
		c := &clusterv3.Cluster{Name: "c", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			TransportSocketMatches: []*clusterv3.Cluster_TransportSocketMatch{tc.m}}
		err := Validate(resourcev3.ClusterType, c)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "transport_socket_matches[0]") {
			t.Errorf("%s: %v; want an error naming transport_socket_matches[0] and %q", name, err, tc.want)
		}
	}
	c := &clusterv3.Cluster{Name: "c", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}, TransportSocketMatches: weftMatches()}
	if err := Validate(resourcev3.ClusterType, c); err != nil {
		t.Errorf("the control plane's matches: %v", err)
	}
}
