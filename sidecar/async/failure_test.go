package async_test

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/weftmesh/weft/internal/queue"
	"github.com/weftmesh/weft/sidecar/async"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
)

// lastDead returns the newest dead-lettered call of fnA.
func lastDead(t *testing.T, js jetstream.JetStream) *jetstream.RawStreamMsg {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, queue.DeadStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(ctx, queue.DeadSubject(fnA.Namespace, fnA.Name))
	if err != nil {
		t.Fatalf("no dead-lettered call for %s: %v", fnA, err)
	}
	return m
}

func TestFailingCallIsRetriedThenDeadLettered(t *testing.T) {
	m := newMesh(t)
	cfg := fastConfig()
	cfg.MaxAttempts = 3
	cfg.Backoff = 50 * time.Millisecond
	cfg.MaxBackoff = 200 * time.Millisecond
	app := newRecorder(t, func(w http.ResponseWriter, _ *http.Request, _ string) {
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = w.Write([]byte("database down"))
	})
	cb := newRecorder(t, ok)
	srv := caller(t, m.js, cfg, async.PublisherOptions{})
	cons, _ := startConsumer(t, m.js, app.URL, cfg, nil)

	_, id, _ := callAsync(t, srv.URL+"/charge", "card=1", map[string]string{async.HeaderCallbackURL: cb.URL})
	poll.Until(t, 90*time.Second, func() bool { return cb.count() >= 1 }, "waiting for the failure callback")

	runs := app.all()
	if len(runs) != 3 {
		t.Fatalf("app ran the call %d times, want maxAttempts 3", len(runs))
	}
	// Back-off doubles: at least 50ms before attempt 2 and 100ms before attempt 3.
	if gap := runs[1].at.Sub(runs[0].at); gap < 50*time.Millisecond {
		t.Errorf("attempt 2 came %s after attempt 1, want at least the 50ms back-off", gap)
	}
	if gap := runs[2].at.Sub(runs[1].at); gap < 100*time.Millisecond {
		t.Errorf("attempt 3 came %s after attempt 2, want at least the doubled 100ms back-off", gap)
	}

	c := cb.all()[0]
	if c.header.Get(async.HeaderCallID) != id || c.header.Get(async.HeaderFunctionStatus) != "500" ||
		c.header.Get(async.HeaderAttempts) != "3" || !strings.Contains(c.header.Get(async.HeaderDeadReason), "gave up after 3 attempts") ||
		c.body != "database down" {
		t.Errorf("failure callback: headers %v body %q; want call id %s, status 500, 3 attempts, a reason, the app's body", c.header, c.body, id)
	}

	d := lastDead(t, m.js)
	if d.Header.Get(async.HeaderCallID) != id || string(d.Data) != "card=1" || d.Header.Get(async.HeaderAttempts) != "3" ||
		!strings.Contains(d.Header.Get(async.HeaderDeadReason), "answered 500") || d.Header.Get("Weft-Uri") != "/charge" {
		t.Errorf("dead letter: headers %v data %q; want the original call with reason and attempts", d.Header, d.Data)
	}
	poll.Until(t, 90*time.Second, func() bool {
		n, err := queue.PendingCount(context.Background(), m.js, fnA.Namespace, fnA.Name)
		return err == nil && n == 0
	}, "waiting for the call to leave WEFT_CALLS")
	if app.count() != 3 {
		t.Errorf("app ran %d times after the call was dead-lettered", app.count())
	}
	// The consumer counts the callback and leaves the in-flight gauge after the
	// callback's answer, which the recorder saw first.
	waitMetrics(t, cons,
		`weft_async_calls_total{function="default/orders",outcome="done"} 0`,
		`weft_async_calls_total{function="default/orders",outcome="retried"} 2`,
		`weft_async_calls_total{function="default/orders",outcome="dead"} 1`,
		`weft_async_callbacks_total{function="default/orders",result="delivered"} 1`,
		`weft_async_inflight{function="default/orders"} 0`)
}

