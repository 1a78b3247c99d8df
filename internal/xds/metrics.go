package xds

import (
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/weftmesh/weft/internal/snapshot"
)

// The xDS server's metrics, on controller-runtime's registry (served on the manager's
// metrics endpoint). Two families per fact where Istio has one of the same meaning: Weft's
// own, labelled by full type URL, and istiod's name and labels (type=cds|eds|lds|rds), so
// the Istio control-plane dashboard reads a Weft manager. Labels are type URLs, stream kinds
// and resource kinds only — never node IDs or pod names — so the series count is fixed: at
// most 5 per type-labelled family (the 4 types Weft serves, plus "other" for any type URL a
// sidecar sends in a NACK), 2 stream kinds, 6 resource kinds.
var (
	connected = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "weft_xds_connected_sidecars",
		Help: "ADS streams open on this replica whose sidecar has identified itself, by stream kind (sotw or delta).",
	}, []string{"stream"})
	pilotXDS = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pilot_xds",
		Help: "Number of endpoints connected to this pilot using XDS (istiod-compatible: Weft ADS streams of either kind).",
	})
	pushes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weft_xds_pushes_total",
		Help: "xDS responses sent to sidecars, by type URL.",
	}, []string{"type_url"})
	pilotPushes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pilot_xds_pushes",
		Help: "Pilot build and send errors for lds, rds, cds and eds (istiod-compatible: Weft counts every response sent, by type).",
	}, []string{"type"})
	nacks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weft_xds_nacks_total",
		Help: "xDS responses a sidecar rejected (a request carrying error_detail), by type URL.",
	}, []string{"type_url"})
	pilotRejects = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pilot_total_xds_rejects",
		Help: "Total number of XDS responses from pilot rejected by proxy (istiod-compatible).",
	}, []string{"type"})
	pushLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "weft_xds_push_latency_seconds",
		Help: "Time from the manager setting a new version of a type in a sidecar's snapshot (or the sidecar subscribing, if later) to that sidecar ACKing it, by type URL.",
		// 1 ms to 30 s: a loopback ACK is around a millisecond; Istio's convergence
		// buckets stop at 30 s.
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"type_url"})
	pilotConvergence = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "pilot_proxy_convergence_time",
		Help: "Delay in seconds between config change and a proxy receiving all required configuration (istiod-compatible: from the newest snapshot change to the sidecar having ACKed every type of it).",
		// Istio's buckets (pilot/pkg/xds/monitoring.go), so its dashboard's quantiles match.
		Buckets: []float64{.1, .5, 1, 3, 5, 10, 20, 30},
	})
	versionsSet = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weft_xds_snapshot_versions_total",
		Help: "New versions set in the snapshot cache, summed over node views, by type URL (a view whose type did not change is not counted).",
	}, []string{"type_url"})
	resources = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "weft_xds_translated_resources",
		Help: "Resources in the translation currently served, by type: cluster and cluster_load_assignment (shared by every sidecar), redis_pool, and the MeshRoute/MeshFunction/RedisProxy objects translated.",
	}, []string{"type"})
)

func init() {
	metrics.Registry.MustRegister(connected, pilotXDS, pushes, pilotPushes, nacks, pilotRejects,
		pushLatency, pilotConvergence, versionsSet, resources)
}

// typeMetrics are one type URL's series, resolved once so the per-response path is an
// atomic add, not a label lookup.
type typeMetrics struct {
	push, pilotPush, nack, pilotReject, version prometheus.Counter
	latency                                     prometheus.Observer
}

var (
	byType     = map[string]*typeMetrics{}
	otherType  = newTypeMetrics("other", "other")
	streamSotW = connected.WithLabelValues("sotw")
	streamDlt  = connected.WithLabelValues("delta")
)

func init() {
	short := map[string]string{resourcev3.ClusterType: "cds", resourcev3.EndpointType: "eds",
		resourcev3.ListenerType: "lds", resourcev3.RouteType: "rds", resourcev3.SecretType: "sds"}
	for _, t := range Types {
		byType[t] = newTypeMetrics(t, short[t])
	}
}

