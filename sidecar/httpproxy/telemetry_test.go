package httpproxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/weftmesh/weft/sidecar/httpproxy"
	st "github.com/weftmesh/weft/sidecar/sidecartest"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
	"github.com/weftmesh/weft/sidecar/telemetry"
)

// scrape parses what m exposes, as Prometheus would.
func scrape(t *testing.T, m *telemetry.Mesh) map[string]*dto.MetricFamily {
	t.Helper()
	var buf bytes.Buffer
	m.WritePrometheus(&buf)
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(&buf)
	if err != nil {
		t.Fatalf("exposition does not parse: %v\n%s", err, buf.String())
	}
	return fams
}

// series finds the one series of fam whose labels include want.
func series(t *testing.T, fams map[string]*dto.MetricFamily, fam string, want map[string]string) *dto.Metric {
	t.Helper()
	f := fams[fam]
	if f == nil {
		t.Fatalf("no metric family %s", fam)
	}
	found := seriesOf(f, want)
	if len(found) != 1 {
		t.Fatalf("%s: %d series match %v, want 1; all: %v", fam, len(found), want, f.Metric)
	}
	return found[0]
}

// matching counts the series of fam whose labels include want.
func matching(fams map[string]*dto.MetricFamily, fam string, want map[string]string) int {
	if f := fams[fam]; f != nil {
		return len(seriesOf(f, want))
	}
	return 0
}

// seriesOf is the series of f whose labels include want.
func seriesOf(f *dto.MetricFamily, want map[string]string) []*dto.Metric {
	var found []*dto.Metric
	for _, m := range f.Metric {
		labels := map[string]string{}
		for _, lp := range m.Label {
			labels[lp.GetName()] = lp.GetValue()
		}
		ok := true
		for k, v := range want {
			if labels[k] != v {
				ok = false
			}
		}
		if ok {
			found = append(found, m)
		}
	}
	return found
}

func labelsOf(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, lp := range m.Label {
		out[lp.GetName()] = lp.GetValue()
	}
	return out
}

