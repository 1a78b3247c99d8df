package queue_test

import (
	"context"
	"encoding/hex"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/queue"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
)

// startServer runs an embedded server on a random loopback port with a fresh store, and
// stops it when the test ends.
func startServer(t *testing.T, key, dir string) *queue.Server {
	t.Helper()
	return startServerWith(t, queue.ServerOptions{StoreDir: dir, Key: key})
}

// startServerWith runs an embedded server with o on a random loopback port.
func startServerWith(t *testing.T, o queue.ServerOptions) *queue.Server {
	t.Helper()
	o.Listen, o.Logger = "127.0.0.1:-1", logr.Discard()
	s, err := queue.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Start returned %v after stop", err)
		}
	})
	select {
	case <-s.Ready():
	case err := <-done:
		t.Fatalf("server did not start: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("server not ready after 60s")
	}
	return s
}

// connect dials url as the manager (AdminUser with key's password), or without credentials
// when key is empty.
func connect(t *testing.T, url, key string) jetstream.JetStream {
	t.Helper()
	var o queue.ClientOptions
	if key != "" {
		o = queue.NewCredentials(key).Admin()
	}
	o.URL, o.Name = url, t.Name()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, js, err := queue.Connect(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return js
}

// The embedded server takes only derived credentials: no token, no anonymous client. A
// call queued under one key survives a restart with a new key (every password changes,
// as when the Secret is deleted): the manager and the function's pods, with their new
// passwords, find it; the old passwords are refused.
func TestServerKeepsCallsAcrossRestartWithNewKey(t *testing.T) {
	oldKey, _, _ := queue.EnsureToken(nil)
	newKey, _, _ := queue.EnsureToken(nil)
	dir := t.TempDir()
	ctx := context.Background()

	func() {
		stopCtx, stop := context.WithCancel(ctx)
		s, err := queue.NewServer(queue.ServerOptions{Listen: "127.0.0.1:-1", StoreDir: dir, Key: oldKey, Logger: logr.Discard()})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- s.Start(stopCtx) }()
		<-s.Ready()

		for what, o := range map[string][]nats.Option{
			"no credential":       nil,
			"the key as token":    {nats.Token(oldKey)},
			"the key as password": {nats.UserInfo(queue.AdminUser, oldKey)},
		} {
			if nc, err := nats.Connect(s.ClientURL(), o...); err == nil {
				nc.Close()
				t.Fatalf("connected with %s", what)
			}
		}
		js := connect(t, s.ClientURL(), oldKey)
		if err := queue.EnsureStreams(ctx, js, queue.StreamOptions{}); err != nil {
			t.Fatal(err)
		}
		caller := connectAs(t, s.ClientURL(), queue.NewCredentials(oldKey).Client(queue.NamespaceIdentity("web")))
		if _, err := caller.js.Publish(ctx, contract.CallsSubject("default", "fn"), []byte("hello")); err != nil {
			t.Fatal(err)
		}
		stop()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}()

	// A new server on the same store, with a new key, still has the queued call.
	s := startServer(t, newKey, dir)
	if nc, err := nats.Connect(s.ClientURL(), nats.UserInfo(queue.AdminUser, queue.NewCredentials(oldKey).Password(queue.AdminUser))); err == nil {
		nc.Close()
		t.Fatal("the manager's password under the old key was accepted")
	}
	js := connect(t, s.ClientURL(), newKey)
	if err := queue.EnsureStreams(ctx, js, queue.StreamOptions{}); err != nil {
		t.Fatalf("EnsureStreams on existing streams: %v", err)
	}
	n, err := queue.PendingCount(ctx, js, "default", "fn")
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("pending after restart = %d, want 1", n)
	}
	if _, err := queue.EnsureConsumers(ctx, js, []queue.FunctionKey{{Namespace: "default", Name: "fn"}}); err != nil {
		t.Fatal(err)
	}
	fn := connectAs(t, s.ClientURL(), queue.NewCredentials(newKey).Client(queue.FunctionIdentity("default", "fn")))
	if got := pullOne(t, fn, "default", "fn"); got != "hello" {
		t.Fatalf("the function's pods pulled %q after the key changed, want hello", got)
	}
}

