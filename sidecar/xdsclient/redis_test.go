package xdsclient_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/weftmesh/weft/sidecar/config"
	st "github.com/weftmesh/weft/sidecar/sidecartest"
	"github.com/weftmesh/weft/sidecar/xdsclient"
)

// TestRedisListenerThatCannotBeServedKeepsItsLastGoodVersion: every resource of an update
// passes its own checks, but together they do not make a servable Redis pool (two
// endpoints claim one ring name). Only that listener is held back, on its last good
// version, as Envoy keeps a listener whose update it rejected; the rest of the update (a
// new cluster here) is applied, and the client's status says what was rejected.
func TestRedisListenerThatCannotBeServedKeepsItsLastGoodVersion(t *testing.T) {
	l := st.RedisListener(pool)
	good := st.Snapshot{Listeners: []types.Resource{l}, Clusters: []types.Resource{st.EDSCluster(pool)},
		Endpoints: []types.Resource{st.Endpoints(pool, st.Endpoint{Addr: "127.0.0.1:7001", Hostname: "cache-0"})}}

	cp := st.StartControlPlane(t)
	cp.Set(good)
	var applied atomic.Pointer[config.Config]
	ctx, cancel := context.WithCancel(context.Background())
	cl := xdsclient.New(xdsclient.Options{Address: cp.Addr(), Node: &corev3.Node{Id: st.NodeID},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), BackoffBase: 50 * time.Millisecond, BackoffMax: 500 * time.Millisecond,
		Applier: xdsclient.ApplierFunc(func(c *config.Config) { applied.Store(c) })})
	done := make(chan struct{})
	go func() { defer close(done); _ = cl.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	servers := func(c *config.Config) []string {
		var out []string
		for _, rl := range c.RedisListeners {
			for _, s := range rl.Decoded.Pools[pool].Servers {
				out = append(out, s.Name+"="+s.Addr)
			}
		}
		return out
	}
	st.Eventually(t, 10*time.Second, func() bool { c := applied.Load(); return c != nil && len(servers(c)) == 1 },
		"the first Redis pool never applied")

	bad := good
	bad.Clusters = []types.Resource{st.EDSCluster(pool), st.EDSCluster("other")}
	bad.Endpoints = []types.Resource{
		st.Endpoints(pool, st.Endpoint{Addr: "127.0.0.1:7001", Hostname: "cache-0"}, st.Endpoint{Addr: "127.0.0.1:7002", Hostname: "cache-0"}),
		st.Endpoints("other", st.Endpoint{Addr: "127.0.0.1:8080"}),
	}
	cp.Set(bad)
	st.Eventually(t, 10*time.Second, func() bool { c := applied.Load(); return c.Clusters["other"] != nil },
		"the rest of the update was held back with the Redis listener (status %+v)", cl.Status())
	c := applied.Load()
	if got := servers(c); !slices.Equal(got, []string{"cache-0=127.0.0.1:7001"}) {
		t.Errorf("redis listener serves %v, want its last good pool [cache-0=127.0.0.1:7001]", got)
	}
	if r := cl.Status().Rejected; len(r) != 1 || !strings.Contains(r[0], pool) || !strings.Contains(r[0], "twice") {
		t.Errorf("status rejected = %q, want the listener named with the reason", r)
	}

	// Fixed: the listener updates again and the status clears.
	fixed := bad
	fixed.Endpoints = []types.Resource{
		st.Endpoints(pool, st.Endpoint{Addr: "127.0.0.1:7001", Hostname: "cache-0"}, st.Endpoint{Addr: "127.0.0.1:7002", Hostname: "cache-1"}),
		st.Endpoints("other", st.Endpoint{Addr: "127.0.0.1:8080"}),
	}
	cp.Set(fixed)
	st.Eventually(t, 10*time.Second, func() bool { return len(servers(applied.Load())) == 2 }, "the fixed pool never applied")
	if r := cl.Status().Rejected; len(r) != 0 {
		t.Errorf("status still lists rejected listeners after the fix: %q", r)
	}
}

const pool = "redis|default/cache"

// TestStaticConfigWithAnUnservableRedisPoolFailsToLoad: without a control plane there is no
// last good version to keep, so the file is refused with the reason.
func TestStaticConfigWithAnUnservableRedisPoolFailsToLoad(t *testing.T) {
	c := &clusterv3.Cluster{Name: pool, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		LoadAssignment: st.Endpoints(pool, st.Endpoint{Addr: "127.0.0.1:7001", Hostname: "cache-0"}, st.Endpoint{Addr: "127.0.0.1:7002", Hostname: "cache-0"})}
	var dr discoveryv3.DiscoveryResponse
	for _, m := range []proto.Message{st.RedisListener(pool), c} {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		dr.Resources = append(dr.Resources, a)
	}
	b, err := protojson.Marshal(&dr)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "resources.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := xdsclient.LoadStatic(path); err == nil || !strings.Contains(err.Error(), pool) || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("LoadStatic = %v, want an error naming the listener and the reason", err)
	}
}
