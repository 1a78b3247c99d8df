package async_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats.go/jetstream"

	// The manager's side of the queue, used only here: the tests then pin the subject and
	// stream layout both sides depend on (the sidecar binary never links it).
	"github.com/weftmesh/weft/internal/queue"
	"github.com/weftmesh/weft/sidecar/async"
)

var fnA = async.FunctionRef{Namespace: "default", Name: "orders"}

// mesh is one embedded JetStream server with Weft's streams, a JetStream client, and a
// way to stop the server.
type mesh struct {
	js   jetstream.JetStream
	url  string
	stop func()
}

func newMesh(t *testing.T) *mesh { t.Helper(); return newMeshAt(t, "127.0.0.1:-1") }

func newMeshAt(t *testing.T, listen string) *mesh {
	t.Helper()
	s, err := queue.NewServer(queue.ServerOptions{Listen: listen, StoreDir: t.TempDir(), Logger: logr.Discard()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Start(ctx); close(done) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	select {
	case <-s.Ready():
	case <-done:
		t.Fatal("embedded NATS did not start")
	}
	cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer ccancel()
	nc, js, err := queue.Connect(cctx, queue.ClientOptions{URL: s.ClientURL(), Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if err := queue.EnsureStreams(cctx, js, queue.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	return &mesh{js: js, url: s.ClientURL(), stop: stop}
}

// fastConfig keeps back-offs short so retries happen quickly in tests.
func fastConfig() async.Config {
	c := async.DefaultConfig()
	c.Backoff = 20 * time.Millisecond
	c.MaxBackoff = 80 * time.Millisecond
	c.Timeout = 30 * time.Second
	return c
}

// caller is a loopback HTTP server that queues every request to fnA (or the function
// named by the X-Test-Function header) through a Publisher.
func caller(t *testing.T, js async.MsgPublisher, cfg async.Config, opts async.PublisherOptions) *httptest.Server {
	t.Helper()
	srv, _ := callerPub(t, js, cfg, opts)
	return srv
}

func callerPub(t *testing.T, js async.MsgPublisher, cfg async.Config, opts async.PublisherOptions) (*httptest.Server, *async.Publisher) {
	t.Helper()
	fns := async.FunctionSourceFunc(func(fn async.FunctionRef) (async.Config, bool) {
		return cfg, fn.Namespace == "default"
	})
	p := async.NewPublisher(js, fns, opts)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fn := fnA
		if n := r.Header.Get("X-Test-Function"); n != "" {
			ns, name, _ := strings.Cut(n, "/")
			fn = async.FunctionRef{Namespace: ns, Name: name}
		}
		p.ServeAsync(w, r, fn)
	}))
	t.Cleanup(srv.Close)
	return srv, p
}

// callAsync sends one request and returns the response status, call id and body.
func callAsync(t *testing.T, url string, body string, hdr map[string]string) (int, string, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Prefer", "respond-async")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get(async.HeaderCallID), string(b)
}

// received is one request a test server saw.
type received struct {
	header http.Header
	method string
	uri    string
	body   string
	at     time.Time
}

// recorder is a loopback HTTP server that records requests and answers with respond.
type recorder struct {
	*httptest.Server
	mu      sync.Mutex
	reqs    []received
	cur     int
	maxSeen int
}

func newRecorder(t *testing.T, respond func(w http.ResponseWriter, r *http.Request, body string)) *recorder {
	t.Helper()
	rec := &recorder{}
	rec.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, received{header: r.Header.Clone(), method: r.Method, uri: r.URL.RequestURI(), body: string(b), at: time.Now()})
		rec.cur++
		rec.maxSeen = max(rec.maxSeen, rec.cur)
		rec.mu.Unlock()
		defer func() {
			rec.mu.Lock()
			rec.cur--
			rec.mu.Unlock()
		}()
		respond(w, r, string(b))
	}))
	t.Cleanup(rec.Close)
	return rec
}

func (r *recorder) all() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.reqs...)
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reqs)
}

func (r *recorder) concurrent() (cur, maxSeen int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur, r.maxSeen
}

// runConsumer starts a Consumer for fnA against app and returns a stop func that cancels
// it and waits for Run to return.
func runConsumer(t *testing.T, js async.ConsumerJS, appURL string, cfg async.Config, tweak func(*async.ConsumerOptions)) (stop func()) {
	t.Helper()
	_, stop = startConsumer(t, js, appURL, cfg, tweak)
	return stop
}

func startConsumer(t *testing.T, js async.ConsumerJS, appURL string, cfg async.Config, tweak func(*async.ConsumerOptions)) (_ *async.Consumer, stop func()) {
	t.Helper()
	opts := async.ConsumerOptions{Function: fnA, AppURL: appURL, Config: cfg,
		FetchWait: 2 * time.Second, CallbackBackoff: 10 * time.Millisecond, DrainTimeout: 30 * time.Second}
	if tweak != nil {
		tweak(&opts)
	}
	c, err := async.NewConsumer(js, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run returned %v", err)
				}
			case <-time.After(90 * time.Second):
				t.Error("consumer did not stop within 90s")
			}
		})
	}
	t.Cleanup(stop)
	return c, stop
}

func ok(w http.ResponseWriter, _ *http.Request, _ string) { w.WriteHeader(http.StatusNoContent) }

// metrics renders a StatsWriter's Prometheus text.
func metrics(w interface{ WritePrometheus(io.Writer) }) string {
	var b bytes.Buffer
	w.WritePrometheus(&b)
	return b.String()
}

// waitMetrics waits until w's metrics hold every line, then checks them once more, so a
// counter the consumer bumps after answering (a callback's result, the in-flight gauge)
// is read after it settled rather than racing it.
func waitMetrics(t *testing.T, w interface{ WritePrometheus(io.Writer) }, lines ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		text := metrics(w)
		missing := false
		for _, l := range lines {
			if !strings.Contains(text, l+"\n") {
				missing = true
			}
		}
		if !missing || time.Now().After(deadline) {
			wantMetrics(t, text, lines...)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// wantMetrics fails the test for each line missing from text.
func wantMetrics(t *testing.T, text string, lines ...string) {
	t.Helper()
	for _, l := range lines {
		if !strings.Contains(text, l+"\n") {
			t.Errorf("metrics lack %q; got:\n%s", l, text)
		}
	}
}