func TestEnsureStreamsConfiguresWorkQueueAndDeadLetter(t *testing.T) {
	s := startServer(t, "", t.TempDir())
	js := connect(t, s.ClientURL(), "")
	ctx := context.Background()
	if err := queue.EnsureStreams(ctx, js, queue.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	calls, err := js.Stream(ctx, contract.CallsStream)
	if err != nil {
		t.Fatal(err)
	}
	ci := calls.CachedInfo().Config
	if ci.Retention != jetstream.WorkQueuePolicy || ci.Duplicates != 10*time.Minute || ci.MaxMsgSize != queue.DefaultMaxPayload {
		t.Errorf("WEFT_CALLS config = retention %v, duplicates %v, max msg %d", ci.Retention, ci.Duplicates, ci.MaxMsgSize)
	}
	dead, err := js.Stream(ctx, contract.DeadStream)
	if err != nil {
		t.Fatal(err)
	}
	if di := dead.CachedInfo().Config; di.Retention != jetstream.LimitsPolicy || di.MaxAge != 7*24*time.Hour {
		t.Errorf("WEFT_DEAD config = retention %v, max age %v", di.Retention, di.MaxAge)
	}

	// Same Nats-Msg-Id within the window is stored once.
	for range 2 {
		if _, err := js.Publish(ctx, contract.CallsSubject("ns", "a"), []byte("x"), jetstream.WithMsgID("key-1")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := js.Publish(ctx, contract.DeadSubject("ns", "a"), []byte("x")); err != nil {
		t.Fatalf("publishing to the dead-letter subject: %v", err)
	}
	n, err := queue.PendingCount(ctx, js, "ns", "a")
	if err != nil || n != 1 {
		t.Fatalf("pending = %d, %v; want 1 (duplicate dropped, dead letter not counted)", n, err)
	}

	// A body above the bound is refused by the stream.
	big := make([]byte, queue.DefaultMaxPayload+1)
	if _, err := js.Publish(ctx, contract.CallsSubject("ns", "a"), big); err == nil {
		t.Error("a message larger than MaxMsgSize was accepted")
	}
}

type sinkRecorder struct {
	mu   sync.Mutex
	last map[queue.FunctionKey]int
}

func (r *sinkRecorder) SetPending(fn queue.FunctionKey, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last[fn] = n
}

func (r *sinkRecorder) get(fn queue.FunctionKey) (int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n, ok := r.last[fn]
	return n, ok
}

func TestPendingWatcherReportsBacklogAndDrain(t *testing.T) {
	s := startServer(t, "", t.TempDir())
	js := connect(t, s.ClientURL(), "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := queue.EnsureStreams(ctx, js, queue.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		fn := "a"
		if i >= 3 {
			fn = "b"
		}
		if _, err := js.Publish(ctx, contract.CallsSubject("ns", fn), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	all, err := queue.Pending(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	if all[queue.FunctionKey{"ns", "a"}] != 3 || all[queue.FunctionKey{"ns", "b"}] != 2 || len(all) != 2 {
		t.Fatalf("Pending = %v, want ns/a 3, ns/b 2", all)
	}

	rec := &sinkRecorder{last: map[queue.FunctionKey]int{}}
	w := &queue.PendingWatcher{JS: js, Sink: rec, Interval: 20 * time.Millisecond, Logger: logr.Discard()}
	go func() { _ = w.Start(ctx) }()
	poll.Until(t, 60*time.Second, func() bool { n, _ := rec.get(queue.FunctionKey{"ns", "a"}); return n == 3 }, "waiting for ns/a reported as 3")

	// Drain ns/a through a work-queue consumer; the watcher must report 0, not go quiet.
	cons, err := js.CreateOrUpdateConsumer(ctx, contract.CallsStream, jetstream.ConsumerConfig{
		Durable: "drain", FilterSubject: contract.CallsSubject("ns", "a"), AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(3, jetstream.FetchMaxWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	poll.Until(t, 60*time.Second, func() bool {
		n, ok := rec.get(queue.FunctionKey{"ns", "a"})
		return ok && n == 0
	}, "waiting for ns/a reported as 0 after drain")
	if n, _ := rec.get(queue.FunctionKey{"ns", "b"}); n != 2 {
		t.Errorf("ns/b = %d, want 2", n)
	}
}

func TestEnsureToken(t *testing.T) {
	tok, data, changed := queue.EnsureToken(map[string][]byte{"other": []byte("x")})
	if !changed || len(tok) != 64 || string(data[queue.TokenKey]) != tok || string(data["other"]) != "x" {
		t.Fatalf("new token: %q %v changed=%v", tok, data, changed)
	}
	if _, err := hex.DecodeString(tok); err != nil {
		t.Errorf("token is not hex: %v", err)
	}
	again, data2, changed := queue.EnsureToken(data)
	if changed || again != tok || string(data2[queue.TokenKey]) != tok {
		t.Errorf("existing token not kept: %q changed=%v", again, changed)
	}
	other, _, _ := queue.EnsureToken(nil)
	if other == tok {
		t.Error("two generated tokens are equal")
	}
}

func TestFunctionFromSubject(t *testing.T) {
	for subj, want := range map[string][2]string{
		"weft.calls.default.order-processing": {"default", "order-processing"},
		"weft.calls.default":                  {},
		"weft.calls.a.b.c":                    {},
		"weft.dead.default.x":                 {},
	} {
		ns, name, ok := contract.FunctionFromSubject(subj)
		if ok != (want[0] != "") || ns != want[0] || name != want[1] {
			t.Errorf("FunctionFromSubject(%q) = %q %q %v, want %v", subj, ns, name, ok, want)
		}
	}
}

func TestRunnerSetsUpStreamsAndFeedsBacklog(t *testing.T) {
	token, _, _ := queue.EnsureToken(nil)
	s := startServer(t, token, t.TempDir())
	rec := &sinkRecorder{last: map[queue.FunctionKey]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	fns := functionList{{Namespace: "prod", Name: "resize"}, {Namespace: "prod", Name: "thumb"}}
	r := &queue.Runner{Embedded: s, Client: queue.NewCredentials(token).Admin(), Functions: fns, Sink: rec, Interval: 20 * time.Millisecond, Logger: logr.Discard()}
	go func() { done <- r.Start(ctx) }()

	js := connect(t, s.ClientURL(), token)
	var err error
	poll.Until(t, 60*time.Second, func() bool {
		_, err = js.Stream(ctx, contract.CallsStream)
		return err == nil
	}, "waiting for the runner to create WEFT_CALLS")
	for range 2 {
		if _, err := js.Publish(ctx, contract.CallsSubject("prod", "resize"), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	poll.Until(t, 60*time.Second, func() bool { n, _ := rec.get(queue.FunctionKey{"prod", "resize"}); return n == 2 }, "waiting for prod/resize backlog 2")
	// Every function got its consumer, as ConsumerConfig says.
	for _, fn := range fns {
		want := queue.ConsumerConfig(fn)
		var cons jetstream.Consumer
		poll.Until(t, 60*time.Second, func() bool {
			cons, err = js.Consumer(ctx, contract.CallsStream, want.Durable)
			return err == nil
		}, "waiting for the runner to make consumer "+want.Durable)
		got := cons.CachedInfo().Config
		if got.FilterSubject != want.FilterSubject || got.AckWait != want.AckWait || got.MaxDeliver != -1 || got.DeliverSubject != "" {
			t.Errorf("consumer %s = %+v, want %+v", want.Durable, got, want)
		}
	}
	if n, err := queue.EnsureConsumers(ctx, js, fns); err != nil || n != 0 {
		t.Errorf("EnsureConsumers again made %d, %v; want none", n, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Start returned %v", err)
	}
}

// functionList is a fixed FunctionLister.
type functionList []queue.FunctionKey

func (l functionList) Functions(context.Context) ([]queue.Function, error) {
	out := make([]queue.Function, len(l))
	for i, k := range l {
		out[i] = queue.Function{FunctionKey: k}
	}
	return out, nil
}