func TestRetryOnSucceedsAndOtherStatusesAreFinal(t *testing.T) {
	m := newMesh(t)
	cfg := fastConfig()
	var mu sync.Mutex
	tries := map[string]int{}
	app := newRecorder(t, func(w http.ResponseWriter, r *http.Request, body string) {
		mu.Lock()
		tries[body]++
		n := tries[body]
		mu.Unlock()
		switch {
		case body == "flaky" && n == 1:
			w.WriteHeader(http.StatusServiceUnavailable)
		case body == "flaky":
			_, _ = w.Write([]byte("done on try 2"))
		default: // a 4xx the policy does not retry is the function's final answer
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte("bad input"))
		}
	})
	cb := newRecorder(t, ok)
	srv := caller(t, m.js, cfg, async.PublisherOptions{})
	runConsumer(t, m.js, app.URL, cfg, nil)
	_, flaky, _ := callAsync(t, srv.URL, "flaky", map[string]string{async.HeaderCallbackURL: cb.URL})
	_, bad, _ := callAsync(t, srv.URL, "bad", map[string]string{async.HeaderCallbackURL: cb.URL})
	poll.Until(t, 90*time.Second, func() bool { return cb.count() >= 2 }, "waiting for two callbacks")

	for _, c := range cb.all() {
		switch c.header.Get(async.HeaderCallID) {
		case flaky:
			if c.header.Get(async.HeaderFunctionStatus) != "200" || c.body != "done on try 2" {
				t.Errorf("flaky call callback: %v %q; want 200 from the second try", c.header, c.body)
			}
		case bad:
			if c.header.Get(async.HeaderFunctionStatus) != "400" || c.body != "bad input" || c.header.Get(async.HeaderDeadReason) != "" {
				t.Errorf("400 call callback: %v %q; want the app's 400 reported as its answer", c.header, c.body)
			}
		default:
			t.Errorf("callback for unknown call %s", c.header.Get(async.HeaderCallID))
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if tries["flaky"] != 2 || tries["bad"] != 1 {
		t.Errorf("tries = %v; want flaky 2 (503 retried), bad 1 (400 final)", tries)
	}
	s, err := m.js.Stream(context.Background(), queue.DeadStream)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetLastMsgForSubject(context.Background(), queue.DeadSubject(fnA.Namespace, fnA.Name)); err == nil {
		t.Error("a call was dead-lettered; none should be")
	}
}

func TestCallOlderThanMaxAgeIsDeadLetteredUnrun(t *testing.T) {
	m := newMesh(t)
	cfg := fastConfig()
	cfg.MaxAge = 24 * time.Hour
	app := newRecorder(t, ok)
	cb := newRecorder(t, ok)
	// The caller accepted the call two days ago (its clock), the consumer runs now.
	past := clocktesting.NewFakePassiveClock(time.Now().Add(-48 * time.Hour))
	srv := caller(t, m.js, cfg, async.PublisherOptions{Clock: past})
	_, id, _ := callAsync(t, srv.URL, "stale", map[string]string{async.HeaderCallbackURL: cb.URL})
	_, fresh, _ := callAsync(t, caller(t, m.js, cfg, async.PublisherOptions{}).URL, "fresh", nil)
	cfg.MaxInflight = 1
	runConsumer(t, m.js, app.URL, cfg, nil)

	poll.Until(t, 90*time.Second, func() bool { return cb.count() >= 1 }, "waiting for the failure callback")
	poll.Until(t, 90*time.Second, func() bool { return app.count() >= 1 }, "waiting for the fresh call")
	for _, r := range app.all() {
		if r.header.Get(async.HeaderCallID) != fresh {
			t.Errorf("app ran call %s; only the fresh call %s should run", r.header.Get(async.HeaderCallID), fresh)
		}
	}
	d := lastDead(t, m.js)
	if d.Header.Get(async.HeaderCallID) != id || !strings.Contains(d.Header.Get(async.HeaderDeadReason), "maxAge") || d.Header.Get(async.HeaderAttempts) != "0" {
		t.Errorf("dead letter headers %v; want call %s with a maxAge reason and 0 attempts", d.Header, id)
	}
	c := cb.all()[0]
	if c.header.Get(async.HeaderCallID) != id || c.header.Get(async.HeaderFunctionStatus) != "504" || !strings.Contains(c.body, "maxAge") {
		t.Errorf("callback headers %v body %q; want status 504 and the maxAge reason", c.header, c.body)
	}
}

func TestPublishRefusals(t *testing.T) {
	m := newMesh(t)
	cfg := fastConfig()
	cfg.MaxBodyBytes = 10
	srv, pub := callerPub(t, m.js, cfg, async.PublisherOptions{PublishTimeout: 500 * time.Millisecond, RetryAfter: 3 * time.Second})

	status, id, body := callAsync(t, srv.URL, "x", map[string]string{"X-Test-Function": "elsewhere/nothing"})
	if status != http.StatusNotFound || id != "" || !strings.Contains(body, "elsewhere/nothing does not exist") {
		t.Errorf("unknown function: %d %q", status, body)
	}
	status, _, body = callAsync(t, srv.URL, "01234567890", nil)
	if status != http.StatusRequestEntityTooLarge || !strings.Contains(body, "larger than 10 bytes") {
		t.Errorf("11-byte body with a 10-byte limit: %d %q", status, body)
	}
	// Without Content-Length (chunked) the limit still holds.
	req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader(strings.Repeat("z", 100)))
	req.ContentLength = -1
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("chunked 100-byte body: %d, want 413", resp.StatusCode)
	}
	if status, _, _ = callAsync(t, srv.URL, "0123456789", nil); status != http.StatusAccepted {
		t.Errorf("a body at the limit: %d, want 202", status)
	}

	m.stop()
	req, _ = http.NewRequest(http.MethodPost, srv.URL, strings.NewReader("x"))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b := make([]byte, 512)
	n, _ := resp.Body.Read(b)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "3" || !strings.Contains(string(b[:n]), "not queued") {
		t.Errorf("NATS down: %d Retry-After %q body %q; want 503, Retry-After 3 and a body saying the call was not queued",
			resp.StatusCode, resp.Header.Get("Retry-After"), b[:n])
	}
	wantMetrics(t, metrics(pub),
		`weft_async_published_total{function="default/orders"} 1`,
		`weft_async_refused_total{function="default/orders",code="413"} 2`,
		`weft_async_refused_total{function="default/orders",code="503"} 1`,
		`weft_async_refused_total{function="elsewhere/nothing",code="404"} 1`)
}

