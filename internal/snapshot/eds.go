package snapshot

import (
	"crypto/sha256"
	"maps"
	"strings"
	"sync"
	"sync/atomic"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// The endpoint-only fast path (issue 17, "Large meshes").
//
// When only EndpointSlices changed, everything a full Translate computes is the same except
// the ClusterLoadAssignments built from the changed Services' slices. Translate records, for
// each ClusterLoadAssignment it builds from slices, which Service and which filter it came
// from (edsPlan); UpdateEndpoints rebuilds only those of the changed Services and shares
// everything else — clusters, listeners, route configurations and their versions — with
// the Result it starts from. The contract, checked by TestUpdateEndpointsMatchesTranslate
// on every golden input: UpdateEndpoints(Translate(in), ch) gives the same resources and
// versions, for every view, as Translate(in.WithEndpoints(ch)).
//
// A change that reaches beyond EDS refuses the fast path (ok = false) and the caller
// translates everything: a headless Service's endpoint addresses are matched by the outbound
// listener's chains, a redis pool whose endpoints start or stop validating changes its
// listener and status, and a Result with a slice-built assignment of unknown origin cannot
// say which Services it depends on.

// EndpointChange holds, for each changed Service ("<namespace>/<name>"), every
// EndpointSlice labelled with its name now (none when they were all deleted).
type EndpointChange map[string][]discoveryv1.EndpointSlice

// edsSource is how loadAssignment built one ClusterLoadAssignment: the Service whose slices
// it read ("" when not known) and the filter; drain marks a function going to zero, whose
// endpoints are all sent DRAINING.
type edsSource struct {
	svc   string
	f     endpointFilter
	drain bool
}

// edsPlan says, for each Service, which ClusterLoadAssignments of a Result its slices feed.
// It is built once by Translate and shared, read-only, by every Result UpdateEndpoints
// derives from it (the positions of the assignments never change along that line).
type edsPlan struct {
	// shared and pools are indexes into Result.Endpoints and Result.Redis, by Service.
	shared map[string][]int
	pools  map[string][]int
	// src and poolSrc are aligned with Result.Endpoints and Result.Redis.
	src, poolSrc []edsSource
	// lds are the Services whose slices also shape listeners (headless Services: the
	// outbound listener's chains match their endpoints' addresses).
	lds       map[string]bool
	podLabels map[string]map[string]string
	// complete is false when some assignment was built from slices of a Service this plan
	// could not name: every change then takes a full Translate.
	complete bool
}

// endpointSums are the per-assignment content hashes of Result.Endpoints, computed once
// and carried along derived Results, so a derived Result's EDS version costs one hash per
// changed assignment plus one pass over the sums (not a re-marshal of every assignment).
type endpointSums struct {
	once sync.Once
	sums [][32]byte
	// shared is the view-independent EDS resource group (the shared assignments indexed by
	// name), built once per Result and handed to every view without redis endpoints. A
	// derived Result builds it from its parent's (a map copy plus the changed entries) when
	// the parent's is built; parent is dropped once used, so Results never form a chain.
	sharedOnce sync.Once
	shared     cachev3.Resources
	built      atomic.Bool
	parent     *Result
	changed    []int
	// from and names say which assignments (shared and redis pools') this Result changed
	// from the one it was derived from, identified by its id (no pointer: Results never
	// form a chain).
	from  uint64
	names []string
}

// record notes how loadAssignment built cla, when the index records.
func (ix *index) record(cla *endpointv3.ClusterLoadAssignment, name string, slices []*discoveryv1.EndpointSlice, f endpointFilter) {
	if ix.made == nil {
		return
	}
	svc := ""
	if len(slices) > 0 {
		svc = nsName(slices[0].Namespace, slices[0].Labels[discoveryv1.LabelServiceName])
	} else {
		svc = ix.serviceOfCluster(name)
	}
	ix.made[cla] = edsSource{svc: svc, f: f}
}

// serviceOfCluster names the Service whose slices an assignment of cluster name reads, for
// an assignment built from no slices at all (the Service has none yet): the cluster names of
// docs/xds-contract.md carry it. "" when the name is of no known form.
func (ix *index) serviceOfCluster(name string) string {
	kind, rest, _ := strings.Cut(name, "|")
	switch kind {
	case "function":
		return rest // <ns>/<name>: the function's own Service
	case "outbound":
		parts := strings.Split(rest, "|") // port, subset, fqdn[, route]
		if len(parts) < 3 {
			return ""
		}
		svc, host, ok := strings.Cut(parts[2], ".")
		ns, suffix, ok2 := strings.Cut(host, ".")
		if !ok || !ok2 || suffix != "svc.cluster.local" {
			return ""
		}
		return nsName(ns, svc)
	case "redis":
		if rp := ix.redis[rest]; rp != nil && rp.Spec.ServiceRef != nil {
			return nsName(rp.Namespace, rp.Spec.ServiceRef.Name)
		}
	}
	return ""
}

// drains reports whether the assignment of cluster name, built from the slices of Service
// svc, is sent DRAINING: that of a function, or of one of its revisions, whose controller
// announced zero (the hand-off in function.go and revision.go).
func (ix *index) drains(name, svc string) bool {
	rest, ok := strings.CutPrefix(name, "function|")
	if !ok {
		return false
	}
	f := ix.functions[svc]
	if f == nil {
		return false
	}
	if rest == svc {
		return goingToZero(f)
	}
	ns, rev, _ := strings.Cut(rest, "/")
	for i := range f.Status.Revisions {
		if rs := &f.Status.Revisions[i]; ns == f.Namespace && rs.Name == rev {
			return revisionGoingToZero(f, rs)
		}
	}
	return false
}

// buildEDSPlan indexes the slice-built assignments of res by Service.
func buildEDSPlan(ix *index, in *Input, res *Result) *edsPlan {
	p := &edsPlan{shared: map[string][]int{}, pools: map[string][]int{}, lds: map[string]bool{},
		src: make([]edsSource, len(res.Endpoints)), poolSrc: make([]edsSource, len(res.Redis)),
		podLabels: ix.podLabels, complete: true}
	for i, cla := range res.Endpoints {
		src, ok := ix.made[cla]
		if !ok {
			continue // not built from slices (an unresolved destination's empty assignment)
		}
		if src.svc == "" {
			p.complete = false
			continue
		}
		src.drain = ix.drains(cla.GetClusterName(), src.svc)
		p.src[i] = src
		p.shared[src.svc] = append(p.shared[src.svc], i)
	}
	for i, pool := range res.Redis {
		src, ok := ix.made[pool.Endpoints]
		if !ok {
			continue // spec.servers: no slices
		}
		if src.svc == "" {
			p.complete = false
			continue
		}
		p.poolSrc[i] = src
		p.pools[src.svc] = append(p.pools[src.svc], i)
	}
	for i := range in.Services {
		s := &in.Services[i]
		if s.Spec.Type != corev1.ServiceTypeExternalName && s.Spec.ClusterIP == corev1.ClusterIPNone {
			p.lds[nsName(s.Namespace, s.Name)] = true
		}
	}
	ix.made = nil // the index is done with; the plan keeps what it needs
	return p
}

// sumsOf returns the per-assignment hashes of r.Endpoints.
func (r *Result) sumsOf() [][32]byte {
	r.epSums.once.Do(func() {
		if r.epSums.sums != nil {
			return
		}
		r.epSums.sums = make([][32]byte, len(r.Endpoints))
		for i, cla := range r.Endpoints {
			r.epSums.sums[i] = hashOf(cla)
		}
	})
	return r.epSums.sums
}

// combine is hashAll over precomputed hashes.
func combine(sums [][32]byte) [32]byte {
	h := sha256.New()
	for i := range sums {
		h.Write(sums[i][:])
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// UpdateEndpoints returns the Result of the same input with the EndpointSlices of the
// Services in ch replaced: only their ClusterLoadAssignments are rebuilt, and every other
// resource (and every other type's version) is r's. ok is false when the change needs a
// full Translate (see the top of this file); the caller must then translate. r is not
// modified, and a Result with nothing changed is r itself.
func (r *Result) UpdateEndpoints(ch EndpointChange) (*Result, bool) {
	p := r.eds
	if p == nil || !p.complete {
		return nil, false
	}
	for svc := range ch {
		if p.lds[svc] {
			return nil, false
		}
	}
	ix := &index{podLabels: p.podLabels}
	var eps []*endpointv3.ClusterLoadAssignment
	var sums [][32]byte
	var pools []*RedisPool
	for svc, items := range ch {
		if len(p.shared[svc]) == 0 && len(p.pools[svc]) == 0 {
			continue
		}
		slices := make([]*discoveryv1.EndpointSlice, 0, len(items))
		for i := range items {
			es := &items[i]
			if nsName(es.Namespace, es.Labels[discoveryv1.LabelServiceName]) == svc {
				slices = append(slices, es)
			}
		}
		for _, i := range p.shared[svc] {
			old := r.Endpoints[i]
			cla := ix.loadAssignment(old.GetClusterName(), slices, p.src[i].f)
			if p.src[i].drain {
				drainAll(cla)
			}
			if proto.Equal(cla, old) {
				continue
			}
			if eps == nil {
				eps = append([]*endpointv3.ClusterLoadAssignment(nil), r.Endpoints...)
				sums = append([][32]byte(nil), r.sumsOf()...)
			}
			eps[i], sums[i] = cla, hashOf(cla)
		}
		for _, i := range p.pools[svc] {
			old := r.Redis[i]
			cla := ix.loadAssignment(old.Endpoints.GetClusterName(), slices, p.poolSrc[i].f)
			if proto.Equal(cla, old.Endpoints) {
				continue
			}
			// A pool whose endpoints do not validate is not served and says so in its
			// status: only Translate decides that.
			if cla.Validate() != nil || old.Endpoints.Validate() != nil {
				return nil, false
			}
			if pools == nil {
				pools = append([]*RedisPool(nil), r.Redis...)
			}
			np := *old
			np.Endpoints = cla
			pools[i] = &np
		}
	}
	if eps == nil && pools == nil {
		return r, true
	}
	nr := &Result{Clusters: r.Clusters, Endpoints: r.Endpoints, Redis: r.Redis, Status: r.Status,
		vhosts: r.vhosts, functionTimeouts: r.functionTimeouts, plan: r.plan, blocked: r.blocked, queue: r.queue, policies: r.policies,
		eds: p, lineage: r.lineage, routes: map[string]versioned[[]types.Resource]{}}
	if eps != nil {
		nr.Endpoints = eps
		nr.epSums.sums = sums
		nr.epSums.parent = r
		for i := range eps {
			if eps[i] != r.Endpoints[i] {
				nr.epSums.changed = append(nr.epSums.changed, i)
			}
		}
	} else {
		nr.epSums.sums = r.sumsOf()
	}
	if pools != nil {
		nr.Redis = pools
		for i := range pools {
			if pools[i] != r.Redis[i] {
				nr.epSums.names = append(nr.epSums.names, pools[i].Endpoints.GetClusterName())
			}
		}
	}
	for _, i := range nr.epSums.changed {
		nr.epSums.names = append(nr.epSums.names, eps[i].GetClusterName())
	}
	sh := r.hashes()
	nr.id, nr.epSums.from = resultIDs.Add(1), r.id
	nr.once.Do(func() {
		nr.shared = sharedHashes{clusters: sh.clusters, endpoints: combine(nr.epSums.sums),
			outbound: sh.outbound, outboundHash: sh.outboundHash}
	})
	r.mu.Lock()
	for ns, rc := range r.routes {
		nr.routes[ns] = rc
	}
	r.mu.Unlock()
	return nr, true
}

// ChangedEndpoints names the ClusterLoadAssignments r changed from prev, when UpdateEndpoints
// derived r from prev (ok is false otherwise): every view's EDS resources of r are then
// prev's, the very same messages, but for these names.
func (r *Result) ChangedEndpoints(prev *Result) (names []string, ok bool) {
	if !r.SameButEndpoints(prev) || len(r.epSums.names) == 0 || r.epSums.from != prev.id {
		return nil, false
	}
	return r.epSums.names, true
}

// resultIDs numbers Results, for ChangedEndpoints.
var resultIDs atomic.Uint64

// SameButEndpoints reports whether r and o differ at most in their endpoints (o is r, or
// one was derived from the other, directly or not, by UpdateEndpoints): every view's
// clusters, listeners and route configurations, and their versions, are then the same.
func (r *Result) SameButEndpoints(o *Result) bool {
	return r != nil && o != nil && r.lineage != nil && r.lineage == o.lineage
}

// EndpointResources is the EDS part of Snapshot(v): the same resources and version, built
// without the other types. Views without redis pools share one resource group per Result.
func (r *Result) EndpointResources(v View) (cachev3.Resources, error) {
	sh := r.hashes()
	extra := r.viewPoolEndpoints(v)
	if len(extra) == 0 {
		return r.sharedEndpoints(), nil
	}
	for _, e := range extra {
		if err := e.Validate(); err != nil {
			return cachev3.Resources{}, err
		}
	}
	items := append(asResources(r.Endpoints), asResources(extra)...)
	return cachev3.NewResources(version(sh.endpoints, hashAll(extra)), items), nil
}

// sharedEndpoints is the EDS resource group of a view without redis endpoints.
func (r *Result) sharedEndpoints() cachev3.Resources {
	e := &r.epSums
	e.sharedOnce.Do(func() {
		ver := version(r.hashes().endpoints, hashAll[*endpointv3.ClusterLoadAssignment](nil))
		if p := e.parent; p != nil && p.epSums.built.Load() {
			items := maps.Clone(p.epSums.shared.Items)
			for _, i := range e.changed {
				items[r.Endpoints[i].GetClusterName()] = types.ResourceWithTTL{Resource: r.Endpoints[i]}
			}
			e.shared = cachev3.Resources{Version: ver, Items: items}
		} else {
			e.shared = cachev3.NewResources(ver, asResources(r.Endpoints))
		}
		e.parent, e.changed = nil, nil
		e.built.Store(true)
	})
	return e.shared
}

// viewPoolEndpoints are the redis pools' endpoints view v receives, in Snapshot's order.
func (r *Result) viewPoolEndpoints(v View) []*endpointv3.ClusterLoadAssignment {
	if len(r.Redis) == 0 {
		return nil
	}
	pools := map[string]*RedisPool{}
	for _, p := range r.Redis {
		pools[p.Cluster.Name] = p
	}
	want := map[string]bool{}
	for _, p := range r.Redis {
		if p.Listener == nil || !p.Selects(v) {
			continue
		}
		want[p.Cluster.Name] = true
		for _, n := range p.Routes {
			want[n] = true
		}
	}
	var out []*endpointv3.ClusterLoadAssignment
	for _, n := range sortedKeys(want) {
		if p, ok := pools[n]; ok {
			out = append(out, p.Endpoints)
		}
	}
	return out
}

// WithEndpoints is in with the EndpointSlices of the Services in ch replaced by ch's: the
// input UpdateEndpoints stands for. It copies in shallowly and leaves it unchanged.
func (in *Input) WithEndpoints(ch EndpointChange) *Input {
	out := *in
	out.EndpointSlices = make([]discoveryv1.EndpointSlice, 0, len(in.EndpointSlices))
	for _, es := range in.EndpointSlices {
		if _, changed := ch[nsName(es.Namespace, es.Labels[discoveryv1.LabelServiceName])]; !changed {
			out.EndpointSlices = append(out.EndpointSlices, es)
		}
	}
	for _, k := range sortedKeys(ch) {
		for _, es := range ch[k] {
			if nsName(es.Namespace, es.Labels[discoveryv1.LabelServiceName]) == k {
				out.EndpointSlices = append(out.EndpointSlices, es)
			}
		}
	}
	return &out
}
