package xds

import (
	"context"
	"fmt"
	"hash/maphash"
	"maps"
	"strconv"
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Partial EDS responses (docs/eds-fast-path.md, "Sending only what changed").
//
// go-control-plane's snapshot cache answers a state-of-the-world EDS watch with every
// subscribed ClusterLoadAssignment, built and marshaled for each stream: at 11,000
// assignments that is ~200 ms of CPU per sidecar per endpoint change. EDS is not a
// full-state type (only Listener and Cluster are), so a response may carry only some of
// the subscribed resources and the client keeps the others (sidecar/xdsclient merges
// them; Envoy does the same). edsWatcher answers the state-of-the-world EDS watches
// itself: a sidecar that holds the previous version gets only the assignments that
// changed since, and each assignment is marshaled once and shared by every stream and
// every view.
//
// A stream gets a partial response only when the server knows what its sidecar holds:
// the request ACKs (no error detail) exactly the version of the last response this
// stream got, for the same resource names. That fact travels with the stream: the
// response leaves one marker in the subscription's returned resources (go-control-plane
// keeps them per stream and type and hands them back with the next request), so a new
// stream, a reconnect, a NACK or a changed subscription all get the full set.

// maxEDSHistory bounds how many earlier versions a group keeps the changes since; a
// request ACKing an older version gets the full set. A change set larger than a quarter of
// the group (and than minEDSDiff names) is not kept either: the full set costs little more.
const (
	maxEDSHistory = 8
	minEDSDiff    = 64
)

// diffLimit is the largest change set a group of n assignments keeps.
func diffLimit(n int) int { return max(n/4, minEDSDiff) }

// edsItem is one assignment, marshaled at most once for every stream and view that sends it.
type edsItem struct {
	res  types.Resource
	once sync.Once
	any  *anypb.Any
	err  error
}

func (it *edsItem) marshaled() (*anypb.Any, error) {
	it.once.Do(func() {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(it.res)
		if err != nil {
			it.err = fmt.Errorf("marshaling %s: %w", cachev3.GetResourceName(it.res), err)
			return
		}
		it.any = &anypb.Any{TypeUrl: resourcev3.EndpointType, Value: b}
	})
	return it.any, it.err
}

// edsGroup is one EDS version: its assignments by name, and what changed since each of up
// to maxEDSHistory earlier versions. Views with the same version share one group.
type edsGroup struct {
	version string
	items   map[string]*edsItem
	since   []edsStep // newest first, at most maxEDSHistory
	// diffs holds, per earlier version, the marshaled changes when every stream sending
	// them subscribes to all of them (built on first use).
	diffs map[string][]*anypb.Any
	refs  int
}

// edsStep is what changed (or was added) since an earlier version.
type edsStep struct {
	from  string
	names []string
}

// changesSince returns the names changed since version v, if g knows them.
func (g *edsGroup) changesSince(v string) ([]string, bool) {
	for _, st := range g.since {
		if st.from == v {
			return st.names, true
		}
	}
	return nil, false
}

type edsView struct {
	group   *edsGroup
	watches map[uint64]*edsOpenWatch
}

// edsOpenWatch is one stream's open EDS request.
type edsOpenWatch struct {
	req *discoveryv3.DiscoveryRequest
	sub cachev3.Subscription
	ch  chan cachev3.Response
	fp  string
	// base is the version the sidecar is known to hold all of ("" when not known: it then
	// gets the full set).
	base string
}

// edsWatcher serves state-of-the-world EDS watches; see the top of this file.
type edsWatcher struct {
	mu     sync.Mutex
	views  map[string]*edsView // by view key
	groups map[string]*edsGroup
	nextID uint64
	seed   maphash.Seed
}

func newEDSWatcher() *edsWatcher {
	return &edsWatcher{views: map[string]*edsView{}, groups: map[string]*edsGroup{}, seed: maphash.MakeSeed()}
}

// set makes res the EDS resources of view key and answers its open watches. hint, when
// not nil, names the only assignments res may differ in from the view's previous ones
// (snapshot.Result.ChangedEndpoints): the others are the very same messages, so the new
// group is derived without looking at them. The caller orders it between the snapshot
// cache's CDS and its LDS/RDS (Cache.setLocked).
func (w *edsWatcher) set(key string, res cachev3.Resources, hint []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	vs := w.views[key]
	if vs == nil {
		vs = &edsView{watches: map[uint64]*edsOpenWatch{}}
		w.views[key] = vs
	}
	old := vs.group
	if old != nil && old.version == res.Version {
		return
	}
	g := w.groups[res.Version]
	if g == nil {
		donor := old
		for _, d := range w.groups {
			if donor == nil {
				donor = d
			}
		}
		g = newEDSGroup(res, old, donor, hint)
		w.groups[res.Version] = g
	} else if old != nil {
		g.learn(old)
	}
	g.refs++
	vs.group = g
	w.release(old)
	for id, ew := range vs.watches {
		if w.respond(ew, g) {
			delete(vs.watches, id)
		}
	}
}

// clear forgets view key (its last sidecar left).
func (w *edsWatcher) clear(key string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if vs := w.views[key]; vs != nil {
		w.release(vs.group)
		delete(w.views, key)
	}
}

func (w *edsWatcher) release(g *edsGroup) {
	if g == nil {
		return
	}
	if g.refs--; g.refs <= 0 {
		delete(w.groups, g.version)
	}
}

// newEDSGroup builds the group of res, the successor of old (nil for a view's first),
// reusing donor's items (old's, or another view's) whose assignment is the same.
func newEDSGroup(res cachev3.Resources, old, donor *edsGroup, hint []string) *edsGroup {
	if g := hintedEDSGroup(res, old, hint); g != nil {
		return g
	}
	g := &edsGroup{version: res.Version, diffs: map[string][]*anypb.Any{}}
	// Start from donor's items (a map copy, cheaper than 21,000 inserts) and replace those
	// that differ.
	if donor != nil {
		g.items = maps.Clone(donor.items)
	} else {
		g.items = make(map[string]*edsItem, len(res.Items))
	}
	var changed []string
	for name, r := range res.Items {
		// old's assignments are compared by content (a full translation rebuilds them
		// all); another view's only by identity.
		if it := g.items[name]; it != nil && (it.res == r.Resource || donor == old && proto.Equal(it.res, r.Resource)) {
			continue
		}
		g.items[name] = &edsItem{res: r.Resource}
		changed = append(changed, name)
	}
	if len(g.items) != len(res.Items) {
		for name := range g.items {
			if _, ok := res.Items[name]; !ok {
				delete(g.items, name)
			}
		}
	}
	if old != nil {
		g.addSince(old, changed)
	}
	return g
}

// hintedEDSGroup derives old's successor from the names hint says may differ (nil when it
// cannot: no old group, no hint, or a different set of names).
func hintedEDSGroup(res cachev3.Resources, old *edsGroup, hint []string) *edsGroup {
	if old == nil || hint == nil || len(res.Items) != len(old.items) {
		return nil
	}
	g := &edsGroup{version: res.Version, diffs: map[string][]*anypb.Any{}, items: maps.Clone(old.items)}
	var changed []string
	for _, name := range hint {
		r, ok := res.Items[name]
		it := g.items[name]
		switch {
		case !ok && it == nil:
			continue // another view's redis pool
		case !ok || it == nil:
			return nil // names differ after all: derive the long way
		case it.res == r.Resource:
			continue
		}
		g.items[name] = &edsItem{res: r.Resource}
		changed = append(changed, name)
	}
	g.addSince(old, changed)
	return g
}

// learn records the changes from old to g, when g was derived from another group (another
// view reached the same version first).
func (g *edsGroup) learn(old *edsGroup) {
	if _, ok := g.changesSince(old.version); ok || len(g.since) >= maxEDSHistory {
		return
	}
	var changed []string
	for name, it := range g.items {
		if o := old.items[name]; o != it && (o == nil || !proto.Equal(o.res, it.res)) {
			changed = append(changed, name)
		}
	}
	if len(changed) <= diffLimit(len(g.items)) {
		g.since = append(g.since, edsStep{old.version, changed})
	}
}

// addSince records changed as the change from old, and extends old's own history by it.
func (g *edsGroup) addSince(old *edsGroup, changed []string) {
	limit := diffLimit(len(g.items))
	if len(changed) > limit {
		return // past the bound the full set is sent; older versions cannot do better
	}
	g.since = append(g.since, edsStep{old.version, changed})
	for _, st := range old.since {
		if len(g.since) >= maxEDSHistory {
			break
		}
		v, names := st.from, st.names
		if v == g.version {
			continue
		}
		union := make([]string, 0, len(names)+len(changed))
		seen := make(map[string]bool, len(names)+len(changed))
		for _, n := range append(names[:len(names):len(names)], changed...) {
			// A name changed twice is sent once (a response naming a resource twice is
			// rejected); one no longer in the group is not sent.
			if !seen[n] && g.items[n] != nil {
				seen[n] = true
				union = append(union, n)
			}
		}
		if len(union) <= limit {
			g.since = append(g.since, edsStep{v, union})
		}
	}
}

// fingerprint names the exact resource names of a request.
func (w *edsWatcher) fingerprint(names []string) string {
	var h maphash.Hash
	h.SetSeed(w.seed)
	for _, n := range names {
		h.WriteString(n)
		h.WriteByte(0)
	}
	return strconv.Itoa(len(names)) + "." + strconv.FormatUint(h.Sum64(), 36)
}

// markerKey is where a response's marker lives in the returned resources: a name the
// request subscribes to, since go-control-plane drops returned names no longer subscribed
// (a wildcard request keeps them all).
func markerKey(names []string) string {
	if len(names) == 0 {
		return ""
	}
	return names[0]
}

// CreateWatch answers an EDS request now when the view has something the sidecar lacks,
// or parks it until the view's next version.
func (w *edsWatcher) CreateWatch(req *discoveryv3.DiscoveryRequest, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	key := viewHash{}.ID(req.GetNode())
	ew := &edsOpenWatch{req: req, sub: sub, ch: ch, fp: w.fingerprint(req.GetResourceNames())}
	if req.GetErrorDetail() == nil && req.GetVersionInfo() != "" &&
		sub.ReturnedResources()[markerKey(req.GetResourceNames())] == req.GetVersionInfo()+"/"+ew.fp {
		ew.base = req.GetVersionInfo()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	vs := w.views[key]
	if vs == nil {
		vs = &edsView{watches: map[uint64]*edsOpenWatch{}}
		w.views[key] = vs
	}
	if g := vs.group; g != nil {
		// A NACK of the current version waits for the next one (re-sending what was just
		// rejected would loop); anything else the sidecar lacks goes now.
		nackOfCurrent := req.GetErrorDetail() != nil && req.GetVersionInfo() == g.version
		if !nackOfCurrent && w.respond(ew, g) {
			return func() {}, nil
		}
	}
	w.nextID++
	id := w.nextID
	vs.watches[id] = ew
	return func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if vs := w.views[key]; vs != nil {
			delete(vs.watches, id)
			if vs.group == nil && len(vs.watches) == 0 {
				delete(w.views, key)
			}
		}
	}, nil
}

// respond sends ew what it lacks of g and reports whether it did. A watch whose sidecar
// holds g already is left open.
func (w *edsWatcher) respond(ew *edsOpenWatch, g *edsGroup) bool {
	var resources []*anypb.Any
	var err error
	switch changed, ok := g.changesSince(ew.base); {
	case ew.base == g.version:
		return false
	case ew.base != "" && ok:
		resources, err = g.diff(ew, changed)
	default:
		resources, err = g.full(ew)
	}
	if err != nil {
		// Unmarshalable resources never reach a snapshot (Snapshot validates them); if one
		// did, no response is better than a partial one.
		return false
	}
	names := ew.req.GetResourceNames()
	ew.ch <- &edsResponse{req: ew.req, version: g.version, resources: resources,
		returned: map[string]string{markerKey(names): g.version + "/" + ew.fp}}
	return true
}

// subscribed reports whether the watch asks for name.
func (ew *edsOpenWatch) subscribed(name string) bool {
	if ew.sub.IsWildcard() {
		return true
	}
	_, ok := ew.sub.SubscribedResources()[name]
	return ok
}

// diff is the changed assignments ew subscribes to, shared with every stream that
// subscribes to all of them.
func (g *edsGroup) diff(ew *edsOpenWatch, changed []string) ([]*anypb.Any, error) {
	all := true
	for _, n := range changed {
		if !ew.subscribed(n) {
			all = false
			break
		}
	}
	if all {
		if d, ok := g.diffs[ew.base]; ok {
			return d, nil
		}
	}
	out := make([]*anypb.Any, 0, len(changed))
	for _, n := range changed {
		if !all && !ew.subscribed(n) {
			continue
		}
		a, err := g.items[n].marshaled() // since holds names of g.items only
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	if all {
		g.diffs[ew.base] = out
	}
	return out, nil
}

// full is every assignment of g that ew subscribes to.
func (g *edsGroup) full(ew *edsOpenWatch) ([]*anypb.Any, error) {
	var out []*anypb.Any
	add := func(it *edsItem) error {
		a, err := it.marshaled()
		out = append(out, a)
		return err
	}
	if ew.sub.IsWildcard() {
		out = make([]*anypb.Any, 0, len(g.items))
		for _, it := range g.items {
			if err := add(it); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	out = make([]*anypb.Any, 0, len(ew.sub.SubscribedResources()))
	for n := range ew.sub.SubscribedResources() {
		if it := g.items[n]; it != nil {
			if err := add(it); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// edsResponse is one EDS response; its resources are shared, read-only, by every stream
// sent the same change, and GetDiscoveryResponse returns a new message each time (the
// server writes the stream's nonce into it).
type edsResponse struct {
	req       *discoveryv3.DiscoveryRequest
	version   string
	resources []*anypb.Any
	returned  map[string]string
}

var _ cachev3.Response = (*edsResponse)(nil)

func (r *edsResponse) GetDiscoveryResponse() (*discoveryv3.DiscoveryResponse, error) {
	return &discoveryv3.DiscoveryResponse{VersionInfo: r.version, Resources: r.resources, TypeUrl: resourcev3.EndpointType}, nil
}
func (r *edsResponse) GetRequest() *discoveryv3.DiscoveryRequest { return r.req }
func (r *edsResponse) GetVersion() (string, error)               { return r.version, nil }
func (r *edsResponse) GetResponseVersion() string                { return r.version }
func (r *edsResponse) GetReturnedResources() map[string]string   { return r.returned }
func (r *edsResponse) GetContext() context.Context               { return context.Background() }

// adsCache is the snapshot cache with state-of-the-world EDS watches answered by an
// edsWatcher; every other type, delta streams and fetches stay with the snapshot cache.
type adsCache struct {
	cachev3.SnapshotCache
	eds *edsWatcher
}

// CreateWatch routes EDS watches to the edsWatcher.
func (c adsCache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	if req.GetTypeUrl() == resourcev3.EndpointType {
		return c.eds.CreateWatch(req, sub, ch)
	}
	return c.SnapshotCache.CreateWatch(req, sub, ch)
}
