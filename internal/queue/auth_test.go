package queue_test

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/queue"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
)

// peer is one NATS client acting as an identity; errs receives the server's asynchronous
// errors (permission violations).
type peer struct {
	nc   *nats.Conn
	js   jetstream.JetStream
	errs chan error
}

// connectAs dials url with o's user, password and inbox prefix, as a sidecar does.
func connectAs(t *testing.T, url string, o queue.ClientOptions) *peer {
	t.Helper()
	p := &peer{errs: make(chan error, 64)}
	opts := []nats.Option{nats.Name(t.Name()), nats.UserInfo(o.User, o.Password),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case p.errs <- err:
			default:
			}
		})}
	if o.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(o.InboxPrefix))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connecting as %s: %v", o.User, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	p.nc, p.js = nc, js
	return p
}

// violation waits for the server's permissions violation naming subject.
func (p *peer) violation(t *testing.T, what, subject string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case err := <-p.errs:
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), `"`+subject+`"`) {
				return
			}
		case <-deadline:
			t.Fatalf("%s: no permissions violation for %q within 10s", what, subject)
		}
	}
}

// quiet fails if the server reported an error to p.
func (p *peer) quiet(t *testing.T, what string) {
	t.Helper()
	if err := p.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.errs:
		t.Fatalf("%s: %v", what, err)
	default:
	}
}

// consumerConfig is the durable consumer a function's sidecars make (sidecar/async).
func consumerConfig(ns, name string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{Durable: contract.ConsumerName(ns, name), FilterSubject: contract.CallsSubject(ns, name),
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxDeliver: -1, MaxAckPending: 100_000}
}

// pullOne finds the function's consumer (the manager made it) as p, pulls one call, acks
// it and returns its body.
func pullOne(t *testing.T, p *peer, ns, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, err := p.js.Consumer(ctx, contract.CallsStream, contract.ConsumerName(ns, name))
	if err != nil {
		t.Fatalf("finding the consumer of %s/%s: %v", ns, name, err)
	}
	if _, err := cons.Info(ctx); err != nil {
		t.Fatalf("consumer info of %s/%s: %v", ns, name, err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
	if err != nil {
		t.Fatalf("pulling %s/%s: %v", ns, name, err)
	}
	var got []string
	for m := range batch.Messages() {
		if err := m.InProgress(); err != nil {
			t.Fatalf("in progress: %v", err)
		}
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatalf("acking a call of %s/%s: %v", ns, name, err)
		}
		got = append(got, string(m.Data()))
	}
	if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("pulling %s/%s: %v", ns, name, err)
	}
	if len(got) != 1 {
		t.Fatalf("pulled %d calls of %s/%s, want 1", len(got), ns, name)
	}
	return got[0]
}

// queueFixture is an embedded server with Weft's streams, the manager's client, and the
// credentials its identities' passwords derive from.
type queueFixture struct {
	url   string
	admin jetstream.JetStream
	creds queue.Credentials
}

