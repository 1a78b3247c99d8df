package queue_test

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	testclock "k8s.io/utils/clock/testing"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/queue"
	"github.com/weftmesh/weft/sidecar/async"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
)

// Minted JWTs in use: sidecars connecting with them, renewal under traffic, the issuer
// resyncing, and deny lists past the server's control-line limit.

// End to end with the sidecar's own code: a namespace's sidecar (async.Dial with its
// minted JWT and seed, as cmd/sidecar passes the SDS secret) queues a call through its
// Publisher; the function's sidecar, with its own minted credential, pulls, runs and acks
// it; the backlog empties.
func TestSidecarsWithMintedJWTs(t *testing.T) {
	c := startOperatorCluster(t)
	iss := c.issuer(t, queue.IssuerOptions{})
	fn := async.FunctionRef{Namespace: "mq", Name: "a"}
	dial := func(m contract.QueueMeta) jetstream.JetStream {
		m.URL = c.url
		nc, js, err := async.Dial(m, t.Name()+"/"+m.User, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return js
	}
	cfg := async.DefaultConfig()
	cfg.Timeout = 30 * time.Second
	pub := async.NewPublisher(dial(iss.ForView("web", "")), async.FunctionSourceFunc(func(f async.FunctionRef) (async.Config, bool) {
		return cfg, f == fn
	}), async.PublisherOptions{})
	callerSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { pub.ServeAsync(w, r, fn) }))
	t.Cleanup(callerSrv.Close)
	var ran atomic.Int32
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ran.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(app.Close)
	cons, err := async.NewConsumer(dial(iss.ForView("mq", "a")), async.ConsumerOptions{Function: fn, AppURL: app.URL, Config: cfg,
		FetchWait: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = cons.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	req, _ := http.NewRequest(http.MethodPost, callerSrv.URL+"/work", strings.NewReader("job"))
	req.Header.Set("Prefer", "respond-async")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("queueing a call as web: %d", resp.StatusCode)
	}
	poll.Until(t, 60*time.Second, func() bool { return ran.Load() == 1 }, "waiting for mq/a's sidecar to run the call")
	poll.Until(t, 60*time.Second, func() bool {
		n, err := queue.PendingCount(context.Background(), c.admin, "mq", "a")
		return err == nil && n == 0
	}, "waiting for the acked call to leave the work queue")
}