// TestIstioMetricsAcrossTwoSidecars sends known traffic from a caller's sidecar to a
// callee's sidecar and its app, on every combination of the two HTTP paths, and reads
// both sidecars' Istio metrics as Prometheus parses them: the caller reports
// reporter="source" with the destination service from its cluster, the callee
// reporter="destination" with the caller's workload from the peer metadata header,
// which the app never sees.
func TestIstioMetricsAcrossTwoSidecars(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var leaked atomic.Int64
		app := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) {
			if _, ok := r.Header[telemetry.PeerHeader]; ok {
				leaked.Add(1)
			}
			body, _ := io.ReadAll(r.Body)
			if r.URL.Path == "/fail" {
				w.WriteHeader(http.StatusInternalServerError)
			}
			_, _ = w.Write(append([]byte("echo:"), body...)) // 5 + len(body) bytes
		})
		appPort, _ := strconv.Atoi(app.URL[len("http://127.0.0.1:"):])
		calleeTel := telemetry.New(telemetry.Options{Self: telemetry.WorkloadFromPod("ratings-v2-5d8f7c9b4-xk2lp", "prod",
			map[string]string{"app": "ratings", "version": "v2", "pod-template-hash": "5d8f7c9b4"})})
		fnCP := st.StartControlPlane(t)
		fnCP.Set(st.Snapshot{Listeners: []types.Resource{st.InboundListener(uint32(appPort))},
			Clusters: []types.Resource{st.InboundCluster(uint32(appPort))}})
		callee := st.StartSidecar(t, fnCP, st.SidecarOptions{GoroutinePerConnection: goroutines, Telemetry: calleeTel})
		inbound := callee.URL(t, st.InboundListenerName)

		callerTel := telemetry.New(telemetry.Options{Self: telemetry.WorkloadFromPod("productpage-v1-6b746f74dc-9stvs", "default",
			map[string]string{"app.kubernetes.io/name": "productpage", "app.kubernetes.io/version": "v1", "pod-template-hash": "6b746f74dc"})})
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{inbound}, nil)
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines, Telemetry: callerTel}).URL(t, st.OutboundListenerName)

		c := &http.Client{}
		send := func(path, body string, forged bool) int {
			req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
			req.Host = "reviews"
			if forged { // the app cannot pass itself off as another workload through its own sidecar
				req.Header.Set(telemetry.PeerHeader, "n=forged&ns=evil")
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if _, ok := resp.Header[telemetry.PeerHeader]; ok {
				t.Errorf("the caller's app got the callee's %s; the caller's sidecar must remove it", telemetry.PeerHeader)
			}
			return resp.StatusCode
		}
		for i := range 5 {
			if code := send("/ok", "0123456789", i == 0); code != http.StatusOK {
				t.Fatalf("call %d: status %d", i, code)
			}
		}
		for range 2 {
			if code := send("/fail", "", false); code != http.StatusInternalServerError {
				t.Fatalf("failing call: status %d", code)
			}
		}
		if n := leaked.Load(); n != 0 {
			t.Errorf("the app saw %s on %d requests; the inbound sidecar must remove it", telemetry.PeerHeader, n)
		}

		src := scrape(t, callerTel)
		ok := series(t, src, "istio_requests_total", map[string]string{"reporter": "source", "response_code": "200"})
		if got := ok.GetCounter().GetValue(); got != 5 {
			t.Errorf("source istio_requests_total{200} = %v, want 5", got)
		}
		wantSrc := map[string]string{"source_workload": "productpage-v1", "source_workload_namespace": "default",
			"source_app": "productpage", "source_version": "v1", "source_principal": "unknown",
			"destination_service": "reviews.default.svc.cluster.local", "destination_service_name": "reviews",
			"destination_service_namespace": "default", "destination_workload": "ratings-v2", "destination_workload_namespace": "prod",
			"destination_app": "ratings", "destination_version": "v2", "request_protocol": "http",
			"response_flags": "-", "connection_security_policy": "unknown", "grpc_response_status": ""}
		for k, v := range wantSrc {
			if got := labelsOf(ok)[k]; got != v {
				t.Errorf("source series label %s = %q, want %q", k, got, v)
			}
		}
		if _, ok := labelsOf(ok)["path"]; ok {
			t.Error("a path label makes cardinality unbounded")
		}
		if got := series(t, src, "istio_requests_total", map[string]string{"reporter": "source", "response_code": "500"}).GetCounter().GetValue(); got != 2 {
			t.Errorf("source istio_requests_total{500} = %v, want 2", got)
		}
		reqB := series(t, src, "istio_request_bytes", map[string]string{"response_code": "200"}).GetHistogram()
		if reqB.GetSampleCount() != 5 || reqB.GetSampleSum() != 50 {
			t.Errorf("source istio_request_bytes count/sum = %d/%v, want 5/50", reqB.GetSampleCount(), reqB.GetSampleSum())
		}
		respB := series(t, src, "istio_response_bytes", map[string]string{"response_code": "200"}).GetHistogram()
		if respB.GetSampleCount() != 5 || respB.GetSampleSum() != 75 {
			t.Errorf("source istio_response_bytes count/sum = %d/%v, want 5/75", respB.GetSampleCount(), respB.GetSampleSum())
		}
		dur := series(t, src, "istio_request_duration_milliseconds", map[string]string{"response_code": "200"}).GetHistogram()
		if dur.GetSampleCount() != 5 || len(dur.Bucket) != 20 || dur.Bucket[0].GetUpperBound() != 0.5 || dur.Bucket[18].GetUpperBound() != 3600000 {
			t.Errorf("duration histogram: count %d, %d buckets from %v to %v; want 5 in Istio's 19 buckets 0.5..3600000 and +Inf",
				dur.GetSampleCount(), len(dur.Bucket), dur.Bucket[0].GetUpperBound(), dur.Bucket[18].GetUpperBound())
		}

		dst := scrape(t, calleeTel)
		in := series(t, dst, "istio_requests_total", map[string]string{"reporter": "destination", "response_code": "200"})
		if got := in.GetCounter().GetValue(); got != 5 {
			t.Errorf("destination istio_requests_total{200} = %v, want 5", got)
		}
		wantDst := map[string]string{"source_workload": "productpage-v1", "source_workload_namespace": "default",
			"source_app": "productpage", "source_version": "v1", "destination_workload": "ratings-v2",
			"destination_workload_namespace": "prod", "destination_app": "ratings", "destination_version": "v2",
			"connection_security_policy": "none", "source_principal": "unknown"}
		for k, v := range wantDst {
			if got := labelsOf(in)[k]; got != v {
				t.Errorf("destination series label %s = %q, want %q", k, got, v)
			}
		}
		if got := series(t, dst, "istio_requests_total", map[string]string{"reporter": "destination", "response_code": "500"}).GetCounter().GetValue(); got != 2 {
			t.Errorf("destination istio_requests_total{500} = %v, want 2", got)
		}
	})
}