func newQueueFixture(t *testing.T, policy queue.CallPolicy) *queueFixture {
	t.Helper()
	key, _, _ := queue.EnsureToken(nil)
	s := startServerWith(t, queue.ServerOptions{StoreDir: t.TempDir(), Key: key, Policy: policy})
	admin := connect(t, s.ClientURL(), key)
	if err := queue.EnsureStreams(context.Background(), admin, queue.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	// The manager makes the functions' consumers.
	if _, err := queue.EnsureConsumers(context.Background(), admin, []queue.FunctionKey{{Namespace: "mq", Name: "a"}, {Namespace: "mq", Name: "b"}}); err != nil {
		t.Fatal(err)
	}
	return &queueFixture{url: s.ClientURL(), admin: admin, creds: queue.NewCredentials(key)}
}

func (f *queueFixture) as(t *testing.T, id queue.Identity) *peer {
	t.Helper()
	return connectAs(t, f.url, f.creds.Client(id))
}

func (f *queueFixture) pending(t *testing.T, ns, name string) int {
	t.Helper()
	n, err := queue.PendingCount(context.Background(), f.admin, ns, name)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A function's identity calls any function but consumes only its own: it cannot make,
// read or pull another function's consumer, subscribe to calls, retarget its own
// consumer's filter, touch the streams' admin API, read dead letters, or read another
// identity's replies. Its own calls it pulls, keeps, acks and dead-letters.
func TestIdentityMayCallAllButConsumeOnlyItsOwn(t *testing.T) {
	f := newQueueFixture(t, nil)
	ctx := context.Background()
	a := f.as(t, queue.FunctionIdentity("mq", "a"))
	b := f.as(t, queue.FunctionIdentity("mq", "b"))
	web := f.as(t, queue.NamespaceIdentity("web"))

	// Calling: every identity may publish to every function's subject.
	if _, err := a.js.Publish(ctx, contract.CallsSubject("mq", "b"), []byte("a->b")); err != nil {
		t.Fatalf("function a calling b: %v", err)
	}
	if _, err := web.js.Publish(ctx, contract.CallsSubject("mq", "a"), []byte("web->a")); err != nil {
		t.Fatalf("namespace web calling a: %v", err)
	}
	a.quiet(t, "calling b")
	web.quiet(t, "calling a")

	short := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, time.Second) }
	bConsumer := contract.CallsStream + "." + contract.ConsumerName("mq", "b")

	// b's consumer (the manager made it): a cannot update, read or pull from it, and b
	// itself cannot update it (say, into a push consumer delivering elsewhere).
	c, cancel := short()
	if _, err := a.js.CreateOrUpdateConsumer(c, contract.CallsStream, consumerConfig("mq", "b")); err == nil {
		t.Fatal("a made or updated b's consumer")
	}
	cancel()
	a.violation(t, "a updating b's consumer", "$JS.API.CONSUMER.CREATE."+bConsumer+"."+contract.CallsSubject("mq", "b"))
	push := consumerConfig("mq", "b")
	push.DeliverSubject = contract.DeadSubject("mq", "c")
	c, cancel = short()
	if _, err := b.js.CreateOrUpdateConsumer(c, contract.CallsStream, push); err == nil {
		t.Fatal("b turned its consumer into a push consumer")
	}
	cancel()
	b.violation(t, "b updating its own consumer", "$JS.API.CONSUMER.CREATE."+bConsumer+"."+contract.CallsSubject("mq", "b"))
	if info, err := f.admin.Consumer(ctx, contract.CallsStream, contract.ConsumerName("mq", "b")); err != nil || info.CachedInfo().Config.DeliverSubject != "" {
		t.Fatalf("b's consumer after the attempts: %v", err)
	}
	c, cancel = short()
	if _, err := a.js.Consumer(c, contract.CallsStream, contract.ConsumerName("mq", "b")); err == nil {
		t.Fatal("a read b's consumer")
	}
	cancel()
	a.violation(t, "a reading b's consumer", "$JS.API.CONSUMER.INFO."+bConsumer)
	if err := a.nc.PublishRequest("$JS.API.CONSUMER.MSG.NEXT."+bConsumer, a.nc.NewInbox(), []byte(`{"batch":1}`)); err != nil {
		t.Fatal(err)
	}
	a.violation(t, "a pulling b's calls", "$JS.API.CONSUMER.MSG.NEXT."+bConsumer)
	for _, subj := range []string{contract.CallsSubject("mq", "b"), contract.CallsPrefix + ">", ">"} {
		if _, err := a.nc.SubscribeSync(subj); err != nil {
			t.Fatal(err)
		}
		a.violation(t, "a subscribing to "+subj, subj)
	}
	// A new consumer of a's own, filtering b's calls: refused.
	evil := consumerConfig("mq", "a2")
	evil.FilterSubject = contract.CallsSubject("mq", "b")
	c, cancel = short()
	if _, err := a.js.CreateOrUpdateConsumer(c, contract.CallsStream, evil); err == nil {
		t.Fatal("a made a consumer of b's calls")
	}
	cancel()
	a.violation(t, "a making a consumer of b's calls", "$JS.API.CONSUMER.CREATE."+contract.CallsStream+"."+contract.ConsumerName("mq", "a2")+"."+contract.CallsSubject("mq", "b"))
	// A namespace's sidecars consume nothing.
	c, cancel = short()
	if _, err := web.js.CreateOrUpdateConsumer(c, contract.CallsStream, consumerConfig("web", "x")); err == nil {
		t.Fatal("a namespace identity made a consumer")
	}
	cancel()
	web.violation(t, "web making a consumer", "$JS.API.CONSUMER.CREATE."+contract.CallsStream+"."+contract.ConsumerName("web", "x")+"."+contract.CallsSubject("web", "x"))

	// Stream and consumer admin, dead letters: refused.
	for _, tc := range []struct {
		what, subject string
		do            func(context.Context) error
	}{
		{"deleting WEFT_CALLS", "$JS.API.STREAM.DELETE." + contract.CallsStream,
			func(c context.Context) error { return a.js.DeleteStream(c, contract.CallsStream) }},
		{"deleting its own consumer", "$JS.API.CONSUMER.DELETE." + contract.CallsStream + "." + contract.ConsumerName("mq", "a"),
			func(c context.Context) error {
				return a.js.DeleteConsumer(c, contract.CallsStream, contract.ConsumerName("mq", "a"))
			}},
		{"deleting b's consumer", "$JS.API.CONSUMER.DELETE." + bConsumer,
			func(c context.Context) error {
				return a.js.DeleteConsumer(c, contract.CallsStream, contract.ConsumerName("mq", "b"))
			}},
		{"reading WEFT_DEAD", "$JS.API.STREAM.INFO." + contract.DeadStream,
			func(c context.Context) error { _, err := a.js.Stream(c, contract.DeadStream); return err }},
		{"purging WEFT_CALLS", "$JS.API.STREAM.PURGE." + contract.CallsStream,
			func(c context.Context) error {
				_, err := a.nc.RequestWithContext(c, "$JS.API.STREAM.PURGE."+contract.CallsStream, nil)
				return err
			}},
		{"getting a dead letter", "$JS.API.STREAM.MSG.GET." + contract.DeadStream,
			func(c context.Context) error {
				_, err := a.nc.RequestWithContext(c, "$JS.API.STREAM.MSG.GET."+contract.DeadStream, []byte(`{"seq":1}`))
				return err
			}},
		{"direct-getting a dead letter", "$JS.API.DIRECT.GET." + contract.DeadStream,
			func(c context.Context) error {
				_, err := a.nc.RequestWithContext(c, "$JS.API.DIRECT.GET."+contract.DeadStream, []byte(`{"seq":1}`))
				return err
			}},
		{"dead-lettering b's call", contract.DeadSubject("mq", "b"),
			func(c context.Context) error {
				_, err := a.js.Publish(c, contract.DeadSubject("mq", "b"), []byte("x"))
				return err
			}},
	} {
		c, cancel := short()
		if err := tc.do(c); err == nil {
			t.Errorf("a %s: succeeded", tc.what)
		}
		cancel()
		a.violation(t, "a "+tc.what, tc.subject)
	}
	if _, err := f.admin.Stream(ctx, contract.CallsStream); err != nil {
		t.Fatalf("WEFT_CALLS after a's attempts: %v", err)
	}
	if _, err := f.admin.Consumer(ctx, contract.CallsStream, contract.ConsumerName("mq", "b")); err != nil {
		t.Fatalf("b's consumer after a's attempts: %v", err)
	}

	// Replies: nobody subscribes to another identity's inbox, or to every inbox, or sends
	// into one.
	for _, tc := range []struct {
		p       *peer
		who     string
		subject string
	}{
		{a, "a", "_INBOX.fn.mq.b.>"},
		{a, "a", "_INBOX.>"},
		{web, "web", "_INBOX.fn.mq.a.>"},
		{web, "web", "_INBOX.*.*.*.*"},
	} {
		if _, err := tc.p.nc.SubscribeSync(tc.subject); err != nil {
			t.Fatal(err)
		}
		tc.p.violation(t, tc.who+" reading "+tc.subject, tc.subject)
	}
	if err := web.nc.Publish("_INBOX.fn.mq.a.forged", []byte("x")); err != nil {
		t.Fatal(err)
	}
	web.violation(t, "web writing to a's inbox", "_INBOX.fn.mq.a.forged")

	// What a's pods need: pull, keep ("in progress"), ack, dead-letter its own calls.
	if got := pullOne(t, a, "mq", "a"); got != "web->a" {
		t.Fatalf("a pulled %q, want web->a", got)
	}
	poll.Until(t, 30*time.Second, func() bool { return f.pending(t, "mq", "a") == 0 }, "waiting for a's acked call to leave the work queue")
	if _, err := a.js.Publish(ctx, contract.DeadSubject("mq", "a"), []byte("dead")); err != nil {
		t.Fatalf("a dead-lettering its own call: %v", err)
	}
	a.quiet(t, "a's own consumer")
	// b's call was never taken by a.
	if n := f.pending(t, "mq", "b"); n != 1 {
		t.Fatalf("b's backlog = %d after a's attempts, want 1", n)
	}
	if got := pullOne(t, b, "mq", "b"); got != "a->b" {
		t.Fatalf("b pulled %q, want a->b", got)
	}
}