// A renewed or re-granted credential of the same identity is swapped into the sidecar's
// open connection (async.Renew, as cmd/sidecar does on a new SDS secret): it reconnects with
// the new JWT, whose permissions then apply, and a call in flight across the swap is acked
// once, never redelivered. Anything but the same identity's next JWT is not swapped.
func TestSidecarRenewKeepsCallsInFlight(t *testing.T) {
	c := startOperatorCluster(t)
	var mu sync.Mutex
	restricted := map[queue.FunctionKey][]string{}
	clk := testclock.NewFakeClock(time.Now())
	iss := c.issuer(t, queue.IssuerOptions{Lifetime: time.Hour, Clock: clk, Policy: queue.CallPolicyFunc(func() (map[queue.FunctionKey][]string, error) {
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(restricted), nil
	})})
	fn := async.FunctionRef{Namespace: "mq", Name: "a"}
	withURL := func(m contract.QueueMeta) contract.QueueMeta { m.URL = c.url; return m }
	refused := &async.Refusals{}
	dial := func(m contract.QueueMeta) (*nats.Conn, jetstream.JetStream) {
		nc, js, err := async.Dial(withURL(m), t.Name()+"/"+m.User, refused)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc, js
	}
	cfg := async.DefaultConfig()
	cfg.Timeout = 30 * time.Second
	webOld := iss.ForView("web", "")
	webNC, webJS := dial(webOld)
	pub := async.NewPublisher(webJS, async.FunctionSourceFunc(func(async.FunctionRef) (async.Config, bool) { return cfg, true }), async.PublisherOptions{Refused: refused})
	callerSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ns, name, _ := strings.Cut(r.Header.Get("X-Function"), "/")
		pub.ServeAsync(w, r, async.FunctionRef{Namespace: ns, Name: name})
	}))
	t.Cleanup(callerSrv.Close)
	call := func(to string) int {
		req, _ := http.NewRequest(http.MethodPost, callerSrv.URL+"/work", strings.NewReader("job"))
		req.Header.Set("Prefer", "respond-async")
		req.Header.Set("X-Function", to)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	var ran atomic.Int32
	release := make(chan struct{})
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ran.Add(1)
		<-release
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(app.Close)
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	aOld := iss.ForView("mq", "a")
	aNC, aJS := dial(aOld)
	cons, err := async.NewConsumer(aJS, async.ConsumerOptions{Function: fn, AppURL: app.URL, Config: cfg, FetchWait: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = cons.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	if s := call("mq/a"); s != http.StatusAccepted {
		t.Fatalf("queueing a call to mq/a: %d", s)
	}
	poll.Until(t, 30*time.Second, func() bool { return ran.Load() == 1 }, "waiting for the call to reach mq/a's app")

	// Half the lifetime passes and mq/b starts admitting only mq/a: both credentials are
	// replaced; the sidecars swap them in while mq/a's call is still running.
	clk.Step(30 * time.Minute)
	mu.Lock()
	restricted[queue.FunctionKey{Namespace: "mq", Name: "b"}] = []string{"mq/a"}
	mu.Unlock()
	if !iss.Refresh() {
		t.Fatal("Refresh found nothing to replace")
	}
	aNew, webNew := iss.ForView("mq", "a"), iss.ForView("web", "")
	if aNew.JWT == aOld.JWT || webNew.JWT == webOld.JWT {
		t.Fatal("the credentials were not replaced")
	}
	otherURL := withURL(webNew)
	otherURL.URL = "nats://127.0.0.2:4222"
	for what, next := range map[string]contract.QueueMeta{
		"another identity's JWT": withURL(aNew),
		"a password credential":  withURL(contract.QueueMeta{User: webOld.User, InboxPrefix: webOld.InboxPrefix, Password: "pw"}),
		"another URL":            otherURL,
	} {
		if async.Renew(webNC, withURL(webOld), next) {
			t.Errorf("%s: swapped in", what)
		}
	}
	for nc, m := range map[*nats.Conn][2]contract.QueueMeta{aNC: {aOld, aNew}, webNC: {webOld, webNew}} {
		if !async.Renew(nc, withURL(m[0]), withURL(m[1])) {
			t.Fatalf("%s: the next JWT was not swapped in", m[0].User)
		}
	}
	poll.Until(t, 30*time.Second, func() bool {
		return aNC.Stats().Reconnects >= 1 && aNC.IsConnected() && webNC.Stats().Reconnects >= 1 && webNC.IsConnected()
	}, "waiting for both sidecars to reconnect with their new JWTs")

	// web's new grant applies: mq/b refuses it, mq/a still takes its calls.
	if s := call("mq/b"); s != http.StatusForbidden {
		t.Errorf("web calling mq/b after the swap: %d, want 403 (its new JWT denies mq/b)", s)
	}
	// The call in flight is acked across the reconnect, once.
	close(release)
	poll.Until(t, 30*time.Second, func() bool {
		ci, err := c.admin.Consumer(context.Background(), contract.CallsStream, contract.ConsumerName("mq", "a"))
		if err != nil {
			return false
		}
		info, err := ci.Info(context.Background())
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0
	}, "waiting for the call in flight to be acked")
	ci, err := c.admin.Consumer(context.Background(), contract.CallsStream, contract.ConsumerName("mq", "a"))
	if err != nil {
		t.Fatal(err)
	}
	if info, err := ci.Info(context.Background()); err != nil || info.NumRedelivered != 0 || info.Delivered.Consumer != 1 {
		t.Fatalf("mq/a's consumer after the swap: %+v, %v; want one delivery, no redelivery", info, err)
	}
	if s := call("mq/a"); s != http.StatusAccepted {
		t.Fatalf("web calling mq/a after the swap: %d", s)
	}
	poll.Until(t, 30*time.Second, func() bool { return ran.Load() == 2 }, "waiting for mq/a to run a call pulled after the swap")
}

// IssuerRefresh, the manager's loop, asks for a resync when a credential reaches half its
// lifetime and when the policy changes a grant; the resync's views then get new ones.
func TestIssuerRefreshResyncs(t *testing.T) {
	var mu sync.Mutex
	restricted := map[queue.FunctionKey][]string{}
	clk := testclock.NewFakeClock(time.Now())
	acc, accPub := mustKey(t, nkeys.CreateAccount)
	iss, err := queue.NewIssuer(queue.IssuerOptions{Account: accPub, SigningSeed: seedOf(t, acc), Lifetime: time.Hour, Clock: clk,
		Policy: queue.CallPolicyFunc(func() (map[queue.FunctionKey][]string, error) {
			mu.Lock()
			defer mu.Unlock()
			return maps.Clone(restricted), nil
		})})
	if err != nil {
		t.Fatal(err)
	}
	var resyncs atomic.Int32
	r := &queue.IssuerRefresh{Issuer: iss, Interval: 5 * time.Second, Clock: clk, Resync: func() { resyncs.Add(1) }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = r.Start(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	poll.Until(t, 10*time.Second, clk.HasWaiters, "waiting for the refresh ticker")

	first := iss.ForView("web", "")
	clk.Step(30 * time.Minute)
	poll.Until(t, 10*time.Second, func() bool { return resyncs.Load() == 1 }, "waiting for the resync at half life")
	second := iss.ForView("web", "")
	if second.JWT == first.JWT {
		t.Fatal("the view after the resync got the old credential")
	}

	mu.Lock()
	restricted[queue.FunctionKey{Namespace: "mq", Name: "b"}] = []string{"mq/a"}
	mu.Unlock()
	clk.Step(5 * time.Second)
	poll.Until(t, 10*time.Second, func() bool { return resyncs.Load() == 2 }, "waiting for the resync after the policy change")
	if third := iss.ForView("web", ""); third.JWT == second.JWT {
		t.Fatal("the view after the policy change got the old credential")
	}
}

// A JWT grows with the functions whose weft.dev/async-callers exclude the identity, and the
// client sends it in its CONNECT line: over NATS's default max_control_line (4096 bytes) the
// server refuses the connection, which is why the manager warns above queue.LargeJWT and the
// docs tell operators to raise it. With max_control_line at 64 KiB the same credential
// connects and its 200 denials hold.
func TestJWTLargeDenyListNeedsMaxControlLine(t *testing.T) {
	restricted := map[queue.FunctionKey][]string{}
	for i := range 200 {
		restricted[queue.FunctionKey{Namespace: "shop", Name: fmt.Sprintf("fn-%03d", i)}] = []string{"ops"}
	}
	policy := queue.CallPolicyFunc(func() (map[queue.FunctionKey][]string, error) { return restricted, nil })

	small := startOperatorCluster(t)
	iss := small.issuer(t, queue.IssuerOptions{Policy: policy})
	m := iss.ForView("web", "")
	if iss.LargestJWT() != len(m.JWT) || len(m.JWT) <= queue.LargeJWT {
		t.Fatalf("JWT of %d bytes, LargestJWT %d: want it over LargeJWT (%d) and recorded", len(m.JWT), iss.LargestJWT(), queue.LargeJWT)
	}
	// The server answers -ERR 'Maximum Control Line Exceeded' and closes; the client sees
	// that or, when the close wins the race, a reset. The same credential is valid (below).
	if _, err := dialJWT(t, small.url, m); err == nil {
		t.Fatalf("a %d-byte JWT against max_control_line 4096 connected", len(m.JWT))
	}

	big := startOperatorClusterWith(t, 64<<10)
	web := mustDialJWT(t, big.url, big.issuer(t, queue.IssuerOptions{Policy: policy}).ForView("web", ""))
	short, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, err := web.js.Publish(short, contract.CallsSubject("shop", "fn-137"), []byte("x")); err == nil {
		t.Fatal("web called shop/fn-137, which admits only ops")
	}
	web.violation(t, "web calling shop/fn-137", contract.CallsSubject("shop", "fn-137"))
}
