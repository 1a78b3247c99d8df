package async_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/queue"
	"github.com/weftmesh/weft/sidecar/async"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
)

func TestHundredCallsGiveHundredCallbacks(t *testing.T) {
	m := newMesh(t)
	cfg := fastConfig()
	app := newRecorder(t, func(w http.ResponseWriter, r *http.Request, body string) {
		time.Sleep(2 * time.Millisecond) // overlap calls so inflight > 1 happens
		w.Header().Set("Content-Type", "text/x-echo")
		w.WriteHeader(http.StatusOK)
		fmt.Fprintf(w, "echo %s %s", r.URL.RequestURI(), body)
	})
	cb := newRecorder(t, ok)
	srv := caller(t, m.js, cfg, async.PublisherOptions{})
	runConsumer(t, m.js, app.URL, cfg, nil)

	want := map[string]string{} // call id -> body
	for i := range 100 {
		body := "payload-" + strconv.Itoa(i)
		status, id, respBody := callAsync(t, srv.URL+"/orders/"+strconv.Itoa(i)+"?q=1", body,
			map[string]string{async.HeaderCallbackURL: cb.URL + "/done", "X-Custom": "v" + strconv.Itoa(i), "Prefer": "respond-async, return=minimal"})
		if status != http.StatusAccepted || id == "" {
			t.Fatalf("call %d: status %d, call id %q, body %s", i, status, id, respBody)
		}
		var acc async.Accepted
		if err := json.Unmarshal([]byte(respBody), &acc); err != nil || acc.CallID != id || acc.Function != "default/orders" || acc.Duplicate {
			t.Fatalf("call %d: 202 body %s (%v), want call id %s for default/orders", i, respBody, err, id)
		}
		if _, dup := want[id]; dup {
			t.Fatalf("call id %s given twice", id)
		}
		want[id] = body
	}
	poll.Until(t, 90*time.Second, func() bool { return cb.count() >= 100 }, "waiting for 100 callbacks")

	seen := map[string]bool{}
	for _, c := range cb.all() {
		id := c.header.Get(async.HeaderCallID)
		body, known := want[id]
		if !known || seen[id] {
			t.Fatalf("callback for unknown or repeated call id %q", id)
		}
		seen[id] = true
		if c.method != http.MethodPost || c.uri != "/done" {
			t.Errorf("callback %s: %s %s, want POST /done", id, c.method, c.uri)
		}
		if s := c.header.Get(async.HeaderFunctionStatus); s != "200" {
			t.Errorf("callback %s: X-Function-Status %q, want 200", id, s)
		}
		if d, err := strconv.ParseFloat(c.header.Get(async.HeaderDuration), 64); err != nil || d < 0 {
			t.Errorf("callback %s: X-Duration-Seconds %q", id, c.header.Get(async.HeaderDuration))
		}
		if ct := c.header.Get("Content-Type"); ct != "text/x-echo" {
			t.Errorf("callback %s: Content-Type %q, want the app's", id, ct)
		}
		if c.header.Get(async.HeaderDeadReason) != "" {
			t.Errorf("callback %s of a successful call has a dead reason", id)
		}
		i := body[len("payload-"):]
		if wantBody := "echo /orders/" + i + "?q=1 " + body; c.body != wantBody {
			t.Errorf("callback %s: body %q, want %q", id, c.body, wantBody)
		}
	}

	// The app saw each call once with the original request and its call id.
	if n := app.count(); n != 100 {
		t.Errorf("app ran %d calls, want 100", n)
	}
	for _, r := range app.all() {
		id := r.header.Get(async.HeaderCallID)
		if want[id] != r.body || r.method != http.MethodPost {
			t.Errorf("app got %s %q for call %s, want POST %q", r.method, r.body, id, want[id])
		}
		if r.header.Get("X-Custom") == "" || r.header.Get(async.HeaderCallbackURL) != "" {
			t.Errorf("app headers %v: want X-Custom kept and X-Callback-Url dropped", r.header)
		}
		if p := r.header.Get("Prefer"); p != "return=minimal" {
			t.Errorf("app got Prefer %q, want the respond-async preference removed and return=minimal kept", p)
		}
		for k := range r.header {
			if len(k) > 5 && (k[:5] == "Weft-" || k[:5] == "Nats-") {
				t.Errorf("app got internal header %s", k)
			}
		}
	}
	if _, maxSeen := app.concurrent(); maxSeen > cfg.MaxInflight {
		t.Errorf("app saw %d concurrent calls, above maxInflight %d", maxSeen, cfg.MaxInflight)
	}
}

