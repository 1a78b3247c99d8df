package config

import (
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	connlimitv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/connection_limit/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func limitsListener(edit func(*hcmv3.HttpConnectionManager), connLimit proto.Message) *listenerv3.Listener {
	pack := func(m proto.Message) *listenerv3.Filter_TypedConfig {
		a, err := anypb.New(m)
		if err != nil {
			panic(err)
		}
		return &listenerv3.Filter_TypedConfig{TypedConfig: a}
	}
	router, _ := anypb.New(&routerv3.Router{})
	hcm := &hcmv3.HttpConnectionManager{StatPrefix: "l",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: "r",
			ConfigSource: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}},
		HttpFilters: []*hcmv3.HttpFilter{{Name: routerFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}}}
	if edit != nil {
		edit(hcm)
	}
	var filters []*listenerv3.Filter
	if connLimit != nil {
		filters = append(filters, &listenerv3.Filter{Name: ConnectionLimitFilterName, ConfigType: pack(connLimit)})
	}
	filters = append(filters, &listenerv3.Filter{Name: HCMFilterName, ConfigType: pack(hcm)})
	return &listenerv3.Listener{Name: "l", Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 15001}}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: filters}}}
}

func TestHTTPLimitsDecode(t *testing.T) {
	all := func(h *hcmv3.HttpConnectionManager) {
		h.MaxRequestHeadersKb = wrapperspb.UInt32(8)
		h.RequestHeadersTimeout = durationpb.New(2 * time.Second)
		h.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{MaxHeadersCount: wrapperspb.UInt32(20), IdleTimeout: durationpb.New(time.Minute)}
	}
	for _, tc := range []struct {
		name      string
		edit      func(*hcmv3.HttpConnectionManager)
		connLimit proto.Message
		want      HTTPLimits
		err       string
	}{
		{name: "absent: Envoy's header limits and Weft's timeouts and cap", want: HTTPLimits{60 << 10, 100, 10 * time.Second, 5 * time.Minute, 10_000}},
		{name: "every field", edit: all, connLimit: &connlimitv3.ConnectionLimit{StatPrefix: "l", MaxConnections: wrapperspb.UInt64(50)},
			want: HTTPLimits{8 << 10, 20, 2 * time.Second, time.Minute, 50}},
		{name: "zero timeouts turn them off", edit: func(h *hcmv3.HttpConnectionManager) {
			h.RequestHeadersTimeout = durationpb.New(0)
			h.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(0)}
		}, want: HTTPLimits{60 << 10, 100, 0, 0, 10_000}},
		{name: "headers_with_underscores_action is refused by name", edit: func(h *hcmv3.HttpConnectionManager) {
			h.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{HeadersWithUnderscoresAction: corev3.HttpProtocolOptions_REJECT_REQUEST}
		}, err: "headers_with_underscores_action"},
		{name: "stream_idle_timeout is refused by name", edit: func(h *hcmv3.HttpConnectionManager) {
			h.StreamIdleTimeout = durationpb.New(time.Second)
		}, err: "stream_idle_timeout"},
		{name: "max_request_headers_kb 0", edit: func(h *hcmv3.HttpConnectionManager) { h.MaxRequestHeadersKb = wrapperspb.UInt32(0) }, err: "max_request_headers_kb"},
		{name: "max_request_headers_kb over Envoy's 8192", edit: func(h *hcmv3.HttpConnectionManager) { h.MaxRequestHeadersKb = wrapperspb.UInt32(8193) }, err: "max_request_headers_kb"},
		{name: "connection limit delay is refused by name", connLimit: &connlimitv3.ConnectionLimit{StatPrefix: "l", MaxConnections: wrapperspb.UInt64(5),
			Delay: durationpb.New(time.Second)}, err: "delay"},
		{name: "connection limit 0", connLimit: &connlimitv3.ConnectionLimit{StatPrefix: "l", MaxConnections: wrapperspb.UInt64(0)}, err: "max_connections"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, err := DecodeListener(limitsListener(tc.edit, tc.connLimit))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one naming %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, info.Limits); d != "" {
				t.Fatalf("limits (-want +got):\n%s", d)
			}
		})
	}
}
