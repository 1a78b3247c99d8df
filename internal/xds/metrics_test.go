package xds

import (
	"context"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	dto "github.com/prometheus/client_model/go"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/weftmesh/weft/internal/snapshot"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
	"github.com/weftmesh/weft/sidecar/xdsclient"
)

// scrape gathers controller-runtime's registry — what the manager's /metrics serves — and
// returns the value of the series name{labels} (a counter's or gauge's value, a histogram's
// sample count), or -1 when there is no such series. labels are name, value pairs.
func scrape(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	fams, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if matches(m, labels) {
				switch {
				case m.Counter != nil:
					return m.GetCounter().GetValue()
				case m.Gauge != nil:
					return m.GetGauge().GetValue()
				case m.Histogram != nil:
					return float64(m.GetHistogram().GetSampleCount())
				}
			}
		}
	}
	return -1
}

func matches(m *dto.Metric, labels []string) bool {
	have := map[string]string{}
	for _, l := range m.GetLabel() {
		have[l.GetName()] = l.GetValue()
	}
	if len(have) != len(labels)/2 {
		return false
	}
	for i := 0; i+1 < len(labels); i += 2 {
		if v, ok := have[labels[i]]; !ok || v != labels[i+1] {
			return false
		}
	}
	return true
}

// histogramSum returns the sample sum of histogram name{labels} (0 without the series).
func histogramSum(t testing.TB, name string, labels ...string) float64 {
	t.Helper()
	fams, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if matches(m, labels) {
				return m.GetHistogram().GetSampleSum()
			}
		}
	}
	return 0
}

// labelValues lists the values label takes across the series of name.
func labelValues(t testing.TB, name, label string) []string {
	t.Helper()
	fams, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label {
					out = append(out, l.GetValue())
				}
			}
		}
	}
	return out
}

// counterDelta snapshots a series so a test can assert on what its own activity added: the
// registry is process-wide and other tests in the package use it too.
type counterDelta struct {
	t      testing.TB
	name   string
	labels []string
	base   float64
}

func track(t testing.TB, name string, labels ...string) *counterDelta {
	base := scrape(t, name, labels...)
	if base < 0 {
		base = 0
	}
	return &counterDelta{t: t, name: name, labels: labels, base: base}
}

func (c *counterDelta) added() float64 {
	v := scrape(c.t, c.name, c.labels...)
	if v < 0 {
		v = 0
	}
	return v - c.base
}

