// Package upstream holds the sidecar's view of upstream clusters: their endpoints and the
// state that must outlive a config swap — outlier ejections, active health, least-request
// counters, circuit-breaker gauges, keep-alive connection pools and per-cluster stats.
//
// It takes decoded clusters (*config.Cluster) on every swap and hands the HTTP proxy a
// *Cluster that picks hosts (round robin, least request, random, ring hash), admits or
// refuses requests (circuit breakers) and learns from their outcomes (outlier detection).
package upstream

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"

	"k8s.io/utils/clock"

	"github.com/weftmesh/weft/sidecar/config"
)

// Manager owns every cluster's runtime state. Get is lock-free; Update is serialised.
type Manager struct {
	clock    clock.WithTicker
	mu       sync.Mutex
	clusters atomic.Pointer[map[string]*Cluster]
	ctx      context.Context
	slowOnce sync.Once

	meshTLSHolder // mutual TLS to meshed endpoints (meshtls.go)
}

// NewManager returns an empty manager. Background work (outlier sweeps, health checks)
// stops when ctx ends.
func NewManager(ctx context.Context, clk clock.WithTicker) *Manager {
	if clk == nil {
		clk = clock.RealClock{}
	}
	m := &Manager{clock: clk, ctx: ctx}
	empty := map[string]*Cluster{}
	m.clusters.Store(&empty)
	return m
}

// Get returns the named cluster or nil.
func (m *Manager) Get(name string) *Cluster {
	return (*m.clusters.Load())[name]
}

// Names returns the cluster names, sorted.
func (m *Manager) Names() []string {
	cs := *m.clusters.Load()
	out := make([]string, 0, len(cs))
	for n := range cs {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Update applies a new set of clusters. A cluster that keeps its name keeps its hosts'
// state for endpoints whose address is unchanged; removed clusters stop their background
// work and close idle connections.
func (m *Manager) Update(in map[string]*config.Cluster) {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := *m.clusters.Load()
	next := make(map[string]*Cluster, len(in))
	for name, cc := range in {
		c := old[name]
		if c == nil {
			c = newCluster(m, cc)
		}
		c.update(cc)
		next[name] = c
	}
	m.clusters.Store(&next)
	for name, c := range old {
		if _, ok := next[name]; !ok {
			c.stopAll()
		}
	}
}