func TestIdempotencyKeyRunsOnce(t *testing.T) {
	m := newMesh(t)
	cfg := fastConfig()
	cfg.MaxInflight = 1 // FIFO, so the sentinel runs after anything queued before it
	app := newRecorder(t, ok)
	srv, pub := callerPub(t, m.js, cfg, async.PublisherOptions{})

	key := map[string]string{async.HeaderIdempotencyKey: "order-42"}
	s1, id1, _ := callAsync(t, srv.URL, "first", key)
	s2, id2, body2 := callAsync(t, srv.URL, "second", key)
	if s1 != http.StatusAccepted || s2 != http.StatusAccepted || id1 == "" || id1 != id2 {
		t.Fatalf("same Idempotency-Key: %d %q then %d %q; want 202 and the same call id", s1, id1, s2, id2)
	}
	var acc async.Accepted
	if err := json.Unmarshal([]byte(body2), &acc); err != nil || !acc.Duplicate {
		t.Errorf("duplicate's body %s does not say duplicate", body2)
	}
	// The same key for another function is another call.
	s3, id3, _ := callAsync(t, srv.URL, "other", map[string]string{async.HeaderIdempotencyKey: "order-42", "X-Test-Function": "default/billing"})
	if s3 != http.StatusAccepted || id3 == id1 {
		t.Errorf("same key on another function: %d %q, want 202 with a different call id than %q", s3, id3, id1)
	}
	_, sentinel, _ := callAsync(t, srv.URL, "sentinel", nil)

	runConsumer(t, m.js, app.URL, cfg, nil)
	poll.Until(t, 90*time.Second, func() bool {
		for _, r := range app.all() {
			if r.header.Get(async.HeaderCallID) == sentinel {
				return true
			}
		}
		return false
	}, "waiting for the sentinel call")
	runs := 0
	for _, r := range app.all() {
		if r.header.Get(async.HeaderCallID) == id1 {
			runs++
			if r.body != "first" {
				t.Errorf("the kept call has body %q, want the first publish's", r.body)
			}
		}
	}
	if runs != 1 {
		t.Errorf("call with Idempotency-Key ran %d times, want 1", runs)
	}
	wantMetrics(t, metrics(pub),
		`weft_async_published_total{function="default/orders"} 2`,
		`weft_async_duplicates_total{function="default/orders"} 1`,
		`weft_async_published_total{function="default/billing"} 1`)
}

func TestMaxInflightIsReachedButNeverExceeded(t *testing.T) {
	m := newMesh(t)
	cfg := fastConfig()
	cfg.MaxInflight = 3
	// Hold every call until three run at once (or 20s pass, which fails the test below),
	// so the limit is actually exercised.
	reached := make(chan struct{})
	var once sync.Once
	var app *recorder
	app = newRecorder(t, func(w http.ResponseWriter, r *http.Request, _ string) {
		if cur, _ := app.concurrent(); cur >= cfg.MaxInflight {
			once.Do(func() { close(reached) })
		}
		select {
		case <-reached:
		case <-time.After(20 * time.Second):
		}
		time.Sleep(time.Millisecond)
		w.WriteHeader(http.StatusOK)
	})
	srv := caller(t, m.js, cfg, async.PublisherOptions{})
	for i := range 30 {
		if s, _, b := callAsync(t, srv.URL, strconv.Itoa(i), nil); s != http.StatusAccepted {
			t.Fatalf("publish: %d %s", s, b)
		}
	}
	runConsumer(t, m.js, app.URL, cfg, nil)
	poll.Until(t, 90*time.Second, func() bool { return app.count() >= 30 }, "waiting for 30 calls run")
	if _, maxSeen := app.concurrent(); maxSeen != cfg.MaxInflight {
		t.Errorf("app saw at most %d concurrent calls, want exactly maxInflight %d", maxSeen, cfg.MaxInflight)
	}
}

func TestPendingCountReflectsQueuedCalls(t *testing.T) {
	m := newMesh(t)
	cfg := fastConfig()
	srv := caller(t, m.js, cfg, async.PublisherOptions{})
	for i := range 4 {
		if s, _, b := callAsync(t, srv.URL, strconv.Itoa(i), nil); s != http.StatusAccepted {
			t.Fatalf("publish: %d %s", s, b)
		}
	}
	ctx := context.Background()
	n, err := queue.PendingCount(ctx, m.js, fnA.Namespace, fnA.Name)
	if err != nil || n != 4 {
		t.Fatalf("pending with no consumer = %d, %v; want 4", n, err)
	}
	app := newRecorder(t, ok)
	runConsumer(t, m.js, app.URL, cfg, nil)
	poll.Until(t, 90*time.Second, func() bool {
		n, err := queue.PendingCount(ctx, m.js, fnA.Namespace, fnA.Name)
		return err == nil && n == 0
	}, "waiting for pending to drop to 0")
	if app.count() != 4 {
		t.Errorf("app ran %d calls, want 4", app.count())
	}
}
