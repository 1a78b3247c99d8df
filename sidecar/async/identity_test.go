package async_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/queue"
	"github.com/weftmesh/weft/sidecar/async"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
)

// securedMesh is an embedded server that takes only per-identity credentials, with Weft's
// streams made by the manager's user.
func securedMesh(t *testing.T, policy queue.CallPolicy) (url string, admin jetstream.JetStream, creds queue.Credentials) {
	t.Helper()
	key, _, _ := queue.EnsureToken(nil)
	s, err := queue.NewServer(queue.ServerOptions{Listen: "127.0.0.1:-1", StoreDir: t.TempDir(), Key: key, Policy: policy, Logger: logr.Discard()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Start(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	<-s.Ready()
	creds = queue.NewCredentials(key)
	o := creds.Admin()
	o.URL, o.Name = s.ClientURL(), "manager"
	cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer ccancel()
	nc, js, err := queue.Connect(cctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if err := queue.EnsureStreams(cctx, js, queue.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	// The manager makes the function's consumer; its identity may only use it.
	if _, err := queue.EnsureConsumers(cctx, js, []queue.FunctionKey{{Namespace: fnA.Namespace, Name: fnA.Name}}); err != nil {
		t.Fatal(err)
	}
	return s.ClientURL(), js, creds
}

// dialAs connects like a sidecar given the credential the control plane sends id.
func dialAs(t *testing.T, url string, creds queue.Credentials, id queue.Identity, refused *async.Refusals) jetstream.JetStream {
	t.Helper()
	q := creds.For(id)
	q.URL = url
	nc, js, err := async.Dial(q, t.Name()+"/"+id.User(), refused)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return js
}

// With per-identity credentials the sidecar's own code still works end to end: a
// namespace's sidecar queues a call, the function's sidecar pulls, runs, acks it and
// dead-letters a failing one. A sidecar of another identity running a consumer for the
// function (a pod claiming to serve it without its credential) gets none of its calls.
func TestSidecarsWithIdentityCredentials(t *testing.T) {
	url, admin, creds := securedMesh(t, nil)
	cfg := fastConfig()
	cfg.MaxAttempts = 1
	web := dialAs(t, url, creds, queue.NamespaceIdentity("web"), nil)
	srv := caller(t, web, cfg, async.PublisherOptions{})

	// The impostor: web's credential, fnA's consumer.
	stolen := newRecorder(t, ok)
	stopImpostor := runConsumer(t, web, stolen.URL, cfg, nil)
	status, id, body := callAsync(t, srv.URL, "first", nil)
	if status != http.StatusAccepted {
		t.Fatalf("web queueing a call to %s: %d %s", fnA, status, body)
	}
	time.Sleep(3 * time.Second) // a few of the impostor's attempts; nothing may arrive
	stopImpostor()
	if n := stolen.count(); n != 0 {
		t.Fatalf("a consumer without %s's credential ran %d of its calls", fnA, n)
	}
	if n, err := queue.PendingCount(context.Background(), admin, fnA.Namespace, fnA.Name); err != nil || n != 1 {
		t.Fatalf("backlog of %s = %d, %v; want the call still queued", fnA, n, err)
	}

	// The function's own sidecar runs it, then dead-letters a failing one.
	app := newRecorder(t, func(w http.ResponseWriter, _ *http.Request, body string) {
		if strings.Contains(body, "fail") {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	runConsumer(t, dialAs(t, url, creds, queue.FunctionIdentity(fnA.Namespace, fnA.Name), nil), app.URL, cfg, nil)
	poll.Until(t, 60*time.Second, func() bool { return app.count() >= 1 }, "waiting for the function's sidecar to run the call")
	if got := app.all()[0].header.Get(async.HeaderCallID); got != id {
		t.Errorf("ran call %s, want %s", got, id)
	}
	poll.Until(t, 60*time.Second, func() bool {
		n, err := queue.PendingCount(context.Background(), admin, fnA.Namespace, fnA.Name)
		return err == nil && n == 0
	}, "waiting for the acked call to leave the work queue")
	if status, _, body := callAsync(t, srv.URL, "fail", nil); status != http.StatusAccepted {
		t.Fatalf("queueing the failing call: %d %s", status, body)
	}
	poll.Until(t, 60*time.Second, func() bool {
		dead, err := queue.DeadLetters(context.Background(), admin)
		return err == nil && dead[queue.FunctionKey{Namespace: fnA.Namespace, Name: fnA.Name}] == 1
	}, "waiting for the failing call in "+contract.DeadStream)
}

// A caller the function's weft.dev/async-callers leaves out is answered 403 saying so:
// the first time once NATS has refused the publish, then at once; it queued nothing.
// A caller the annotation names is accepted.
func TestPublisherAnswers403WhenPolicyRefuses(t *testing.T) {
	policy := queue.CallPolicyFunc(func() (map[queue.FunctionKey][]string, error) {
		return map[queue.FunctionKey][]string{{Namespace: fnA.Namespace, Name: fnA.Name}: {"ops"}}, nil
	})
	url, admin, creds := securedMesh(t, policy)
	cfg := fastConfig()
	refused := &async.Refusals{}
	pub := &countingPublisher{MsgPublisher: dialAs(t, url, creds, queue.NamespaceIdentity("web"), refused)}
	web := caller(t, pub, cfg, async.PublisherOptions{Refused: refused})
	for i := range 2 {
		status, _, body := callAsync(t, web.URL, "x", nil)
		if status != http.StatusForbidden || !strings.Contains(body, "weft.dev/async-callers") {
			t.Fatalf("call %d from web: %d %q; want 403 naming weft.dev/async-callers", i, status, body)
		}
	}
	if n := pub.n.Load(); n != 1 {
		t.Errorf("web published %d times, want 1: the second refusal is answered without asking NATS", n)
	}
	ops := caller(t, dialAs(t, url, creds, queue.NamespaceIdentity("ops"), &async.Refusals{}), cfg, async.PublisherOptions{})
	if status, _, body := callAsync(t, ops.URL, "x", nil); status != http.StatusAccepted {
		t.Fatalf("call from ops: %d %q; want 202", status, body)
	}
	if n, err := queue.PendingCount(context.Background(), admin, fnA.Namespace, fnA.Name); err != nil || n != 1 {
		t.Fatalf("backlog = %d, %v; want only ops's call", n, err)
	}
}

// countingPublisher counts publishes.
type countingPublisher struct {
	async.MsgPublisher
	n atomic.Int32
}

func (c *countingPublisher) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	c.n.Add(1)
	return c.MsgPublisher.PublishMsg(ctx, msg, opts...)
}