// A real sidecar xDS client connects, receives every type, ACKs them, and later rejects a
// cluster it does not support: each step shows on the manager's registry with the right
// type labels, in Weft's names and istiod's.
func TestMetricsFollowARealSidecar(t *testing.T) {
	ctx := context.Background()
	c := NewCache()
	res := snapshot.Translate(input("10.0.0.1"))
	if err := c.SetResult(ctx, res); err != nil {
		t.Fatal(err)
	}
	// The route's cluster, the Service's default cluster and the passthrough, black-hole and
	// inbound-passthrough clusters every sidecar gets.
	if got, want := scrape(t, "weft_xds_translated_resources", "type", "cluster"), float64(len(res.Clusters)); got != want || want < 2 {
		t.Errorf("translated clusters = %v, want %v (the result's, at least reviews' two)", got, want)
	}
	if got := scrape(t, "weft_xds_translated_resources", "type", snapshot.KindMeshRoute); got != 1 {
		t.Errorf("translated MeshRoutes = %v, want 1", got)
	}
	s := startServer(t, c)

	conn := track(t, "weft_xds_connected_sidecars", "stream", "sotw")
	pilot := track(t, "pilot_xds")
	versions := track(t, "weft_xds_snapshot_versions_total", "type_url", resourcev3.EndpointType)
	convergence := track(t, "pilot_proxy_convergence_time")
	pushes, pilotPushes, latency := map[string]*counterDelta{}, map[string]*counterDelta{}, map[string]*counterDelta{}
	short := map[string]string{resourcev3.ClusterType: "cds", resourcev3.EndpointType: "eds", resourcev3.ListenerType: "lds", resourcev3.RouteType: "rds"}
	for _, ty := range typesWithoutSecrets {
		pushes[ty] = track(t, "weft_xds_pushes_total", "type_url", ty)
		pilotPushes[ty] = track(t, "pilot_xds_pushes", "type", short[ty])
		latency[ty] = track(t, "weft_xds_push_latency_seconds", "type_url", ty)
	}

	n := node("productpage-1", "default", 9080)
	cl := xdsclient.New(xdsclient.Options{Address: s.Addr().String(), Node: n})
	cctx, cancel := context.WithCancel(ctx)
	runDone := make(chan struct{})
	go func() { _ = cl.Run(cctx); close(runDone) }()
	defer func() { cancel(); <-runDone }()

	poll.Until(t, 10*time.Second, func() bool {
		return len(s.Nodes()) == 1 && len(s.Nodes()[0].Acked) == len(typesWithoutSecrets) && convergence.added() == 1
	}, "waiting for the sidecar to ACK every type")
	if conn.added() != 1 || pilot.added() != 1 {
		t.Errorf("connected sotw +%v, pilot_xds +%v; want +1 each", conn.added(), pilot.added())
	}
	if versions.added() != 1 {
		t.Errorf("EDS versions set +%v, want +1 (the view's first snapshot)", versions.added())
	}
	for _, ty := range typesWithoutSecrets {
		if pushes[ty].added() < 1 || pushes[ty].added() != pilotPushes[ty].added() {
			t.Errorf("%s: pushes +%v, pilot_xds_pushes{type=%s} +%v; want the same, at least 1", ty, pushes[ty].added(), short[ty], pilotPushes[ty].added())
		}
		if latency[ty].added() != 1 {
			t.Errorf("%s: push latency observations +%v, want 1 (one ACK of the first version)", ty, latency[ty].added())
		}
	}

	// An endpoint change: one new EDS version, pushed and ACKed; no other type moves. The
	// observed latency is a real duration no longer than the time since the change.
	sum0 := histogramSum(t, "weft_xds_push_latency_seconds", "type_url", resourcev3.EndpointType)
	changed := time.Now()
	if err := c.SetResult(ctx, snapshot.Translate(input("10.0.0.1", "10.0.0.2"))); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, func() bool { return latency[resourcev3.EndpointType].added() == 2 }, "waiting for the EDS ACK")
	if got := histogramSum(t, "weft_xds_push_latency_seconds", "type_url", resourcev3.EndpointType) - sum0; got <= 0 || got > time.Since(changed).Seconds() {
		t.Errorf("EDS push latency observed %vs, want within (0, %vs]", got, time.Since(changed).Seconds())
	}
	if versions.added() != 2 {
		t.Errorf("EDS versions set +%v, want +2", versions.added())
	}
	if got := latency[resourcev3.ClusterType].added(); got != 1 {
		t.Errorf("CDS latency observations +%v after an endpoint-only change, want still 1", got)
	}
	poll.Until(t, 10*time.Second, func() bool { return convergence.added() == 2 }, "waiting for the second convergence")

	// A cluster the sidecar cannot run: it NACKs, and the manager counts the NACK by type.
	nacks := track(t, "weft_xds_nacks_total", "type_url", resourcev3.ClusterType)
	rejects := track(t, "pilot_total_xds_rejects", "type", "cds")
	setUnsupportedCluster(t, c, snapshot.ViewFromNode(n))
	poll.Until(t, 10*time.Second, func() bool { return nacks.added() == 1 }, "waiting for the sidecar's NACK")
	if rejects.added() != 1 {
		t.Errorf("pilot_total_xds_rejects{type=cds} +%v, want +1", rejects.added())
	}
	if !strings.Contains(cl.Status().LastNACK[resourcev3.ClusterType], "MAGLEV") {
		t.Errorf("client status = %+v, want a CDS NACK naming MAGLEV", cl.Status())
	}

	cancel()
	<-runDone
	poll.Until(t, 10*time.Second, func() bool { return conn.added() == 0 && pilot.added() == 0 }, "waiting for the disconnect to count")
}

