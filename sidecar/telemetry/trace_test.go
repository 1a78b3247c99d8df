package telemetry

import (
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sync"
	"testing"
	"time"
)

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
var tpRE = regexp.MustCompile(`^00-([0-9a-f]{32})-([0-9a-f]{16})-01$`)

func TestRequestIDGeneratedOnlyWhenAbsent(t *testing.T) {
	m := New(Options{})
	var buf HeaderBuf
	h := http.Header{}
	var rec HTTPRecord
	m.Propagate(h, &rec, &buf)
	id := h.Get("X-Request-Id")
	if !uuidRE.MatchString(id) || rec.RequestID != id {
		t.Fatalf("generated x-request-id %q (record %q), want a UUIDv4", id, rec.RequestID)
	}
	h2 := http.Header{}
	m.Propagate(h2, &rec, nil)
	if h2.Get("X-Request-Id") == id {
		t.Error("two requests got the same id")
	}
	kept := http.Header{"X-Request-Id": {"caller-chose-this"}}
	m.Propagate(kept, &rec, nil)
	if kept.Get("X-Request-Id") != "caller-chose-this" {
		t.Errorf("an x-request-id that came was replaced: %q", kept.Get("X-Request-Id"))
	}
	if _, ok := h["Traceparent"]; ok {
		t.Error("tracing off (sample 0) must not start traces")
	}
}

func TestTraceparentChild(t *testing.T) {
	m := New(Options{Trace: TraceOptions{SamplePerMillion: 1}}) // incoming sampled contexts are followed whatever the rate
	const in = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	h := http.Header{"Traceparent": {in}, "Tracestate": {"vendor=x"}}
	var rec HTTPRecord
	m.Propagate(h, &rec, nil)
	got := tpRE.FindStringSubmatch(h.Get("Traceparent"))
	if got == nil || got[1] != "4bf92f3577b34da6a3ce929d0e0e4736" || got[2] == "00f067aa0ba902b7" {
		t.Fatalf("traceparent %q: want the same trace with a new span id", h.Get("Traceparent"))
	}
	if hex.EncodeToString(rec.Span.Parent[:]) != "00f067aa0ba902b7" || hex.EncodeToString(rec.Span.ID[:]) != got[2] || !rec.Span.Sampled {
		t.Errorf("record span %+v does not match", rec.Span)
	}
	if h.Get("Tracestate") != "vendor=x" {
		t.Error("tracestate must pass as it came")
	}

	unsampled := http.Header{"Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"}}
	m.Propagate(unsampled, &rec, nil)
	if unsampled.Get("Traceparent") != "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00" {
		t.Error("an unsampled context must pass through untouched")
	}
	for _, bad := range []string{"00-00000000000000000000000000000000-00f067aa0ba902b7-01", "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01"} {
		if _, ok := parseTraceparent(bad); ok {
			t.Errorf("parseTraceparent(%q) accepted", bad)
		}
	}
}

func TestNewTracesAtTheSampleRate(t *testing.T) {
	m := New(Options{Trace: TraceOptions{SamplePerMillion: 1_000_000}})
	var buf HeaderBuf
	h := http.Header{}
	var rec HTTPRecord
	m.Propagate(h, &rec, &buf)
	if !tpRE.MatchString(h.Get("Traceparent")) || rec.Span.Parent != [8]byte{} {
		t.Fatalf("no root span started: %q", h.Get("Traceparent"))
	}
	none := New(Options{Trace: TraceOptions{SamplePerMillion: 1}})
	started := 0
	for range 10000 {
		h := http.Header{}
		none.Propagate(h, &rec, nil)
		if _, ok := h["Traceparent"]; ok {
			started++
		}
	}
	if started > 5 {
		t.Errorf("%d of 10000 new traces at a one-per-million rate", started)
	}
}

