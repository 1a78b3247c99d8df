package config

import (
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	redisv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/redis_proxy/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestBuildTakesARedisPoolWithNoEndpointsYet: a RedisProxy applied before its Redis pods are
// ready has an empty EDS assignment. The build must still succeed; a failure here held back
// every other update to the sidecar (routes, endpoints) until the pods came up.
func TestBuildTakesARedisPoolWithNoEndpointsYet(t *testing.T) {
	const pool = "redis|default/cache"
	rp, err := anypb.New(&redisv3.RedisProxy{StatPrefix: "redis_default_cache",
		Settings:     &redisv3.RedisProxy_ConnPoolSettings{OpTimeout: durationpb.New(time.Second)},
		PrefixRoutes: &redisv3.RedisProxy_PrefixRoutes{CatchAllRoute: &redisv3.RedisProxy_PrefixRoutes_Route{Cluster: pool}}})
	if err != nil {
		t.Fatal(err)
	}
	l := &listenerv3.Listener{Name: pool,
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 6379}}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.redis_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: rp}}}}}}
	c := &clusterv3.Cluster{Name: pool, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}}
	cfg, err := Build(Resources{
		resourcev3.ListenerType: {pool: l},
		resourcev3.ClusterType:  {pool: c},
		resourcev3.EndpointType: {pool: &endpointv3.ClusterLoadAssignment{ClusterName: pool}},
	}, nil)
	if err != nil {
		t.Fatalf("a Redis pool without endpoints failed the build: %v", err)
	}
	if len(cfg.RedisListeners) != 1 || cfg.RedisListeners[0].Decoded.CatchAll != pool {
		t.Fatalf("redis listener not built: %+v", cfg.RedisListeners)
	}
}