func TestStoppedConsumerHandsCallsToAnother(t *testing.T) {
	m := newMesh(t)
	cfg := fastConfig()
	cfg.MaxInflight = 1
	srv := caller(t, m.js, cfg, async.PublisherOptions{})
	ids := map[string]bool{}
	for range 5 {
		_, id, _ := callAsync(t, srv.URL, "c", nil)
		ids[id] = true
	}
	// Pod A's app hangs; A is stopped with a short drain, so its call must come back.
	appA := newRecorder(t, func(w http.ResponseWriter, r *http.Request, _ string) {
		<-r.Context().Done()
	})
	// A long ack wait: B can only get A's call in time if A hands it back (nak) on stop.
	stopA := runConsumer(t, m.js, appA.URL, cfg, func(o *async.ConsumerOptions) {
		o.DrainTimeout = 100 * time.Millisecond
		o.AckWait = 10 * time.Minute
	})
	poll.Until(t, 90*time.Second, func() bool { return appA.count() >= 1 }, "waiting for pod A to start a call")
	stopA()
	if appA.count() != 1 {
		t.Fatalf("pod A ran %d calls with maxInflight 1, want 1", appA.count())
	}
	taken := appA.all()[0].header.Get(async.HeaderCallID)

	appB := newRecorder(t, ok)
	runConsumer(t, m.js, appB.URL, cfg, nil)
	poll.Until(t, 90*time.Second, func() bool {
		got := map[string]bool{}
		for _, r := range appB.all() {
			got[r.header.Get(async.HeaderCallID)] = true
		}
		return len(got) == 5
	}, "waiting for pod B to run all 5 calls")
	for _, r := range appB.all() {
		if !ids[r.header.Get(async.HeaderCallID)] {
			t.Errorf("pod B ran unknown call %s", r.header.Get(async.HeaderCallID))
		}
	}
	if !ids[taken] {
		t.Errorf("pod A's call %s is unknown", taken)
	}
}

