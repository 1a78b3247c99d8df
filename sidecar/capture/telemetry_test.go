package capture

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"k8s.io/utils/clock"

	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
	"github.com/weftmesh/weft/sidecar/telemetry"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// TestIstioTCPMetrics proxies a TCP connection with known byte counts each way through
// the outbound TCP chain and reads Istio's TCP metrics as Prometheus parses them.
func TestIstioTCPMetrics(t *testing.T) {
	srv := tcpServer(t, func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		_, _ = c.Write(bytes.Repeat([]byte("y"), int(2*n)))
	})
	tel := telemetry.New(telemetry.Options{Self: telemetry.WorkloadFromPod("web-7d4b9c-abcde", "default",
		map[string]string{"app": "web", "pod-template-hash": "7d4b9c"})})
	cfg, err := config.Build(mesh{redis: srv, listenAddr: "127.0.0.1:15001"}.resources(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ups := upstream.NewManager(ctx, clock.RealClock{})
	ups.Update(cfg.Clusters) // httpproxy.Proxy.Apply does this in the sidecar
	capt := New(Options{Upstreams: ups, HTTP: &ref{},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Telemetry: tel})
	capt.Apply(cfg)
	front := (&sidecar{capt: capt}).front(t, "10.96.0.30:6379")

	for range 2 {
		c, err := net.Dial("tcp", front)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(bytes.Repeat([]byte("x"), 1000)); err != nil {
			t.Fatal(err)
		}
		_ = c.(*net.TCPConn).CloseWrite()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || len(got) != 2000 {
			t.Fatalf("answer: %d bytes, %v; want 2000", len(got), err)
		}
	}
	want := map[string]float64{"istio_tcp_connections_opened_total": 2, "istio_tcp_connections_closed_total": 2,
		"istio_tcp_received_bytes_total": 2000, "istio_tcp_sent_bytes_total": 4000}
	var last string
	poll.Until(t, 5*time.Second, func() bool {
		var buf bytes.Buffer
		tel.WritePrometheus(&buf)
		last = buf.String()
		p := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := p.TextToMetricFamilies(strings.NewReader(last))
		if err != nil {
			t.Fatalf("exposition does not parse: %v", err)
		}
		for name, v := range want {
			f := fams[name]
			if f == nil || len(f.Metric) != 1 || f.Metric[0].GetCounter().GetValue() != v {
				return false
			}
			labels := map[string]string{}
			for _, lp := range f.Metric[0].Label {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["reporter"] != "source" || labels["source_workload"] != "web" || labels["request_protocol"] != "tcp" ||
				labels["destination_service"] != "redis.default.svc.cluster.local" || labels["destination_service_namespace"] != "default" {
				t.Fatalf("%s labels %v", name, labels)
			}
		}
		return true
	}, "Istio TCP metrics never matched %v; last scrape:\n%s", want, lastScrape{&last})
}

// lastScrape prints the latest scrape when the wait fails.
type lastScrape struct{ s *string }

func (l lastScrape) String() string { return *l.s }
