package upstream

import (
	"math/rand/v2"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
	"k8s.io/utils/clock"

	"github.com/weftmesh/weft/sidecar/config"
)

// Host is one endpoint and the state learnt about it.
type Host struct {
	Address  string
	Hostname string
	weight   uint32
	health   atomic.Int32 // config.Health from EDS
	active   atomic.Int64 // outstanding requests (least request)

	consecutive5xx   atomic.Uint32
	consecutiveGw    atomic.Uint32
	consecutiveLocal atomic.Uint32 // connect failures and resets before a response
	ejected          atomic.Bool
	ejectedUntil     atomic.Int64 // unix nanos; 0: until the next sweep
	ejections        atomic.Uint32
	clock            clock.PassiveClock

	hcFailed atomic.Bool
	hcRun    int         // consecutive results, owned by the health checker
	removed  atomic.Bool // no longer in its cluster (EDS dropped it, or the cluster went)

	pool pool
	h2   h2pool // HTTP/2 connections (h2.go)
	// meshTLS: EDS marks the endpoint as a pod whose sidecar terminates mesh TLS on its
	// port (config.Endpoint.MeshTLS; Meshed, meshtls.go).
	meshTLS atomic.Bool
}

// Available reports whether the host may take a new request: EDS says HEALTHY, outlier
// detection has not ejected it and active health checking has not failed it. DRAINING
// endpoints are serving their last requests and get no new ones.
func (h *Host) Available() bool {
	return config.Health(h.health.Load()) == config.Healthy && !h.isEjected() && !h.hcFailed.Load()
}

// isEjected reports whether outlier detection has h out of rotation. An ejection ends at
// the sweep after its time (Envoy's interval) or, for clusters without a sweep (ejections
// on connect failures without outlier_detection), when it is first looked at after its
// time.
func (h *Host) isEjected() bool {
	if !h.ejected.Load() {
		return false
	}
	if until := h.ejectedUntil.Load(); until != 0 && h.clock != nil && h.clock.Now().UnixNano() >= until {
		h.ejected.CompareAndSwap(true, false)
		return false
	}
	return true
}

// Removed reports that the host left its cluster: connections kept for it elsewhere (the
// HTTP event loops' pools) should close.
func (h *Host) Removed() bool { return h.removed.Load() }

// Cluster is one upstream cluster's runtime.
type Cluster struct {
	Name string
	mgr  *Manager

	cfg   atomic.Pointer[config.Cluster]
	hosts atomic.Pointer[[]*Host]
	ring  atomic.Pointer[[]ringEntry]
	rr    atomic.Uint64

	active  atomic.Int64 // requests in flight
	retries atomic.Int64 // retries in flight
	slots   connSlots    // max_connections and the pending queue (connlimit.go)

	Stats Stats

	flights inflight // goroutine-path exchanges in flight (diagnostics, inflight.go)

	mu   sync.Mutex
	stop func()
}

func newCluster(m *Manager, cc *config.Cluster) *Cluster {
	c := &Cluster{Name: cc.Name, mgr: m, stop: func() {}}
	empty := []*Host{}
	c.hosts.Store(&empty)
	return c
}

// Config returns the cluster's current decoded config.
func (c *Cluster) Config() *config.Cluster { return c.cfg.Load() }

// Hosts returns the current hosts (do not modify).
func (c *Cluster) Hosts() []*Host { return *c.hosts.Load() }

// ReadyCount is how many endpoints are HEALTHY in EDS: what the cold-start holder waits for.
func (c *Cluster) ReadyCount() int {
	n := 0
	for _, h := range c.Hosts() {
		if config.Health(h.health.Load()) == config.Healthy {
			n++
		}
	}
	return n
}

// stopAll stops background work and closes idle connections of a removed cluster.
func (c *Cluster) stopAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stop()
	for _, h := range c.Hosts() {
		h.removed.Store(true)
		h.pool.closeIdle()
		h.h2.closeIdle(true)
	}
}

