package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// export is one request in the shape sidecar/telemetry's OTLPExporter sends.
func export(service, trace string, spans ...string) string {
	return `{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"` + service +
		`"}}]},"scopeSpans":[{"scope":{"name":"weft-sidecar"},"spans":[` + strings.Join(spans, ",") + `]}]}]}`
}

func span(trace, id, parent, name string, kind int, startMs, endMs int64, status string) string {
	p := ""
	if parent != "" {
		p = `,"parentSpanId":"` + parent + `"`
	}
	return fmt.Sprintf(`{"traceId":"%s","spanId":"%s"%s,"name":"%s","kind":%d,"startTimeUnixNano":"%d","endTimeUnixNano":"%d",`+
		`"attributes":[{"key":"weft.upstream_cluster","value":{"stringValue":"outbound|80||hello"}},{"key":"http.response.status_code","value":{"intValue":"%s"}}]}`,
		trace, id, p, name, kind, startMs*1e6, endMs*1e6, status)
}

func post(t *testing.T, url, body string) *http.Response {
	t.Helper()
	resp, err := http.Post(url+"/v1/traces", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// A cold-start trace exported by two sidecars prints as one tree: the caller's client span,
// its hold child, and the callee's server span under the client span.
func TestTraceTree(t *testing.T) {
	srv := httptest.NewServer(handler(&Store{}))
	defer srv.Close()
	const tr = "0af7651916cd43dd8448eb211c80319c"
	if r := post(t, srv.URL, export("caller", tr,
		span(tr, "00f067aa0ba902b7", "", "hello", 3, 1000, 2400, "200"),
		span(tr, "1111111111111111", "00f067aa0ba902b7", "weft.cold_start_hold", 1, 1001, 2300, "0"))); r.StatusCode != 200 {
		t.Fatalf("export: %d", r.StatusCode)
	}
	if r := post(t, srv.URL, export("hello", tr, span(tr, "2222222222222222", "00f067aa0ba902b7", "hello", 2, 2310, 2390, "200"))); r.StatusCode != 200 {
		t.Fatalf("export: %d", r.StatusCode)
	}
	code, body := get(t, srv.URL+"/trace?span=weft.cold_start_hold")
	want := "trace " + tr + "\n" +
		"  hello [caller, client] 1.4s http.response.status_code=200 weft.upstream_cluster=outbound|80||hello\n" +
		"    weft.cold_start_hold [caller, internal] 1.299s http.response.status_code=0 weft.upstream_cluster=outbound|80||hello\n" +
		"    hello [hello, server] 80ms http.response.status_code=200 weft.upstream_cluster=outbound|80||hello\n"
	if code != 200 || body != want {
		t.Fatalf("GET /trace: %d\n%s\nwant\n%s", code, body, want)
	}
	if code, body := get(t, srv.URL+"/trace?span=nothing"); code != 404 || !strings.Contains(body, `"nothing"`) {
		t.Fatalf("unknown span: %d %q, want 404 naming it", code, body)
	}
}

// Malformed, forged and oversized exports are refused with a reason; nothing is kept.
func TestBadExportsRefused(t *testing.T) {
	s := &Store{}
	srv := httptest.NewServer(handler(s))
	defer srv.Close()
	for name, body := range map[string]string{
		"not json":      "{",
		"short traceId": export("x", "", span("abc", "00f067aa0ba902b7", "", "a", 1, 0, 1, "0")),
		"short spanId":  export("x", "", span("0af7651916cd43dd8448eb211c80319c", "1", "", "a", 1, 0, 1, "0")),
	} {
		if r := post(t, srv.URL, body); r.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400", name, r.StatusCode)
		}
	}
	if r := post(t, srv.URL, `{"resourceSpans":"`+strings.Repeat("a", maxBody)+`"}`); r.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized export: status %d, want 413", r.StatusCode)
	}
	if len(s.spans) != 0 {
		t.Fatalf("kept %d spans from refused exports", len(s.spans))
	}
}

// The store keeps only the newest maxSpans spans.
func TestStoreBounded(t *testing.T) {
	s := &Store{}
	const tr = "0af7651916cd43dd8448eb211c80319c"
	var spans []string
	for i := range maxSpans + 10 {
		spans = append(spans, span(tr, fmt.Sprintf("%016x", i+1), "", fmt.Sprintf("s%d", i), 1, 0, 1, "0"))
	}
	if _, err := s.Add([]byte(export("x", tr, spans...))); err != nil {
		t.Fatal(err)
	}
	if len(s.spans) != maxSpans || s.spans[0].Name != "s10" {
		t.Fatalf("kept %d spans starting at %q, want %d starting at s10", len(s.spans), s.spans[0].Name, maxSpans)
	}
}
