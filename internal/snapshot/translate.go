package snapshot

import (
	"crypto/sha256"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftmesh/weft/contract"
)

// translator carries the index through the per-object translations.
type translator struct{ ix *index }

// Result is the translation of one Input: the resources every sidecar shares, the redis
// pools some sidecars get, and each object's conditions. It is immutable once Translate
// returns; Snapshot may be called from many goroutines.
type Result struct {
	// Clusters and Endpoints every sidecar receives, sorted by name.
	Clusters  []*clusterv3.Cluster
	Endpoints []*endpointv3.ClusterLoadAssignment
	// Redis pools sorted by namespace/name.
	Redis []*RedisPool
	// Status holds Accepted and ResolvedRefs per object.
	Status map[ObjectKey]ObjectStatus

	vhosts           []vhostEntry
	functionTimeouts map[string]time.Duration
	// plan is what the outbound listener's chains and the route configurations' names are
	// made of; blocked is REGISTRY_ONLY.
	plan    outboundPlan
	blocked bool
	// queue is the async queue's cluster, with its credential: only views that need it get
	// it (needsQueue).
	queue *Queue
	// policies are the MeshPolicies, sorted by key; each view's inbound listener gets the
	// ones that select it (policy.go).
	policies []*meshPolicy

	once   sync.Once
	shared sharedHashes
	mu     sync.Mutex
	routes map[string]versioned[[]types.Resource] // by namespace: the route configurations

	// eds, lineage and epSums serve the endpoint-only fast path (eds.go): which Services
	// feed which assignments, the identity shared by every Result that differs from this
	// one only in endpoints, and the per-assignment hashes.
	eds     *edsPlan
	lineage *lineage
	id      uint64 // unique per Result (ChangedEndpoints)
	epSums  endpointSums
}

// lineage identifies one Translate and the Results UpdateEndpoints derived from it.
type lineage struct{ _ byte }

// vhostEntry is one virtual host of route configuration rc: as every namespace sees it,
// and as its own namespace sees it (with the bare short-name domains).
type vhostEntry struct {
	ns            string
	rc            string
	global, local *routev3.VirtualHost
	gHash, lHash  [32]byte
}

// older reports whether a claims its host before b: the older object wins, then the
// lexically smaller kind/namespace/name, so the outcome never depends on list order.
func older(a, b *built) bool {
	if !a.created.Equal(&b.created) {
		return a.created.Before(&b.created)
	}
	return a.key.String() < b.key.String()
}

