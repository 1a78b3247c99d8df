package async_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/weftmesh/weft/sidecar/async"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
)

// TestTraceContextCrossesTheQueue: a queued call reaches the function with the trace
// context (W3C and B3) and the request id it was published with, so the function's hop
// joins the caller's trace however long the call waited in NATS.
func TestTraceContextCrossesTheQueue(t *testing.T) {
	m := newMesh(t)
	cfg := fastConfig()
	app := newRecorder(t, ok)
	srv := caller(t, m.js, cfg, async.PublisherOptions{})
	runConsumer(t, m.js, app.URL, cfg, nil)
	trace := map[string]string{
		"Traceparent":  "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"Tracestate":   "congo=t61rcWkgMzE",
		"X-B3-Traceid": "4bf92f3577b34da6a3ce929d0e0e4736", "X-B3-Spanid": "00f067aa0ba902b7", "X-B3-Sampled": "1",
		"X-Request-Id": "6f1c3d2a-0000-4000-8000-000000000001",
	}
	if status, _, body := callAsync(t, srv.URL+"/orders/1", "x", trace); status != http.StatusAccepted {
		t.Fatalf("status %d: %s", status, body)
	}
	poll.Until(t, 30*time.Second, func() bool { return app.count() == 1 }, "waiting for the queued call to run")
	got := app.all()[0].header
	for k, v := range trace {
		if got.Get(k) != v {
			t.Errorf("the function got %s %q, want %q", k, got.Get(k), v)
		}
	}
}
