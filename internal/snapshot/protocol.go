package snapshot

import (
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpupv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	corev1 "k8s.io/api/core/v1"

	"github.com/weftmesh/weft/contract"
)

// portProtocol is the HTTP version a Service port speaks, by Istio's rules: the port's
// appProtocol if set, else its name, `<protocol>` or `<protocol>-<suffix>`.
type portProtocol int

const (
	// protocolUnknown: neither says; the sidecar speaks upstream what the caller spoke
	// (use_downstream_protocol_config), as Istio does for ports it must sniff.
	protocolUnknown portProtocol = iota
	// protocolHTTP1: http (HTTP/1.1 upstream, Envoy's default).
	protocolHTTP1
	// protocolHTTP2: http2, grpc, h2c or kubernetes.io/h2c (HTTP/2 with prior knowledge).
	protocolHTTP2
)

// protocolOf reads a port's protocol from its appProtocol, else its name.
func protocolOf(sp corev1.ServicePort) portProtocol {
	if sp.AppProtocol != nil && *sp.AppProtocol != "" {
		return protocolNamed(strings.ToLower(*sp.AppProtocol))
	}
	name := strings.ToLower(sp.Name)
	if i := strings.IndexByte(name, '-'); i >= 0 {
		name = name[:i]
	}
	return protocolNamed(name)
}

func protocolNamed(p string) portProtocol {
	switch p {
	case "http2", "grpc", "h2c", "kubernetes.io/h2c", "grpc-web":
		return protocolHTTP2
	case "http", "kubernetes.io/http":
		return protocolHTTP1
	}
	return protocolUnknown
}

// ExplicitHTTP2 is the upstream protocol of a cluster whose Service port is HTTP/2 (grpc,
// http2, h2c by appProtocol or name): HTTP/2 connections whatever the caller spoke.
func ExplicitHTTP2() *httpupv3.HttpProtocolOptions_ExplicitHttpConfig_ {
	return &httpupv3.HttpProtocolOptions_ExplicitHttpConfig_{
		ExplicitHttpConfig: &httpupv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpupv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
				Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}}}}
}

// withPortProtocol sets the cluster's upstream HTTP version for the Service port it sends
// to: explicit HTTP/2 for an HTTP/2 port, what the caller spoke for a port of unknown
// protocol, and HTTP/1.1 (nothing, or the traffic policy's choice) for an http port. It
// keeps the common options (idle timeout, requests per connection) a traffic policy set.
func withPortProtocol(c *clusterv3.Cluster, sp corev1.ServicePort) *clusterv3.Cluster {
	proto := protocolOf(sp)
	if proto == protocolHTTP1 {
		return c
	}
	var po httpupv3.HttpProtocolOptions
	if have, ok := c.TypedExtensionProtocolOptions[contract.HTTPProtocolOptionsKey]; ok {
		if err := have.UnmarshalTo(&po); err != nil {
			panic(err) // built by serviceCluster from the same type
		}
	}
	switch proto {
	case protocolHTTP2:
		po.UpstreamProtocolOptions = ExplicitHTTP2()
	default:
		if po.UpstreamProtocolOptions != nil {
			return c // the traffic policy's choice (use_downstream_protocol_config) stands
		}
		po.UpstreamProtocolOptions = &httpupv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
			UseDownstreamProtocolConfig: &httpupv3.HttpProtocolOptions_UseDownstreamHttpConfig{
				HttpProtocolOptions:  &corev3.Http1ProtocolOptions{},
				Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
			},
		}
	}
	a, err := anypb.New(&po)
	if err != nil {
		panic(err)
	}
	if c.TypedExtensionProtocolOptions == nil {
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{}
	}
	c.TypedExtensionProtocolOptions[contract.HTTPProtocolOptionsKey] = a
	return c
}