// Translate turns the input into xDS resources and conditions. It is pure and
// deterministic: the same input gives the same Result and the same snapshot versions.
func Translate(in *Input) *Result {
	t := &translator{ix: newIndex(in)}
	res := &Result{Status: map[ObjectKey]ObjectStatus{}, functionTimeouts: map[string]time.Duration{},
		routes: map[string]versioned[[]types.Resource]{}}
	var objs []*built
	gens := map[ObjectKey]int64{}
	for i := range in.MeshFunctions {
		fn := &in.MeshFunctions[i]
		objs = append(objs, t.meshFunction(fn))
		gens[objs[len(objs)-1].key] = fn.Generation
		res.functionTimeouts[nsName(fn.Namespace, fn.Name)] = functionTimeout(fn)
	}
	for i := range in.MeshRoutes {
		mr := &in.MeshRoutes[i]
		objs = append(objs, t.meshRoute(mr))
		gens[objs[len(objs)-1].key] = mr.Generation
	}
	sort.Slice(objs, func(i, j int) bool { return older(objs[i], objs[j]) })

	// Settle host claims: objects are in age order, so the first claim of a key wins.
	owner := map[string]*built{}
	n := 0
	for _, b := range objs {
		for _, h := range b.hosts {
			for _, hp := range h.ports {
				n += len(hp.global) + len(hp.local)
			}
		}
	}
	domains := make(map[string]bool, n)
	used := map[*built]bool{}
	clusters := map[string]*clusterv3.Cluster{}
	clas := map[string]*endpointv3.ClusterLoadAssignment{}
	for _, b := range objs {
		for _, h := range b.hosts {
			if !t.checkHost(b, h) {
				continue
			}
			if w, taken := owner[h.key]; taken {
				if w != b {
					b.p.conflict("host %s is already claimed by %s %s/%s, which wins: the oldest object (by creationTimestamp, %s against this one's %s) keeps a host, "+
						"ties going to the first by namespace/name; remove the host here or from %s/%s (this object's other hosts still work)",
						h.host, w.key.Kind, w.key.Namespace, w.key.Name, stamp(w.created), stamp(b.created), w.key.Namespace, w.key.Name)
				}
				continue
			}
			owner[h.key] = b
			used[b] = true
			name := b.key.Namespace + "/" + b.key.Name + "|" + h.host
			for _, hp := range h.ports {
				// Routes were validated one by one; validate the rest of the virtual host alone.
				if err := (&routev3.VirtualHost{Name: name, Domains: hp.global}).Validate(); err != nil {
					b.p.invalidf("host %s: %v", h.host, err)
					continue
				}
				if h.routes != nil {
					res.addVHost(b.key.Namespace, hp.rc, name, hp.global, hp.local, h.routes, hashAll(h.routes), domains)
					continue
				}
				if b.routesHash == nil {
					sum := hashAll(b.routes)
					b.routesHash = &sum
				}
				res.addVHost(b.key.Namespace, hp.rc, name, hp.global, hp.local, b.routes, *b.routesHash, domains)
			}
		}
		if !used[b] && b.key.Kind != KindMeshFunction {
			continue // no host of its own: its clusters would serve nobody
		}
		for i, c := range b.clusters {
			if err := c.Validate(); err != nil {
				b.p.invalidf("cluster %s: %v", c.Name, err)
				continue
			}
			if _, dup := clusters[c.Name]; !dup {
				clusters[c.Name] = c
				if i < len(b.clas) {
					clas[c.Name] = b.clas[i]
				}
			}
		}
	}
	claimed := make(map[string]bool, len(owner))
	for k := range owner {
		claimed[k] = true
	}
	res.plan = outboundPlan{httpPorts: map[uint32]bool{}, rcPorts: map[uint32]bool{contract.DefaultHTTPPort: true}}
	t.defaultServices(in, claimed, &res.plan, res, domains, clusters, clas)
	for _, e := range res.vhosts {
		if p, err := strconv.ParseUint(e.rc, 10, 16); err == nil {
			res.plan.rcPorts[uint32(p)] = true
		}
	}
	res.blocked = in.OutboundTrafficPolicy == contract.RegistryOnly
	for _, c := range specialClusters() {
		clusters[c.Name] = c
	}
	sort.SliceStable(res.vhosts, func(i, j int) bool {
		a, b := &res.vhosts[i], &res.vhosts[j]
		return a.rc < b.rc || a.rc == b.rc && a.global.Name < b.global.Name
	})
	for _, name := range sortedKeys(clusters) {
		res.Clusters = append(res.Clusters, clusters[name])
		if clusters[name].GetType() != clusterv3.Cluster_EDS {
			continue
		}
		cla := clas[name]
		if cla == nil {
			cla = &endpointv3.ClusterLoadAssignment{ClusterName: name}
		}
		res.Endpoints = append(res.Endpoints, cla)
	}
	if in.Queue != nil {
		res.addQueue(in.Queue)
	}
	for _, b := range objs {
		res.Status[b.key] = ObjectStatus{Generation: gens[b.key], Conditions: b.p.conditions()}
	}
	t.redisPools(in, res)
	t.meshPolicies(in, res)
	res.eds = buildEDSPlan(t.ix, in, res)
	res.lineage = &lineage{}
	res.id = resultIDs.Add(1)
	return res
}

