package config_test

import (
	"testing"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/weftmesh/weft/sidecar/config"
	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// TestBuildTakesARedisPoolWithNoEndpointsYet: a RedisProxy applied before its Redis pods are
// ready has an empty EDS assignment. The build must still succeed; a failure here held back
// every other update to the sidecar (routes, endpoints) until the pods came up.
func TestBuildTakesARedisPoolWithNoEndpointsYet(t *testing.T) {
	const pool = "redis|default/cache"
	cfg, err := config.Build(config.Resources{
		resourcev3.ListenerType: {pool: st.RedisListener(pool)},
		resourcev3.ClusterType:  {pool: st.EDSCluster(pool)},
		resourcev3.EndpointType: {pool: &endpointv3.ClusterLoadAssignment{ClusterName: pool}},
	}, nil)
	if err != nil {
		t.Fatalf("a Redis pool without endpoints failed the build: %v", err)
	}
	if len(cfg.RedisListeners) != 1 || cfg.RedisListeners[0].Err != nil || cfg.RedisListeners[0].Decoded.CatchAll != pool {
		t.Fatalf("redis listener not built: %+v", cfg.RedisListeners)
	}
}
