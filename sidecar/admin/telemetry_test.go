package admin

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/telemetry"
)

// Istio's metrics are served, next to Weft's own, on the pod-address metrics endpoint
// Prometheus scrapes (:15020/stats/prometheus), and the whole page still parses.
func TestIstioMetricsOnTheMetricsEndpoint(t *testing.T) {
	tel := telemetry.New(telemetry.Options{Self: telemetry.WorkloadFromPod("web-1", "default", nil)})
	tel.Record(&telemetry.HTTPRecord{Cluster: "outbound|80||api.default.svc.cluster.local|default/api", Status: 200, GRPCStatus: -1})
	tel.TCP(false, "outbound|6379||redis.default.svc.cluster.local|default/redis").Opened()
	s := New(Options{Config: func() *config.Config { return nil }})
	s.AddStats(fixedStats("# TYPE weft_listener_requests_total counter\nweft_listener_requests_total{listener=\"outbound_http\"} 1\n"))
	s.AddStats(tel)
	srv := httptest.NewServer(s.MetricsHandler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/stats/prometheus")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/stats/prometheus does not parse: %v", err)
	}
	for _, name := range []string{"weft_listener_requests_total", "istio_requests_total", "istio_request_duration_milliseconds",
		"istio_request_bytes", "istio_response_bytes", "istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total",
		"istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total"} {
		if fams[name] == nil {
			t.Errorf("%s missing from the metrics endpoint", name)
		}
	}
	if got := fams["istio_requests_total"].GetMetric()[0].GetCounter().GetValue(); got != 1 {
		t.Errorf("istio_requests_total = %v, want 1", got)
	}
}