// setUnsupportedCluster puts a new CDS version straight into the snapshot cache whose cluster
// uses MAGLEV, which the Weft sidecar rejects.
func setUnsupportedCluster(t *testing.T, c *Cache, v snapshot.View) {
	t.Helper()
	snap, err := c.Result().Snapshot(v)
	if err != nil {
		t.Fatal(err)
	}
	var clusters []types.Resource
	for _, r := range snap.GetResources(resourcev3.ClusterType) {
		cl := proto.Clone(r.(*clusterv3.Cluster)).(*clusterv3.Cluster)
		if cl.GetName() == reviewsCluster { // only the route's cluster: the NACK names MAGLEV
			cl.LbPolicy = clusterv3.Cluster_MAGLEV
		}
		clusters = append(clusters, cl)
	}
	snap.Resources[cachev3.GetResponseType(resourcev3.ClusterType)] = cachev3.NewResources("maglev", clusters)
	if err := c.cache.SetSnapshot(context.Background(), v.Key(), snap); err != nil {
		t.Fatal(err)
	}
}

// A client that NACKs type URLs Weft never serves cannot mint series: they count as
// "other". A delta stream counts under stream="delta".
func TestMetricsForgedTypeAndDeltaStream(t *testing.T) {
	c := NewCache()
	if err := c.SetResult(context.Background(), snapshot.Translate(input("10.0.0.1"))); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, c)
	other := track(t, "weft_xds_nacks_total", "type_url", "other")
	st := adsStream(t, s.Addr().String())
	n := node("forger-1", "default", 0)
	for i := 0; i < 50; i++ {
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: n, TypeUrl: "type.googleapis.com/forged." + strings.Repeat("x", i),
			ResponseNonce: "1", ErrorDetail: &rpcstatus.Status{Code: 3, Message: "no"}}); err != nil {
			t.Fatal(err)
		}
	}
	poll.Until(t, 10*time.Second, func() bool { return other.added() == 50 }, "waiting for 50 forged NACKs under other")
	for _, v := range labelValues(t, "weft_xds_nacks_total", "type_url") {
		if strings.Contains(v, "forged") {
			t.Fatalf("a forged type URL became a label: %s", v)
		}
	}

	delta := track(t, "weft_xds_connected_sidecars", "stream", "delta")
	conn, err := grpc.NewClient(s.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	ds, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ds.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node("delta-1", "default", 0), TypeUrl: resourcev3.ClusterType,
		ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ds.Recv(); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, func() bool { return delta.added() == 1 }, "waiting for the delta stream to count")
	// Regression: go-control-plane gives the first sotw and the first delta stream the same
	// ID 1; both sidecars must be tracked.
	if got := len(s.Nodes()); got != 2 {
		t.Errorf("tracked sidecars = %d, want 2 (forger-1 on sotw stream 1, delta-1 on delta stream 1)", got)
	}
	cancel()
	poll.Until(t, 10*time.Second, func() bool { return delta.added() == 0 }, "waiting for the delta stream to be uncounted")
}

// A sidecar that subscribes after a version was set has waited only since it subscribed.
func TestPushLatencyCountsFromTheLaterOfSetAndSubscribe(t *testing.T) {
	t0 := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name        string
		set, opened time.Time
		want        time.Duration
	}{
		{"set after the stream opened", t0.Add(time.Second), t0, 2 * time.Second},
		{"stream opened after the set", t0, t0.Add(2500 * time.Millisecond), 500 * time.Millisecond},
	} {
		if got := since(t0.Add(3*time.Second), tc.set, tc.opened); got != tc.want {
			t.Errorf("%s: latency %v, want %v", tc.name, got, tc.want)
		}
	}
}