// Only a password derived for the user it is presented with connects: a wrong one, one
// identity's password under another's name (a stolen or forged identity), the key
// itself, a token, or nothing are refused, and so is a correctly derived password for a
// user that is no identity.
func TestCredentialsRefuseWrongAndForgedIdentities(t *testing.T) {
	f := newQueueFixture(t, nil)
	other := queue.NewCredentials("another key")
	aUser := queue.FunctionIdentity("mq", "a").User()
	aPass := f.creds.Password(aUser)
	// One hex digit changed (the key is random: replacing it with a fixed "0" left the
	// password right in 1 run of 16).
	wrong := "0" + aPass[1:]
	if aPass[0] == '0' {
		wrong = "1" + aPass[1:]
	}
	for what, opts := range map[string][]nats.Option{
		"no credential":                {nats.Name(aUser)},
		"a wrong password":             {nats.UserInfo(aUser, wrong)},
		"a's password as b":            {nats.UserInfo(queue.FunctionIdentity("mq", "b").User(), aPass)},
		"a's password as namespace mq": {nats.UserInfo(queue.NamespaceIdentity("mq").User(), aPass)},
		"a's password as the manager":  {nats.UserInfo(queue.AdminUser, aPass)},
		"a password from another key":  {nats.UserInfo(aUser, other.Password(aUser))},
		"an empty password":            {nats.UserInfo(aUser, "")},
		"a token":                      {nats.Token(aPass)},
		"a derived non-identity user":  {nats.UserInfo("root", f.creds.Password("root"))},
		"a wildcard user":              {nats.UserInfo("fn.mq.>", f.creds.Password("fn.mq.>"))},
	} {
		nc, err := nats.Connect(f.url, append(opts, nats.NoReconnect())...)
		if err == nil {
			nc.Close()
			t.Errorf("connected with %s", what)
			continue
		}
		if !errors.Is(err, nats.ErrAuthorization) {
			t.Errorf("%s: %v, want an authorization error", what, err)
		}
	}
	// The right one connects.
	connectAs(t, f.url, f.creds.Client(queue.FunctionIdentity("mq", "a")))
}