// otlpCollector is an OTLP/HTTP JSON receiver that keeps the spans it gets.
type otlpCollector struct {
	mu    sync.Mutex
	spans []map[string]any
	url   string
}

func startCollector(t *testing.T) *otlpCollector {
	c := &otlpCollector{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			ResourceSpans []struct {
				ScopeSpans []struct {
					Spans []map[string]any `json:"spans"`
				} `json:"scopeSpans"`
			} `json:"resourceSpans"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			t.Errorf("OTLP body: %v", err)
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, rs := range req.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				c.spans = append(c.spans, ss.Spans...)
			}
		}
	}))
	t.Cleanup(srv.Close)
	c.url = srv.URL + "/v1/traces"
	return c
}

// TestTraceContextAcrossTwoSidecars sends a traced request through a caller's and a
// callee's sidecar on both paths: each hop makes a span in the caller's trace, the app
// gets the callee's span as its parent and an x-request-id, and the spans exported over
// OTLP chain caller → outbound hop → inbound hop.
func TestTraceContextAcrossTwoSidecars(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var mu sync.Mutex
		var seen []http.Header
		app := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			seen = append(seen, r.Header.Clone())
			mu.Unlock()
			_, _ = w.Write([]byte("ok"))
		})
		appPort, _ := strconv.Atoi(app.URL[len("http://127.0.0.1:"):])
		col := startCollector(t)
		newTel := func(pod string) (*telemetry.Mesh, *telemetry.OTLPExporter) {
			e := telemetry.NewOTLPExporter(telemetry.OTLPOptions{Endpoint: col.url, Service: pod, Interval: 10 * time.Millisecond})
			t.Cleanup(e.Close)
			return telemetry.New(telemetry.Options{Self: telemetry.WorkloadFromPod(pod, "default", nil),
				Trace: telemetry.TraceOptions{SamplePerMillion: 1_000_000, Exporter: e}}), e
		}
		calleeTel, calleeExp := newTel("callee")
		fnCP := st.StartControlPlane(t)
		fnCP.Set(st.Snapshot{Listeners: []types.Resource{st.InboundListener(uint32(appPort))},
			Clusters: []types.Resource{st.InboundCluster(uint32(appPort))}})
		inbound := st.StartSidecar(t, fnCP, st.SidecarOptions{GoroutinePerConnection: goroutines, Telemetry: calleeTel}).URL(t, st.InboundListenerName)
		callerTel, callerExp := newTel("caller")
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{inbound}, nil)
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines, Telemetry: callerTel}).URL(t, st.OutboundListenerName)

		const trace, clientSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
		for range 3 { // the first inbound request always takes the goroutine path; the others may not
			req, _ := http.NewRequest(http.MethodGet, base+"/x", nil)
			req.Host = "reviews"
			req.Header.Set("Traceparent", "00-"+trace+"-"+clientSpan+"-01")
			req.Header.Set("Tracestate", "congo=t61rcWkgMzE")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		callerExp.Close()
		calleeExp.Close()

		mu.Lock()
		defer mu.Unlock()
		col.mu.Lock()
		defer col.mu.Unlock()
		if len(seen) != 3 || len(col.spans) != 6 {
			t.Fatalf("the app got %d requests and the collector %d spans; want 3 and 6", len(seen), len(col.spans))
		}
		byID := map[string]map[string]any{}
		for _, s := range col.spans {
			byID[s["spanId"].(string)] = s
		}
		for i, h := range seen {
			tp := h.Get("Traceparent")
			if !strings.HasPrefix(tp, "00-"+trace+"-") || strings.Contains(tp, clientSpan) || h.Get("Tracestate") != "congo=t61rcWkgMzE" {
				t.Errorf("request %d reached the app with traceparent %q, tracestate %q", i, tp, h.Get("Tracestate"))
				continue
			}
			if h.Get("X-Request-Id") == "" {
				t.Errorf("request %d reached the app without an x-request-id", i)
			}
			in := byID[tp[36:52]]
			if in == nil || in["kind"] != 2.0 {
				t.Errorf("request %d: no inbound (server) span %s exported", i, tp[36:52])
				continue
			}
			out := byID[in["parentSpanId"].(string)]
			if out == nil || out["kind"] != 3.0 || out["parentSpanId"] != clientSpan || out["traceId"] != trace || in["traceId"] != trace {
				t.Errorf("request %d: inbound span's parent %v is not the outbound span under the client's", i, in["parentSpanId"])
			}
		}
	})
}

// TestColdStartHoldIsASpan: a request held while its function scales from zero is
// exported with a weft.cold_start_hold child span as long as the hold, so a cold start
// shows in the trace; the function call counts under the function's service.
func TestColdStartHoldIsASpan(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		fnPod := st.Backend(t, "warm", nil)
		cp := st.StartControlPlane(t)
		snap, _ := functionSnapshot()
		cp.Set(snap)
		h := holderFunc(func(ctx context.Context, fn httpproxy.FunctionRef) (func(), time.Duration, error) {
			withEP, _ := functionSnapshot(st.Endpoint{Addr: st.HostPort(fnPod.URL)})
			cp.Set(withEP)
			time.Sleep(300 * time.Millisecond) // the endpoint arrives meanwhile
			return func() {}, 300 * time.Millisecond, nil
		})
		col := startCollector(t)
		e := telemetry.NewOTLPExporter(telemetry.OTLPOptions{Endpoint: col.url, Interval: 10 * time.Millisecond})
		t.Cleanup(e.Close)
		tel := telemetry.New(telemetry.Options{Self: telemetry.WorkloadFromPod("web", "default", nil),
			Trace: telemetry.TraceOptions{SamplePerMillion: 1_000_000, Exporter: e}})
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines, Holder: h, Telemetry: tel}).URL(t, st.OutboundListenerName)
		if code, body, _ := st.Get(t, client, base, "fn.default:80", "/"); code != 200 || body != "warm" {
			t.Fatalf("got %d %q", code, body)
		}
		e.Close()
		col.mu.Lock()
		defer col.mu.Unlock()
		var hop, hold map[string]any
		for _, s := range col.spans {
			switch s["name"] {
			case "weft.cold_start_hold":
				hold = s
			default:
				hop = s
			}
		}
		if hop == nil || hold == nil || hold["parentSpanId"] != hop["spanId"] || hold["traceId"] != hop["traceId"] {
			t.Fatalf("spans %v: want the hop and its weft.cold_start_hold child", col.spans)
		}
		start, _ := strconv.ParseInt(hold["startTimeUnixNano"].(string), 10, 64)
		end, _ := strconv.ParseInt(hold["endTimeUnixNano"].(string), 10, 64)
		if d := time.Duration(end - start); d != 300*time.Millisecond {
			t.Errorf("hold span lasts %v, want the 300ms hold", d)
		}
		m := series(t, scrape(t, tel), "istio_requests_total", map[string]string{"response_code": "200"})
		if l := labelsOf(m); l["destination_service_name"] != "fn" || l["destination_service_namespace"] != "default" {
			t.Errorf("function call counted as %v", l)
		}
	})
}

// A response the event loop cannot frame (chunked) is finished by a goroutine; its body
// bytes still count, and a request no virtual host takes is flagged NR.
func TestIstioMetricsChunkedResponseAndNoRoute(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		be := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) {
			for range 3 {
				_, _ = w.Write([]byte("0123456789"))
				w.(http.Flusher).Flush() // chunked: no Content-Length
			}
		})
		tel := telemetry.New(telemetry.Options{Self: telemetry.WorkloadFromPod("web", "default", nil)})
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{be.URL}, nil)
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines, Telemetry: tel}).URL(t, st.OutboundListenerName)
		if code, body, _ := st.Get(t, client, base, "reviews", "/"); code != 200 || len(body) != 30 {
			t.Fatalf("got %d %q", code, body)
		}
		if code, _, _ := st.Get(t, client, base, "nosuch", "/"); code != 404 {
			t.Fatalf("unknown host answered %d", code)
		}
		// A chunked response leaves the event loop for a goroutine, which records the exchange
		// once it has written the last chunk: the caller may have it, and have sent the next
		// request, a moment before.
		ok := map[string]string{"response_code": "200"}
		poll.Until(t, 5*time.Second, func() bool { return matching(scrape(t, tel), "istio_response_bytes", ok) == 1 },
			"the chunked 200 in istio_response_bytes")
		fams := scrape(t, tel)
		resp := series(t, fams, "istio_response_bytes", ok).GetHistogram()
		if resp.GetSampleCount() != 1 || resp.GetSampleSum() != 30 {
			t.Errorf("chunked response counted %d times, %v bytes; want once, 30", resp.GetSampleCount(), resp.GetSampleSum())
		}
		if v := series(t, fams, "istio_requests_total", map[string]string{"response_code": "404", "response_flags": "NR"}).GetCounter().GetValue(); v != 1 {
			t.Errorf("no-route requests %v, want 1", v)
		}
	})
}