func newTypeMetrics(url, short string) *typeMetrics {
	return &typeMetrics{
		push: pushes.WithLabelValues(url), pilotPush: pilotPushes.WithLabelValues(short),
		nack: nacks.WithLabelValues(url), pilotReject: pilotRejects.WithLabelValues(short),
		version: versionsSet.WithLabelValues(url), latency: pushLatency.WithLabelValues(url),
	}
}

// metricsOf returns a type URL's series; a type Weft does not serve (a sidecar can put any
// string in a NACK) shares "other", so a client cannot mint series.
func metricsOf(typeURL string) *typeMetrics {
	if m, ok := byType[typeURL]; ok {
		return m
	}
	return otherType
}

func streamGauge(delta bool) prometheus.Gauge {
	if delta {
		return streamDlt
	}
	return streamSotW
}

func recordStreamOpen(delta bool) {
	streamGauge(delta).Inc()
	pilotXDS.Inc()
}

func recordStreamClose(delta bool) {
	streamGauge(delta).Dec()
	pilotXDS.Dec()
}

// recordResources sets the resource-count gauges from a translation.
func recordResources(r *snapshot.Result) {
	if r == nil {
		return
	}
	resources.WithLabelValues("cluster").Set(float64(len(r.Clusters)))
	resources.WithLabelValues("cluster_load_assignment").Set(float64(len(r.Endpoints)))
	resources.WithLabelValues("redis_pool").Set(float64(len(r.Redis)))
	kinds := map[string]int{snapshot.KindMeshRoute: 0, snapshot.KindMeshFunction: 0, snapshot.KindRedisProxy: 0}
	for k := range r.Status {
		kinds[k.Kind]++
	}
	for k, n := range kinds {
		resources.WithLabelValues(k).Set(float64(n))
	}
}

// since is the latency of an ACK: from the later of when the version was set and when the
// stream subscribed (a sidecar joining an old snapshot has waited only since it joined).
func since(now, set, opened time.Time) time.Duration {
	if opened.After(set) {
		set = opened
	}
	return now.Sub(set)
}

// recordVersions counts the types whose version changes from vs.versions to next and stamps
// when they changed. Call it with the cache's lock held, before vs.versions = next.
func (vs *viewState) recordVersions(next map[string]string, now time.Time) {
	if vs.setAt == nil {
		vs.setAt = map[string]time.Time{}
	}
	for t, ver := range next {
		if vs.versions[t] != ver {
			metricsOf(t).version.Inc()
			vs.setAt[t] = now
		}
	}
}

// ackTimes returns, if version is the current version of typeURL in the view with key
// viewKey, when it was set (ok), and the view's current versions with the newest time any
// of them was set.
func (c *Cache) ackTimes(viewKey, typeURL, version string) (set time.Time, ok bool, want map[string]string, newest time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	vs := c.views[viewKey]
	if vs == nil || vs.versions[typeURL] != version || version == "" {
		return time.Time{}, false, nil, time.Time{}
	}
	want = make(map[string]string, len(vs.versions))
	for t, ver := range vs.versions {
		want[t] = ver
		if at := vs.setAt[t]; at.After(newest) {
			newest = at
		}
	}
	return vs.setAt[typeURL], true, want, newest
}

// observeAck records the push latency of an ACK that changed what the stream's sidecar runs
// and, when that ACK completes the sidecar's view (every type at its current version), its
// convergence time. The ACK path is per push per sidecar, not per request byte: one lock of
// the cache and two of the tracker.
func (c *callbacks) observeAck(streamID streamKey, typeURL, version string) {
	key, opened, _, ok := c.tracker.streamOf(streamID)
	if !ok {
		return
	}
	set, ok, want, newest := c.cache.ackTimes(key, typeURL, version)
	if !ok {
		return // an older version, ACKed after a newer one was set: not a convergence
	}
	now := time.Now()
	metricsOf(typeURL).latency.Observe(since(now, set, opened).Seconds())
	if c.tracker.syncedTo(streamID, want) {
		pilotConvergence.Observe(since(now, newest, opened).Seconds())
	}
}

func recordPush(typeURL string) {
	m := metricsOf(typeURL)
	m.push.Inc()
	m.pilotPush.Inc()
}

func recordNACK(typeURL string) {
	m := metricsOf(typeURL)
	m.nack.Inc()
	m.pilotReject.Inc()
}