// weft.dev/async-callers narrows who may call a function: a caller it does not name is
// refused by the server; named namespaces and functions, and the function's own pods,
// may. A policy that cannot be read refuses the connection rather than allow everything.
func TestCallPolicyRestrictsCallers(t *testing.T) {
	restricted := map[queue.FunctionKey][]string{{Namespace: "mq", Name: "secret"}: {"ops", "mq/a"}}
	f := newQueueFixture(t, queue.CallPolicyFunc(func() (map[queue.FunctionKey][]string, error) { return restricted, nil }))
	ctx := context.Background()
	secret := contract.CallsSubject("mq", "secret")
	for _, id := range []queue.Identity{queue.NamespaceIdentity("ops"), queue.FunctionIdentity("ops", "x"),
		queue.FunctionIdentity("mq", "a"), queue.FunctionIdentity("mq", "secret")} {
		p := f.as(t, id)
		if _, err := p.js.Publish(ctx, secret, []byte(id.String())); err != nil {
			t.Errorf("%s calling mq/secret: %v", id, err)
		}
		p.quiet(t, id.String())
	}
	for _, id := range []queue.Identity{queue.NamespaceIdentity("mq"), queue.FunctionIdentity("mq", "b"), queue.NamespaceIdentity("web")} {
		p := f.as(t, id)
		c, cancel := context.WithTimeout(ctx, 2*time.Second)
		if _, err := p.js.Publish(c, secret, []byte("x")); err == nil {
			t.Errorf("%s called mq/secret", id)
		}
		cancel()
		p.violation(t, id.String()+" calling mq/secret", secret)
		if _, err := p.js.Publish(ctx, contract.CallsSubject("mq", "open"), []byte("x")); err != nil {
			t.Errorf("%s calling an unrestricted function: %v", id, err)
		}
	}
	if n := f.pending(t, "mq", "secret"); n != 4 {
		t.Errorf("mq/secret backlog = %d, want the 4 admitted calls", n)
	}

	broken := newQueueFixture(t, queue.CallPolicyFunc(func() (map[queue.FunctionKey][]string, error) {
		return nil, errors.New("cache not synced")
	}))
	u := queue.NamespaceIdentity("web").User()
	if nc, err := nats.Connect(broken.url, nats.UserInfo(u, broken.creds.Password(u)), nats.NoReconnect()); err == nil {
		nc.Close()
		t.Error("connected while the call policy could not be read")
	}
}

