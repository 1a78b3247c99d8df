package telemetry

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func parse(t *testing.T, m *Mesh) string {
	t.Helper()
	var buf bytes.Buffer
	m.WritePrometheus(&buf)
	p := expfmt.NewTextParser(model.UTF8Validation)
	if _, err := p.TextToMetricFamilies(bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatalf("exposition does not parse: %v\n%s", err, buf.String())
	}
	return buf.String()
}

func TestWorkloadFromPod(t *testing.T) {
	for _, c := range []struct {
		pod    string
		labels map[string]string
		want   Workload
	}{
		{"reviews-v1-7c9d6f8b5-x2x9q", map[string]string{"app": "reviews", "version": "v1", "pod-template-hash": "7c9d6f8b5"},
			Workload{Name: "reviews-v1", Namespace: "ns", App: "reviews", Version: "v1", CanonicalService: "reviews", CanonicalRevision: "v1", Principal: Unknown, Cluster: Unknown}},
		{"db-0", nil, Workload{Name: "db-0", Namespace: "ns", App: Unknown, Version: Unknown, CanonicalService: "db-0", CanonicalRevision: "latest", Principal: Unknown, Cluster: Unknown}},
		{"x-abc-1", map[string]string{"pod-template-hash": "zzz", "service.istio.io/canonical-name": "cs", "app.kubernetes.io/name": "n"},
			Workload{Name: "x-abc-1", Namespace: "ns", App: "n", Version: Unknown, CanonicalService: "cs", CanonicalRevision: "latest", Principal: Unknown, Cluster: Unknown}},
	} {
		if got := WorkloadFromPod(c.pod, "ns", c.labels); got != c.want {
			t.Errorf("WorkloadFromPod(%q) = %+v, want %+v", c.pod, got, c.want)
		}
	}
}

// A forged or hostile peer header never puts odd text into the exposition, and an
// unbounded number of distinct forged peers does not grow memory past the caps.
func TestForgedPeerHeaders(t *testing.T) {
	m := New(Options{Self: WorkloadFromPod("me", "ns", nil), MaxSeries: 50})
	hostile := []string{
		"n=a\"b&ns=x",                   // a quote
		"n=a%0Ab&ns=x",                  // a newline
		"n=" + strings.Repeat("a", 300), // too long a value
		strings.Repeat("n=a&", 400),     // too long a header
		"%zz",                           // not a query
		"n=%E2%80%AE&ns=rtl",            // a unicode control
	}
	for _, h := range hostile {
		m.Record(&HTTPRecord{Inbound: true, Peer: h, Status: 200, GRPCStatus: -1})
	}
	out := parse(t, m)
	if strings.Contains(out, "a\"b") || strings.Contains(out, "\u202e") {
		t.Errorf("hostile label text reached the exposition:\n%s", out)
	}
	for i := range 5000 {
		m.Record(&HTTPRecord{Inbound: true, Peer: fmt.Sprintf("n=w%d&ns=x", i), Status: 200, GRPCStatus: -1})
	}
	peers, series := m.peers.len(), m.http.len()
	if peers > maxPeers || series > 51 {
		t.Errorf("%d peers and %d series interned; caps are %d and 50 (+1 overflow series)", peers, series, maxPeers)
	}
	out = parse(t, m)
	if !strings.Contains(out, `source_workload="overflow"`) || strings.Contains(out, "weft_telemetry_series_overflow_total 0\n") {
		t.Error("label sets past the cap were not counted in the overflow series")
	}
}

// Every response code is its own series up to the cap, and then one overflow series
// still counts every request: nothing is lost, cardinality stays bounded.
func TestSeriesCapKeepsCounting(t *testing.T) {
	m := New(Options{Self: WorkloadFromPod("me", "ns", nil), MaxSeries: 10})
	for code := 100; code < 600; code++ {
		m.Record(&HTTPRecord{Cluster: "outbound|80||a.b.svc.cluster.local|b/r", Status: code, GRPCStatus: -1, Duration: time.Millisecond})
	}
	var total float64
	p := expfmt.NewTextParser(model.UTF8Validation)
	var buf bytes.Buffer
	m.WritePrometheus(&buf)
	fams, err := p.TextToMetricFamilies(&buf)
	if err != nil {
		t.Fatal(err)
	}
	f := fams["istio_requests_total"]
	for _, s := range f.Metric {
		total += s.GetCounter().GetValue()
	}
	if len(f.Metric) != 11 || total != 500 {
		t.Errorf("%d series counting %v requests; want 10 + 1 overflow counting all 500", len(f.Metric), total)
	}
}

func TestServiceOfCluster(t *testing.T) {
	for cl, want := range map[string][3]string{
		"outbound|9080|v2|reviews.bookinfo.svc.cluster.local|bookinfo/reviews": {"reviews.bookinfo.svc.cluster.local", "reviews", "bookinfo"},
		"function|fns/resize": {"resize.fns.svc.cluster.local", "resize", "fns"},
		"PassthroughCluster":  {"PassthroughCluster", "PassthroughCluster", Unknown},
	} {
		s := serviceOfCluster(cl)
		if got := [3]string{s.host, s.name, s.namespace}; got != want {
			t.Errorf("serviceOfCluster(%q) = %v, want %v", cl, got, want)
		}
	}
	if v := serviceOfCluster("outbound|9080|v2|reviews.bookinfo.svc.cluster.local|bookinfo/reviews").dst.version; v != "v2" {
		t.Errorf("subset as destination_version = %q, want v2", v)
	}
}