func stamp(t metav1.Time) string { return t.UTC().Format(time.RFC3339) }

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// redisPools translates every RedisProxy. Two pools in one namespace on the same listener
// address whose selectors can pick the same pod conflict; the older keeps the address.
func (t *translator) redisPools(in *Input, res *Result) {
	type entry struct {
		b    *built
		pool *RedisPool
	}
	var all []entry
	for i := range in.RedisProxies {
		rp := &in.RedisProxies[i]
		pool, p := t.redisProxy(rp)
		t.standaloneNames(rp, p)
		// Fields stored before the CRD could refuse them (issue 13) decode as unreadable
		// instead of failing every list; such a pool is not served until fixed.
		for _, f := range rp.UnreadableFields() {
			p.invalidf("%s; the pool is not served until you fix it", f)
			pool.Listener = nil
		}
		all = append(all, entry{&built{key: pool.Key, created: rp.CreationTimestamp, p: p}, pool})
		res.Status[pool.Key] = ObjectStatus{Generation: rp.Generation}
	}
	sort.Slice(all, func(i, j int) bool { return older(all[i].b, all[j].b) })
	var kept []entry
	for _, e := range all {
		if e.pool.Listener != nil {
			for _, k := range kept {
				if k.pool.Key.Namespace == e.pool.Key.Namespace && sameAddress(k.pool, e.pool) && overlap(k.pool.Selector, e.pool.Selector) {
					e.b.p.conflict("listener %s is already served by RedisProxy %s/%s, which is older, on the same pods; change spec.listener.port or the workloadSelector",
						addressOf(e.pool), k.pool.Key.Namespace, k.pool.Key.Name)
					e.pool.Listener = nil
					break
				}
			}
		}
		for _, m := range []interface{ Validate() error }{e.pool.Cluster, e.pool.Endpoints} {
			if err := m.Validate(); err != nil {
				e.b.p.invalidf("%v", err)
				e.pool.Listener = nil
			}
		}
		if e.pool.Listener != nil {
			if err := e.pool.Listener.Validate(); err != nil {
				e.b.p.invalidf("listener: %v", err)
				e.pool.Listener = nil
			}
		}
		if e.pool.Listener != nil {
			kept = append(kept, e)
		}
		st := res.Status[e.pool.Key]
		st.Conditions = e.b.p.conditions()
		res.Status[e.pool.Key] = st
		res.Redis = append(res.Redis, e.pool)
	}
	sort.Slice(res.Redis, func(i, j int) bool { return res.Redis[i].Key.String() < res.Redis[j].Key.String() })
}

func addressOf(p *RedisPool) string {
	sa := p.Listener.GetAddress().GetSocketAddress()
	return fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue())
}

func sameAddress(a, b *RedisPool) bool {
	pa, pb := a.Listener.GetAddress().GetSocketAddress(), b.Listener.GetAddress().GetSocketAddress()
	if pa.GetPortValue() != pb.GetPortValue() {
		return false
	}
	wild := func(s string) bool { return s == "0.0.0.0" || s == "::" }
	return pa.GetAddress() == pb.GetAddress() || wild(pa.GetAddress()) || wild(pb.GetAddress())
}

// overlap reports whether some pod could match both selectors: no label is required with two
// different values.
func overlap(a, b map[string]string) bool {
	for k, v := range a {
		if w, ok := b[k]; ok && w != v {
			return false
		}
	}
	return true
}

// String summarises a Result for logs.
func (r *Result) String() string {
	return fmt.Sprintf("%d clusters, %d virtual hosts, %d redis pools", len(r.Clusters), len(r.vhosts), len(r.Redis))
}

// vhostHash hashes a virtual host from its name, domains and the hash of its routes, which
// all virtual hosts of one object share: hashing the routes once per object, not per host.
func vhostHash(vh *routev3.VirtualHost, routes [32]byte) [32]byte {
	h := sha256.New()
	h.Write([]byte(vh.Name))
	for _, d := range vh.Domains {
		h.Write([]byte{0})
		h.Write([]byte(d))
	}
	h.Write(routes[:])
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}
