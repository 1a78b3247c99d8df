package xds

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/weftmesh/weft/internal/snapshot"
)

// Types are the resource types Weft serves, in make-before-break order. Secrets (SDS) are
// the Redis passwords and queue credentials of the view, and nothing else (docs/zero-trust.md).
var Types = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType, resourcev3.SecretType}

// viewHash maps a node to its view key: the snapshot cache then holds one snapshot per view,
// shared by every sidecar in it.
type viewHash struct{}

// ID is the node's view key.
func (viewHash) ID(n *corev3.Node) string { return snapshot.ViewFromNode(n).Key() }

// Cache wraps the snapshot cache with the current translation: it is the only place that
// calls SetSnapshot.
type Cache struct {
	cache cachev3.SnapshotCache

	mu     sync.Mutex
	result *snapshot.Result
	views  map[string]*viewState // by view key
	// groups holds one resource group per (type, version) among the views' snapshots: a
	// version is a hash of the group's content, so views with equal versions share one
	// group (one map of clusters, not one per view). At most 4 entries per view set since
	// the last full translation, which empties it.
	groups map[groupKey]cachev3.Resources
	// eds answers state-of-the-world EDS watches with only what changed (eds_watch.go); it
	// is given each view's endpoints before the snapshot cache is.
	eds *edsWatcher
}

type groupKey struct {
	slot    int
	version string
}

type viewState struct {
	view     snapshot.View
	nodes    int
	versions map[string]string // type → version, only types the view has resources of
	// setAt is when each type's current version was set, for the push-latency metric.
	setAt map[string]time.Time
	// snap is the snapshot last set, whose clusters, listeners and routes an endpoint-only
	// change reuses as they are.
	snap *cachev3.Snapshot
	// edsOf is the Result whose endpoints the view's EDS watches were last given, for the
	// changed-names hint of an endpoint-only update (edsWatcher.set).
	edsOf *snapshot.Result
}

// NewCache returns an empty cache. ads=true makes go-control-plane answer watches of one
// node in CDS → EDS → LDS → RDS order (make-before-break).
func NewCache() *Cache {
	return &Cache{cache: cachev3.NewSnapshotCache(true, viewHash{}, nil), views: map[string]*viewState{}, groups: map[groupKey]cachev3.Resources{},
		eds: newEDSWatcher()}
}

