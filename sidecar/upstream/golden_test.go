package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	// The control plane's retry policies name this predicate (sidecar/xdsclient links it).
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	testclock "k8s.io/utils/clock/testing"
	"sigs.k8s.io/yaml"

	"github.com/weftmesh/weft/sidecar/config"
)

var update = flag.Bool("update", false, "rewrite testdata/*.out.yaml from the current cluster state")

// goldenInputs are the decoder's golden inputs whose clusters this package's golden test
// builds state from: xDS in, decoded by sidecar/config, applied here.
var goldenInputs = []string{"cluster-policies", "mesh-lb-variants", "mesh-route-all-fields", "mesh-function"}

// ringProbes is how many evenly spaced hashes the golden files pick a ring-hash host for:
// enough to show every host's share of the ring moving when placement changes.
const ringProbes = 16

// TestClusterStateGolden applies each decoded config to a Manager and compares the state
// it builds with testdata/<case>.out.yaml: per cluster, its hosts (weight, EDS health,
// whether they take traffic) and, for ring hash, each host's share of the ring and the
// host a fixed set of hashes picks, which pins the placement (xxHash64 of "address_i", as
// Envoy's ring hash). go test ./sidecar/upstream -run TestClusterStateGolden -update
// rewrites the files; after a decoder change, update sidecar/config's goldens first.
func TestClusterStateGolden(t *testing.T) {
	for _, name := range goldenInputs {
		t.Run(name, func(t *testing.T) {
			cfg := buildGolden(t, filepath.Join("..", "config", "testdata", name+".in.json"))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			m := NewManager(ctx, testclock.NewFakeClock(time.Unix(0, 0)))
			m.Update(withoutActiveHealthChecks(cfg.Clusters))
			got, err := yaml.Marshal(dumpState(m))
			if err != nil {
				t.Fatal(err)
			}
			outPath := filepath.Join("testdata", name+".out.yaml")
			if *update {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(outPath, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(outPath)
			if err != nil {
				t.Fatalf("%v (run go test ./sidecar/upstream -run TestClusterStateGolden -update)", err)
			}
			var wantV, gotV any
			if err := yaml.Unmarshal(want, &wantV); err != nil {
				t.Fatal(err)
			}
			if err := yaml.Unmarshal(got, &gotV); err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(wantV, gotV); d != "" {
				t.Errorf("%s differs (-want +got); if intended, run go test ./sidecar/upstream -run TestClusterStateGolden -update\n%s", outPath, d)
			}
		})
	}
}

// withoutActiveHealthChecks copies clusters without their health checks: active health
// checking probes every host over the network as soon as it starts, which no golden file
// can pin (it has tests of its own with real servers).
func withoutActiveHealthChecks(in map[string]*config.Cluster) map[string]*config.Cluster {
	out := make(map[string]*config.Cluster, len(in))
	for n, c := range in {
		cp := *c
		cp.HealthCheck = nil
		out[n] = &cp
	}
	return out
}

// buildGolden decodes a sidecar/config golden input into a complete config.
func buildGolden(t *testing.T, path string) *config.Config {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var file map[string][]json.RawMessage
	if err := json.Unmarshal(data, &file); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	kinds := []struct {
		key, url string
		new      func() proto.Message
	}{
		{"listeners", resourcev3.ListenerType, func() proto.Message { return &listenerv3.Listener{} }},
		{"routes", resourcev3.RouteType, func() proto.Message { return &routev3.RouteConfiguration{} }},
		{"clusters", resourcev3.ClusterType, func() proto.Message { return &clusterv3.Cluster{} }},
		{"endpoints", resourcev3.EndpointType, func() proto.Message { return &endpointv3.ClusterLoadAssignment{} }},
	}
	res := config.Resources{}
	for _, k := range kinds {
		res[k.url] = map[string]proto.Message{}
		for i, raw := range file[k.key] {
			m := k.new()
			if err := protojson.Unmarshal(raw, m); err != nil {
				t.Fatalf("%s %s[%d]: %v", path, k.key, i, err)
			}
			name := ""
			if cla, ok := m.(*endpointv3.ClusterLoadAssignment); ok {
				name = cla.GetClusterName()
			} else {
				name = m.(interface{ GetName() string }).GetName()
			}
			res[k.url][name] = m
		}
	}
	cfg, err := config.Build(res, nil)
	var inc *config.IncompleteError
	if errors.As(err, &inc) || err != nil {
		t.Fatalf("%s does not build a complete config: %v", path, err)
	}
	return cfg
}

var healthNames = map[config.Health]string{config.Healthy: "Healthy", config.Draining: "Draining", config.Unhealthy: "Unhealthy"}

// dumpState renders what the manager holds, sorted by cluster name, hosts in EDS order.
func dumpState(m *Manager) map[string]any {
	out := map[string]any{}
	for _, name := range m.Names() {
		c := m.Get(name)
		var hosts []any
		for _, h := range c.Hosts() {
			hosts = append(hosts, map[string]any{
				"address":   h.Address,
				"hostname":  h.Hostname,
				"weight":    h.weight,
				"health":    healthNames[config.Health(h.health.Load())],
				"available": h.Available(),
			})
		}
		cs := map[string]any{"hosts": hosts, "ready": c.ReadyCount()}
		if rp := c.ring.Load(); rp != nil {
			share := map[string]int{}
			for _, e := range *rp {
				share[e.host.Address]++
			}
			var picks []string
			for i := 0; i < ringProbes; i++ {
				hash := uint64(i) * (math.MaxUint64 / ringProbes)
				h := c.Pick(hash, true, nil)
				if h == nil {
					picks = append(picks, fmt.Sprintf("%#016x -", hash))
					continue
				}
				picks = append(picks, fmt.Sprintf("%#016x %s", hash, h.Address))
			}
			cs["ring"] = map[string]any{"entries": len(*rp), "share": share, "picks": picks}
		}
		out[name] = cs
	}
	return out
}

// Hosts keep their learnt state across an update that keeps their address, and hosts the
// update drops are marked removed (their pooled connections close): the state-carrying
// half of the seam, on the same golden config.
func TestUpdateKeepsHostsByAddress(t *testing.T) {
	cfg := buildGolden(t, filepath.Join("..", "config", "testdata", "cluster-policies.in.json"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := NewManager(ctx, testclock.NewFakeClock(time.Unix(0, 0)))
	cfg.Clusters = withoutActiveHealthChecks(cfg.Clusters)
	m.Update(cfg.Clusters)
	before := m.Get("least-request").Hosts()
	if len(before) != 2 {
		t.Fatalf("least-request has %d hosts, want 2", len(before))
	}
	before[0].ejected.Store(true)

	next := map[string]*config.Cluster{}
	for n, c := range cfg.Clusters {
		next[n] = c
	}
	lr := *cfg.Clusters["least-request"]
	lr.Endpoints = []config.Endpoint{lr.Endpoints[0], {Address: "10.0.1.9:80", Weight: 1}}
	next["least-request"] = &lr
	delete(next, "random")
	m.Update(next)

	after := m.Get("least-request").Hosts()
	if after[0] != before[0] || !after[0].isEjected() {
		t.Error("the host whose address stayed lost its identity or its ejection")
	}
	if !before[1].Removed() || after[1].Removed() {
		t.Errorf("dropped host removed=%v, new host removed=%v; want true, false", before[1].Removed(), after[1].Removed())
	}
	if m.Get("random") != nil || !strings.Contains(strings.Join(m.Names(), ","), "least-request") {
		t.Errorf("clusters after the update: %v", m.Names())
	}
}