func TestB3(t *testing.T) {
	m := New(Options{Trace: TraceOptions{SamplePerMillion: 1}})
	h := http.Header{"X-B3-Traceid": {"463ac35c9f6413ad48485a3953bb6124"}, "X-B3-Spanid": {"a2fb4a1d1a96d312"}, "X-B3-Sampled": {"1"}}
	var rec HTTPRecord
	m.Propagate(h, &rec, nil)
	if h.Get("X-B3-Parentspanid") != "a2fb4a1d1a96d312" || h.Get("X-B3-Spanid") == "a2fb4a1d1a96d312" || len(h.Get("X-B3-Spanid")) != 16 {
		t.Errorf("B3 not advanced: %v", h)
	}
	if got := tpRE.FindStringSubmatch(h.Get("Traceparent")); got == nil || got[1] != "463ac35c9f6413ad48485a3953bb6124" || got[2] != h.Get("X-B3-Spanid") {
		t.Errorf("traceparent %q does not continue the B3 trace", h.Get("Traceparent"))
	}
	single := http.Header{"B3": {"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"}}
	m.Propagate(single, &rec, nil)
	if single.Get("X-B3-Parentspanid") != "e457b5a2e4d86bd1" || hex.EncodeToString(rec.Span.TraceID[:]) != "80f198ee56343ba864fe8b2a57d3eff7" {
		t.Errorf("single-header B3 not continued: %v", single)
	}
	short := http.Header{"X-B3-Traceid": {"48485a3953bb6124"}, "X-B3-Spanid": {"a2fb4a1d1a96d312"}}
	m.Propagate(short, &rec, nil)
	if hex.EncodeToString(rec.Span.TraceID[:]) != "000000000000000048485a3953bb6124" {
		t.Errorf("64-bit B3 trace id read as %x", rec.Span.TraceID)
	}
}

// collector is an OTLP/HTTP JSON receiver.
type collector struct {
	mu    sync.Mutex
	spans []map[string]any
	srv   *httptest.Server
}

func newCollector(t *testing.T) *collector {
	c := &collector{}
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		var req struct {
			ResourceSpans []struct {
				ScopeSpans []struct {
					Spans []map[string]any `json:"spans"`
				} `json:"scopeSpans"`
			} `json:"resourceSpans"`
		}
		b, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(b, &req); err != nil {
			t.Errorf("OTLP body is not JSON: %v\n%s", err, b)
		}
		c.mu.Lock()
		for _, rs := range req.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				c.spans = append(c.spans, ss.Spans...)
			}
		}
		c.mu.Unlock()
	}))
	t.Cleanup(c.srv.Close)
	return c
}

func TestOTLPExportWithHoldChild(t *testing.T) {
	col := newCollector(t)
	e := NewOTLPExporter(OTLPOptions{Endpoint: col.srv.URL + "/v1/traces", Service: "web", Interval: 10 * time.Millisecond})
	m := New(Options{Trace: TraceOptions{SamplePerMillion: 1_000_000, Exporter: e}})
	h := http.Header{"Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}
	rec := HTTPRecord{Start: time.Now(), Duration: 300 * time.Millisecond, Status: 200, GRPCStatus: -1, Method: "GET", Authority: "resize"}
	m.Propagate(h, &rec, nil)
	rec.HoldStart, rec.HoldEnd = rec.Start.Add(time.Millisecond), rec.Start.Add(250*time.Millisecond)
	m.Record(&rec)
	e.Close()
	exported, dropped, failed := e.Stats()
	if exported != 2 || dropped != 0 || failed != 0 {
		t.Fatalf("exported %d dropped %d failed %d; want 2 spans delivered", exported, dropped, failed)
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	hop, hold := col.spans[0], col.spans[1]
	if hop["traceId"] != "4bf92f3577b34da6a3ce929d0e0e4736" || hop["parentSpanId"] != "00f067aa0ba902b7" || hop["spanId"] != hex.EncodeToString(rec.Span.ID[:]) {
		t.Errorf("hop span %v", hop)
	}
	if hold["name"] != "weft.cold_start_hold" || hold["parentSpanId"] != hop["spanId"] || hold["traceId"] != hop["traceId"] {
		t.Errorf("hold span %v is not the hop's child", hold)
	}
}

// A collector that does not answer never holds traffic up: spans past the queue drop.
func TestOTLPQueueBounded(t *testing.T) {
	stuck := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-stuck }))
	defer srv.Close()
	defer close(stuck)
	e := NewOTLPExporter(OTLPOptions{Endpoint: srv.URL, Buffer: 4, BatchSize: 1, Timeout: 200 * time.Millisecond})
	defer e.Close() // first of the defers: the collector is released just before
	m := New(Options{Trace: TraceOptions{SamplePerMillion: 1_000_000, Exporter: e}})
	done := make(chan struct{})
	go func() {
		for range 1000 {
			var rec HTTPRecord
			m.Propagate(http.Header{}, &rec, nil)
			m.Record(&rec)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("recording blocked on a stuck collector")
	}
	if _, dropped, _ := e.Stats(); dropped < 900 {
		t.Errorf("dropped %d of 1000 with a queue of 4", dropped)
	}
}