// syncBuffer is a writer the test reads while the access log writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func TestAccessLogLines(t *testing.T) {
	var out syncBuffer
	al := NewAccessLog(AccessLogOptions{Out: &out, MinStatus: 500})
	m := New(Options{Self: WorkloadFromPod("me", "ns", nil), AccessLog: al})
	start := time.Date(2026, 12, 4, 13, 0, 0, 123e6, time.UTC)
	m.Record(&HTTPRecord{Inbound: true, Peer: "n=caller&ns=other", Status: 503, Flags: "UH", GRPCStatus: -1, Start: start,
		Duration: 42 * time.Millisecond, Method: "GET", Path: "/a?\"q\"=\x01\xff", Protocol: "HTTP/1.1", ReqBytes: 3, RespBytes: 19,
		Cluster: "inbound|8080", UpstreamHost: "127.0.0.1:8080", RequestID: "rid", Authority: "web", UserAgent: "curl/8"})
	m.Record(&HTTPRecord{Status: 200, GRPCStatus: -1, Start: start}) // filtered out: under 500
	m.Record(&HTTPRecord{Status: 0, GRPCStatus: -1, Start: start, Flags: "DC"})
	al.Close()
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2 (the 503 and the unanswered one):\n%s", len(lines), out.String())
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &got); err != nil {
		t.Fatalf("line is not JSON: %v\n%s", err, lines[0])
	}
	want := map[string]any{"start_time": "2026-12-04T13:00:00.123Z", "method": "GET", "path": "/a?\"q\"=\x01\ufffd",
		"protocol": "HTTP/1.1", "response_code": 503.0, "response_flags": "UH", "bytes_received": 3.0, "bytes_sent": 19.0,
		"duration": 42.0, "upstream_host": "127.0.0.1:8080", "upstream_cluster": "inbound|8080", "x_request_id": "rid",
		"authority": "web", "user_agent": "curl/8", "downstream_peer": "caller.other", "downstream_peer_principal": "unknown"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %#v, want %#v", k, got[k], v)
		}
	}
}

// blockingWriter blocks every write until released: stdout that nobody reads.
type blockingWriter struct{ release chan struct{} }

func (b *blockingWriter) Write(p []byte) (int, error) { <-b.release; return len(p), nil }

// A stuck stdout never blocks traffic: lines past the buffer are dropped and counted.
func TestAccessLogDropsWhenStdoutIsStuck(t *testing.T) {
	bw := &blockingWriter{release: make(chan struct{})}
	al := NewAccessLog(AccessLogOptions{Out: bw, Buffer: 64 << 10})
	m := New(Options{Self: WorkloadFromPod("me", "ns", nil), AccessLog: al})
	done := make(chan struct{})
	go func() {
		for range 1000 {
			m.Record(&HTTPRecord{Status: 200, GRPCStatus: -1, Path: strings.Repeat("p", 20000)})
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("recording blocked on a stuck access-log writer")
	}
	written, dropped := al.Stats()
	if written+dropped != 1000 || dropped < 900 {
		t.Errorf("written %d, dropped %d; want all 1000 accounted for, most dropped", written, dropped)
	}
	if !strings.Contains(parse(t, m), fmt.Sprintf("weft_access_log_dropped_total %d", dropped)) {
		t.Error("drops are not exported")
	}
	close(bw.release)
	al.Close()
}

func TestAccessLogSampling(t *testing.T) {
	var out syncBuffer
	al := NewAccessLog(AccessLogOptions{Out: &out, SamplePerMillion: 100_000})
	for range 10000 {
		al.Log(&HTTPRecord{Status: 200}, unknownSide)
	}
	al.Close()
	n := strings.Count(out.String(), "\n")
	if n < 800 || n > 1200 { // 10 % of 10,000: 1,000 ± 6.6 σ
		t.Errorf("%d of 10000 lines at a 10%% sample", n)
	}
}

// An access log limited to one listener writes only that listener's exchanges.
func TestAccessLogOneListener(t *testing.T) {
	for _, tc := range []struct {
		listener string
		want     []string
	}{
		{"", []string{"/in", "/out"}},
		{ListenerInbound, []string{"/in"}},
		{ListenerOutbound, []string{"/out"}},
	} {
		var out syncBuffer
		al := NewAccessLog(AccessLogOptions{Out: &out, Listener: tc.listener})
		al.Log(&HTTPRecord{Inbound: true, Status: 200, Path: "/in"}, unknownSide)
		al.Log(&HTTPRecord{Status: 200, Path: "/out"}, unknownSide)
		al.Close()
		var got []string
		for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
			var line map[string]any
			if err := json.Unmarshal([]byte(l), &line); err != nil {
				t.Fatalf("listener %q: %v in %q", tc.listener, err, l)
			}
			got = append(got, line["path"].(string))
		}
		if strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Errorf("listener %q logged %v, want %v", tc.listener, got, tc.want)
		}
	}
}
