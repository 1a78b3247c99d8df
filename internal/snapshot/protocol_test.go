package snapshot

import (
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	httpupv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	corev1 "k8s.io/api/core/v1"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
)

func TestPortProtocolFollowsIstioNaming(t *testing.T) {
	ap := func(s string) *string { return &s }
	for _, tc := range []struct {
		port corev1.ServicePort
		want portProtocol
	}{
		{corev1.ServicePort{Name: "grpc"}, protocolHTTP2},
		{corev1.ServicePort{Name: "grpc-health"}, protocolHTTP2},
		{corev1.ServicePort{Name: "http2-api"}, protocolHTTP2},
		{corev1.ServicePort{Name: "h2c-x"}, protocolHTTP2},
		{corev1.ServicePort{Name: "GRPC-Web"}, protocolHTTP2}, // grpc-web is grpc by name prefix
		{corev1.ServicePort{Name: "http"}, protocolHTTP1},
		{corev1.ServicePort{Name: "http-web"}, protocolHTTP1},
		{corev1.ServicePort{Name: "web"}, protocolUnknown},
		{corev1.ServicePort{Name: "grpcish"}, protocolUnknown},
		{corev1.ServicePort{}, protocolUnknown},
		// appProtocol wins over the name.
		{corev1.ServicePort{Name: "http", AppProtocol: ap("kubernetes.io/h2c")}, protocolHTTP2},
		{corev1.ServicePort{Name: "grpc", AppProtocol: ap("http")}, protocolHTTP1},
		{corev1.ServicePort{Name: "x", AppProtocol: ap("grpc")}, protocolHTTP2},
		{corev1.ServicePort{Name: "grpc", AppProtocol: ap("kubernetes.io/ws")}, protocolUnknown},
	} {
		if got := protocolOf(tc.port); got != tc.want {
			t.Errorf("port %q appProtocol %v: %d, want %d", tc.port.Name, tc.port.AppProtocol, got, tc.want)
		}
	}
}

func protocolOptions(t *testing.T, c *clusterv3.Cluster) *httpupv3.HttpProtocolOptions {
	a, ok := c.TypedExtensionProtocolOptions[contract.HTTPProtocolOptionsKey]
	if !ok {
		return nil
	}
	var po httpupv3.HttpProtocolOptions
	if err := a.UnmarshalTo(&po); err != nil {
		t.Fatal(err)
	}
	return &po
}

func TestWithPortProtocolKeepsTheTrafficPolicysOptions(t *testing.T) {
	idle := meshv1alpha1.Duration{}
	idle.Duration = 90e9
	n := int32(7)
	tp := &meshv1alpha1.TrafficPolicy{ConnectionPool: &meshv1alpha1.ConnectionPool{IdleTimeout: &idle, MaxRequestsPerConnection: &n}}

	c := withPortProtocol(serviceCluster("c", tp), corev1.ServicePort{Name: "grpc"})
	po := protocolOptions(t, c)
	if po.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
		t.Errorf("grpc port: %v, want explicit_http_config.http2_protocol_options", po)
	}
	if po.GetCommonHttpProtocolOptions().GetIdleTimeout().AsDuration() != 90e9 || po.GetCommonHttpProtocolOptions().GetMaxRequestsPerConnection().GetValue() != 7 {
		t.Errorf("grpc port lost the connection pool's common options: %v", po.GetCommonHttpProtocolOptions())
	}
	if err := c.Validate(); err != nil {
		t.Errorf("cluster does not validate: %v", err)
	}

	if po := protocolOptions(t, withPortProtocol(serviceCluster("c", nil), corev1.ServicePort{Name: "http"})); po != nil {
		t.Errorf("http port without a policy: %v, want no options (HTTP/1.1)", po)
	}
	po = protocolOptions(t, withPortProtocol(serviceCluster("c", nil), corev1.ServicePort{Name: "tcp-db"}))
	if po.GetUseDownstreamProtocolConfig() == nil {
		t.Errorf("port of unknown protocol: %v, want use_downstream_protocol_config", po)
	}
	po = protocolOptions(t, withPortProtocol(serviceCluster("c", nil), corev1.ServicePort{Name: "h2c"}))
	if po.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil || po.GetCommonHttpProtocolOptions() != nil {
		t.Errorf("h2c port without a policy: %v, want only http2_protocol_options", po)
	}
}