func (c *Cluster) update(cc *config.Cluster) {
	c.mu.Lock()
	defer c.mu.Unlock()
	prev := c.cfg.Load()
	byAddr := map[string]*Host{}
	for _, h := range c.Hosts() {
		byAddr[h.Address] = h
	}
	hosts := make([]*Host, 0, len(cc.Endpoints))
	for _, e := range cc.Endpoints {
		h := byAddr[e.Address]
		if h == nil {
			h = &Host{Address: e.Address, clock: c.mgr.clock}
		}
		h.Hostname, h.weight = e.Hostname, e.Weight
		h.meshTLS.Store(e.MeshTLS)
		h.health.Store(int32(e.Health))
		hosts = append(hosts, h)
	}
	kept := map[*Host]bool{}
	for _, h := range hosts {
		kept[h] = true
	}
	for _, h := range byAddr {
		if !kept[h] {
			h.removed.Store(true)
			h.pool.closeIdle()
			h.h2.closeIdle(true)
		}
	}
	c.cfg.Store(cc)
	c.hosts.Store(&hosts)
	if cc.LB == config.RingHash {
		r := buildRing(hosts, cc.MinRingSize)
		c.ring.Store(&r)
	}
	if prev == nil || !sameBackground(prev, cc) {
		c.stop()
		c.stop = c.startBackground(cc)
	}
	if prev != nil && cc.Limits.MaxConnections > prev.Limits.MaxConnections {
		c.regrant()
	}
}

func sameBackground(a, b *config.Cluster) bool {
	eq := func(x, y any) bool { return x == y }
	oa, ob := a.Outlier, b.Outlier
	ha, hb := a.HealthCheck, b.HealthCheck
	return (oa == nil) == (ob == nil) && (oa == nil || *oa == *ob) &&
		(ha == nil) == (hb == nil) && (ha == nil || eq(*ha, *hb))
}

// Pick chooses a host for a request. hash is used by ring hash when hasHash; tried lists
// hosts earlier attempts used, avoided when another host is available (Envoy's
// previous_hosts predicate). It returns nil when no host is available.
func (c *Cluster) Pick(hash uint64, hasHash bool, tried []*Host) *Host {
	hosts := c.Hosts()
	n := len(hosts)
	if n == 0 {
		return nil
	}
	cc := c.cfg.Load()
	ok := func(h *Host) bool { return h.Available() && !contains(tried, h) }
	for pass := 0; pass < 2; pass++ {
		switch cc.LB {
		case config.RingHash:
			if h := c.pickRing(hash, hasHash, ok); h != nil {
				return h
			}
		case config.LeastRequest:
			a, b := hosts[rand.IntN(n)], hosts[rand.IntN(n)]
			if ok(a) && ok(b) {
				if b.active.Load() < a.active.Load() {
					return b
				}
				return a
			}
			if h := scan(hosts, rand.IntN(n), ok); h != nil {
				return h
			}
		case config.Random:
			if h := scan(hosts, rand.IntN(n), ok); h != nil {
				return h
			}
		default:
			if h := scan(hosts, int(c.rr.Add(1)%uint64(n)), ok); h != nil {
				return h
			}
		}
		if len(tried) == 0 {
			return nil
		}
		ok = func(h *Host) bool { return h.Available() } // every untried host is out: reuse one
	}
	return nil
}

func scan(hosts []*Host, start int, ok func(*Host) bool) *Host {
	for i := range hosts {
		if h := hosts[(start+i)%len(hosts)]; ok(h) {
			return h
		}
	}
	return nil
}

func contains(hs []*Host, h *Host) bool {
	for _, x := range hs {
		if x == h {
			return true
		}
	}
	return false
}

type ringEntry struct {
	hash uint64
	host *Host
}

// buildRing places each host on the ring in proportion to its weight, at least minSize
// entries in total, hashing "address_i" with xxHash64 as Envoy's ring hash does.
func buildRing(hosts []*Host, minSize uint64) []ringEntry {
	if len(hosts) == 0 {
		return nil
	}
	var total uint64
	for _, h := range hosts {
		total += uint64(h.weight)
	}
	per := (minSize + total - 1) / total
	ring := make([]ringEntry, 0, per*total)
	for _, h := range hosts {
		for i := uint64(0); i < per*uint64(h.weight); i++ {
			ring = append(ring, ringEntry{xxhash.Sum64String(h.Address + "_" + strconv.FormatUint(i, 10)), h})
		}
	}
	sort.Slice(ring, func(i, j int) bool { return ring[i].hash < ring[j].hash })
	return ring
}

func (c *Cluster) pickRing(hash uint64, hasHash bool, ok func(*Host) bool) *Host {
	rp := c.ring.Load()
	if rp == nil || len(*rp) == 0 {
		return nil
	}
	ring := *rp
	if !hasHash {
		hash = rand.Uint64()
	}
	i := sort.Search(len(ring), func(i int) bool { return ring[i].hash >= hash })
	for k := 0; k < len(ring); k++ {
		if e := ring[(i+k)%len(ring)]; ok(e.host) {
			return e.host
		}
	}
	return nil
}