// SetResult installs a new translation and updates the snapshot of every view that has a
// connected sidecar. A view whose versions did not change is not touched, so nothing is
// pushed for identical input.
//
// When r differs from the translation served only in endpoints (snapshot.UpdateEndpoints
// made one from the other), each view keeps its clusters, listeners and route
// configurations — the very resource groups, with their versions — and gets only new
// endpoints: go-control-plane then answers only the EDS watches, and building a view's
// snapshot costs no more than its endpoints.
func (c *Cache) SetResult(ctx context.Context, r *snapshot.Result) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	edsOnly := c.result.SameButEndpoints(r)
	if !edsOnly {
		clear(c.groups)
	}
	prev := c.result
	changed, _ := r.ChangedEndpoints(prev)
	c.result = r
	recordResources(r)
	var firstErr error
	for key, vs := range c.views {
		var err error
		if edsOnly && vs.snap != nil {
			hint := changed
			if vs.edsOf != prev {
				hint = nil // the view's endpoints are not prev's: a set failed
			}
			err = c.setEndpointsLocked(ctx, key, vs, hint)
		} else {
			err = c.setLocked(ctx, key, vs)
		}
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// edsSlot is the endpoints' place in a snapshot's resource groups.
var edsSlot = cachev3.GetResponseType(resourcev3.EndpointType)

// setEndpointsLocked replaces the endpoints of the view's last snapshot; changed names the
// only assignments that may differ (nil: not known).
func (c *Cache) setEndpointsLocked(ctx context.Context, key string, vs *viewState, changed []string) error {
	eds, err := c.result.EndpointResources(vs.view)
	if err != nil {
		return fmt.Errorf("building the endpoints of view %s: %w", key, err)
	}
	if vs.versions[resourcev3.EndpointType] == eds.Version || vs.versions[resourcev3.EndpointType] == "" && len(eds.Items) == 0 {
		vs.edsOf = c.result
		return nil
	}
	snap := &cachev3.Snapshot{Resources: vs.snap.Resources}
	snap.Resources[edsSlot] = eds
	c.eds.set(key, eds, changed)
	vs.edsOf = c.result
	if err := c.cache.SetSnapshot(ctx, key, snap); err != nil {
		return fmt.Errorf("setting snapshot of view %s: %w", key, err)
	}
	versions := make(map[string]string, len(vs.versions))
	for t, v := range vs.versions {
		versions[t] = v
	}
	delete(versions, resourcev3.EndpointType)
	if len(eds.Items) > 0 {
		versions[resourcev3.EndpointType] = eds.Version
	}
	vs.recordVersions(versions, time.Now())
	vs.versions, vs.snap = versions, snap
	return nil
}

func (c *Cache) setLocked(ctx context.Context, key string, vs *viewState) error {
	if c.result == nil {
		return nil
	}
	snap, err := c.result.Snapshot(vs.view)
	if err != nil {
		return fmt.Errorf("building snapshot of view %s: %w", key, err)
	}
	versions := map[string]string{}
	same := vs.versions != nil
	for _, t := range Types {
		if len(snap.GetResources(t)) > 0 {
			versions[t] = snap.GetVersion(t)
		}
		if vs.versions[t] != snap.GetVersion(t) && (vs.versions[t] != "" || len(snap.GetResources(t)) > 0) {
			same = false
		}
	}
	if same {
		if vs.snap == nil {
			vs.snap = snap
		}
		vs.edsOf = c.result
		return nil
	}
	for i, g := range snap.Resources {
		if len(g.Items) == 0 {
			continue
		}
		k := groupKey{i, g.Version}
		if have, ok := c.groups[k]; ok {
			snap.Resources[i] = have
		} else {
			c.groups[k] = g
		}
	}
	// Make-before-break across the two caches: the snapshot cache answers CDS → LDS → RDS
	// in one SetSnapshot and the edsWatcher answers EDS, so a change of clusters is set
	// first with the previous listeners and routes, then the endpoints, then the rest.
	if vs.versions[resourcev3.ClusterType] != snap.GetVersion(resourcev3.ClusterType) {
		mid := &cachev3.Snapshot{Resources: snap.Resources}
		for _, t := range []string{resourcev3.ListenerType, resourcev3.RouteType} {
			i := cachev3.GetResponseType(t)
			mid.Resources[i] = cachev3.Resources{}
			if vs.snap != nil {
				mid.Resources[i] = vs.snap.Resources[i]
			}
		}
		if err := c.cache.SetSnapshot(ctx, key, mid); err != nil {
			return fmt.Errorf("setting snapshot of view %s: %w", key, err)
		}
	}
	c.eds.set(key, snap.Resources[edsSlot], nil)
	vs.edsOf = c.result
	if err := c.cache.SetSnapshot(ctx, key, snap); err != nil {
		return fmt.Errorf("setting snapshot of view %s: %w", key, err)
	}
	vs.recordVersions(versions, time.Now())
	vs.versions, vs.snap = versions, snap
	return nil
}

// addNode counts a sidecar into its view, building the view's snapshot when it is the first.
func (c *Cache) addNode(ctx context.Context, v snapshot.View) error {
	key := v.Key()
	c.mu.Lock()
	defer c.mu.Unlock()
	vs, ok := c.views[key]
	if !ok {
		vs = &viewState{view: v}
		c.views[key] = vs
	}
	vs.nodes++
	if !ok {
		return c.setLocked(ctx, key, vs)
	}
	return nil
}

// removeNode forgets a sidecar; the last one of a view takes the view's snapshot with it.
func (c *Cache) removeNode(v snapshot.View) {
	key := v.Key()
	c.mu.Lock()
	defer c.mu.Unlock()
	vs, ok := c.views[key]
	if !ok {
		return
	}
	if vs.nodes--; vs.nodes <= 0 {
		delete(c.views, key)
		c.cache.ClearSnapshot(key)
		c.eds.clear(key)
	}
}

// Versions returns the versions the view's current snapshot has, for the types it has
// resources of (a sidecar never subscribes to an empty type).
func (c *Cache) Versions(v snapshot.View) map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	vs, ok := c.views[v.Key()]
	if !ok {
		return nil
	}
	out := make(map[string]string, len(vs.versions))
	for k, ver := range vs.versions {
		out[k] = ver
	}
	return out
}

// Result is the translation currently served.
func (c *Cache) Result() *snapshot.Result {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.result
}