func TestGrants(t *testing.T) {
	restricted := map[queue.FunctionKey][]string{
		{Namespace: "mq", Name: "secret"}: {"ops", "mq/a"},
		{Namespace: "mq", Name: "closed"}: nil,
		{Namespace: "z", Name: "open"}:    {"mq"},
	}
	key := func(ns, n string) queue.FunctionKey { return queue.FunctionKey{Namespace: ns, Name: n} }
	for _, tc := range []struct {
		id          queue.Identity
		wantDeny    []queue.FunctionKey
		wantConsume *queue.FunctionKey
	}{
		{queue.NamespaceIdentity("mq"), []queue.FunctionKey{key("mq", "closed"), key("mq", "secret")}, nil},
		{queue.FunctionIdentity("mq", "a"), []queue.FunctionKey{key("mq", "closed")}, &queue.FunctionKey{Namespace: "mq", Name: "a"}},
		{queue.FunctionIdentity("mq", "closed"), []queue.FunctionKey{key("mq", "secret")}, &queue.FunctionKey{Namespace: "mq", Name: "closed"}},
		{queue.NamespaceIdentity("ops"), []queue.FunctionKey{key("mq", "closed"), key("z", "open")}, nil},
	} {
		g := queue.Grants(tc.id, restricted)
		if d := cmp.Diff(tc.wantDeny, g.CallAllBut); d != "" {
			t.Errorf("%s denied (-want +got):\n%s", tc.id, d)
		}
		if d := cmp.Diff(tc.wantConsume, g.Consume); d != "" {
			t.Errorf("%s consumes (-want +got):\n%s", tc.id, d)
		}
	}
	if g := queue.Grants(queue.NamespaceIdentity("web"), nil); len(g.CallAllBut) != 0 || g.Consume != nil {
		t.Errorf("default grant = %+v, want every function and no consumer", g)
	}
}