func TestLongCallIsNotRedeliveredToAnotherPod(t *testing.T) {
	// openfaas/faas#1108: a call longer than the ack wait ran twice. In-progress acks keep it.
	m := newMesh(t)
	cfg := fastConfig()
	slow := func(w http.ResponseWriter, _ *http.Request, _ string) {
		time.Sleep(6 * time.Second)
		w.WriteHeader(http.StatusOK)
	}
	appA, appB := newRecorder(t, slow), newRecorder(t, slow)
	cb := newRecorder(t, ok)
	short := func(o *async.ConsumerOptions) { o.AckWait = 2 * time.Second }
	runConsumer(t, m.js, appA.URL, cfg, short)
	runConsumer(t, m.js, appB.URL, cfg, short)
	srv := caller(t, m.js, cfg, async.PublisherOptions{})
	callAsync(t, srv.URL, "slow", map[string]string{async.HeaderCallbackURL: cb.URL})
	poll.Until(t, 90*time.Second, func() bool { return cb.count() >= 1 }, "waiting for the callback")
	if n := appA.count() + appB.count(); n != 1 {
		t.Errorf("a 6s call with a 2s ack wait ran %d times, want 1", n)
	}
}

func TestRedriveRunsADeadLetteredCallAgain(t *testing.T) {
	m := newMesh(t)
	cfg := fastConfig()
	cfg.MaxAttempts = 1
	var mu sync.Mutex
	healthy := false
	app := newRecorder(t, func(w http.ResponseWriter, _ *http.Request, _ string) {
		mu.Lock()
		defer mu.Unlock()
		if !healthy {
			w.WriteHeader(http.StatusBadGateway)
		}
	})
	cb := newRecorder(t, ok)
	srv := caller(t, m.js, cfg, async.PublisherOptions{})
	runConsumer(t, m.js, app.URL, cfg, nil)
	_, id, _ := callAsync(t, srv.URL, "again", map[string]string{async.HeaderCallbackURL: cb.URL})
	poll.Until(t, 90*time.Second, func() bool { return cb.count() >= 1 }, "waiting for the failure callback")
	lastDead(t, m.js)

	mu.Lock()
	healthy = true
	mu.Unlock()
	n, err := queue.Redrive(context.Background(), m.js, fnA.Namespace, fnA.Name, time.Now(), 0)
	if err != nil || n != 1 {
		t.Fatalf("Redrive = %d, %v; want 1 call queued again", n, err)
	}
	poll.Until(t, 90*time.Second, func() bool { return cb.count() >= 2 }, "waiting for the success callback")
	c := cb.all()[1]
	if c.header.Get(async.HeaderCallID) != id || c.header.Get(async.HeaderFunctionStatus) != "200" || c.header.Get(async.HeaderDeadReason) != "" {
		t.Errorf("redriven call's callback %v; want the same call id %s, status 200, no dead reason", c.header, id)
	}
	if app.count() != 2 {
		t.Errorf("app ran %d times, want 2 (the failure and the redrive)", app.count())
	}
	if n, err := queue.Redrive(context.Background(), m.js, fnA.Namespace, fnA.Name, time.Now(), 0); err != nil || n != 0 {
		t.Errorf("second Redrive = %d, %v; want nothing left", n, err)
	}
}