func TestParseUserRoundTrip(t *testing.T) {
	for _, id := range []queue.Identity{queue.FunctionIdentity("shop", "resize"), queue.NamespaceIdentity("shop"), queue.RevisionIdentity("shop", "resize", "resize-00002")} {
		back, ok := queue.ParseUser(id.User())
		if !ok || back != id {
			t.Errorf("ParseUser(%q) = %+v %v", id.User(), back, ok)
		}
	}
	for _, u := range []string{"", queue.AdminUser, "fn.shop", "ns.shop.x", "fn.shop.a.b", "rev.shop.a", "rev.shop.a.b.c", "rev.shop.a.*", "rev.shop..b", "fn.*.x", "ns.>", "xx.shop", "fn..x", "ns. "} {
		if id, ok := queue.ParseUser(u); ok {
			t.Errorf("ParseUser(%q) = %+v, want refused", u, id)
		}
	}
	a, b := queue.NewCredentials("k").Password("fn.a.b"), queue.NewCredentials("k").Password("fn.a.c")
	if a == b || len(a) != 64 || slices.Contains([]string{"", "k"}, a) {
		t.Errorf("passwords %q %q: want distinct 64-hex-digit HMACs", a, b)
	}
}

func TestParseAsyncCallers(t *testing.T) {
	got, err := queue.ParseAsyncCallers(" shop, batch/nightly ,,")
	if err != nil || !slices.Equal(got, []string{"shop", "batch/nightly"}) {
		t.Errorf("ParseAsyncCallers = %v, %v", got, err)
	}
	for _, bad := range []string{"Shop", "a/b/c", "a/", "*", "a.b", strings.Repeat("a,", queue.MaxAsyncCallers+1)} {
		if _, err := queue.ParseAsyncCallers(bad); err == nil {
			t.Errorf("ParseAsyncCallers(%q) accepted", bad)
		}
	}
}

// A changed weft.dev/async-callers reaches connections already open: the server closes
// those whose grant changed, they reconnect with the new one; others stay connected.
func TestCallPolicyChangeReconnectsAffectedClients(t *testing.T) {
	var mu sync.Mutex
	restricted := map[queue.FunctionKey][]string{}
	policy := queue.CallPolicyFunc(func() (map[queue.FunctionKey][]string, error) {
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(restricted), nil
	})
	key, _, _ := queue.EnsureToken(nil)
	s := startServerWith(t, queue.ServerOptions{StoreDir: t.TempDir(), Key: key, Policy: policy, PolicyRefresh: 50 * time.Millisecond})
	admin := connect(t, s.ClientURL(), key)
	ctx := context.Background()
	if err := queue.EnsureStreams(ctx, admin, queue.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	creds := queue.NewCredentials(key)
	web := connectAs(t, s.ClientURL(), creds.Client(queue.NamespaceIdentity("web")))
	ops := connectAs(t, s.ClientURL(), creds.Client(queue.NamespaceIdentity("ops")))
	secret := contract.CallsSubject("mq", "secret")
	if _, err := web.js.Publish(ctx, secret, []byte("before")); err != nil {
		t.Fatalf("web calling mq/secret before it was restricted: %v", err)
	}

	mu.Lock()
	restricted[queue.FunctionKey{Namespace: "mq", Name: "secret"}] = []string{"ops"}
	mu.Unlock()
	poll.Until(t, 30*time.Second, func() bool { return web.nc.Stats().Reconnects > 0 && web.nc.IsConnected() },
		"waiting for web to be reconnected with its narrowed grant")
	c, cancel := context.WithTimeout(ctx, time.Second)
	if _, err := web.js.Publish(c, secret, []byte("after")); err == nil {
		t.Error("web called mq/secret after the policy excluded it")
	}
	cancel()
	web.violation(t, "web calling mq/secret after the change", secret)
	if _, err := ops.js.Publish(ctx, secret, []byte("ops")); err != nil {
		t.Errorf("ops calling mq/secret: %v", err)
	}
	if n := ops.nc.Stats().Reconnects; n != 0 {
		t.Errorf("ops, whose grant did not change, was reconnected %d times", n)
	}
}
