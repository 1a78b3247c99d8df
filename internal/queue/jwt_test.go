package queue_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	testclock "k8s.io/utils/clock/testing"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/queue"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
)

// operatorCluster is a real NATS server in operator (decentralized JWT) mode, as an
// operator runs an external cluster: a trusted operator, a system account, and the Weft
// account with one signing key and JetStream, preloaded in a memory resolver. Nothing in
// the server's configuration names a Weft identity: it trusts whatever the account's
// signing key signs.
type operatorCluster struct {
	url        string
	account    nkeys.KeyPair // the Weft account's identity key
	accountPub string
	signing    nkeys.KeyPair // the signing key the manager is given
	admin      jetstream.JetStream
}

func mustKey(t *testing.T, create func() (nkeys.KeyPair, error)) (nkeys.KeyPair, string) {
	t.Helper()
	kp, err := create()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return kp, pub
}

func seedOf(t *testing.T, kp nkeys.KeyPair) []byte {
	t.Helper()
	s, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// startOperatorCluster runs the server until the test ends and makes Weft's streams and
// the consumers of functions mq/a and mq/b as an admin user the operator created (the
// manager's --nats-creds).
func startOperatorCluster(t *testing.T) *operatorCluster {
	t.Helper()
	return startOperatorClusterWith(t, 0)
}

// startOperatorClusterWith sets the servers' max_control_line (0: NATS's default, 4096).
func startOperatorClusterWith(t *testing.T, maxControlLine int32) *operatorCluster {
	t.Helper()
	op, opPub := mustKey(t, nkeys.CreateOperator)
	oc := jwt.NewOperatorClaims(opPub)
	oc.Name = "test-operator"
	opJWT, err := oc.Encode(op)
	if err != nil {
		t.Fatal(err)
	}
	opClaims, err := jwt.DecodeOperatorClaims(opJWT)
	if err != nil {
		t.Fatal(err)
	}
	_, sysPub := mustKey(t, nkeys.CreateAccount)
	sc := jwt.NewAccountClaims(sysPub)
	sc.Name = "SYS"
	sysJWT, err := sc.Encode(op)
	if err != nil {
		t.Fatal(err)
	}
	acc, accPub := mustKey(t, nkeys.CreateAccount)
	signing, signingPub := mustKey(t, nkeys.CreateAccount)
	ac := jwt.NewAccountClaims(accPub)
	ac.Name = "WEFT"
	ac.SigningKeys.Add(signingPub)
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	accJWT, err := ac.Encode(op)
	if err != nil {
		t.Fatal(err)
	}
	resolver := &server.MemAccResolver{}
	for pub, j := range map[string]string{sysPub: sysJWT, accPub: accJWT} {
		if err := resolver.Store(pub, j); err != nil {
			t.Fatal(err)
		}
	}
	s, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		TrustedOperators: []*jwt.OperatorClaims{opClaims}, AccountResolver: resolver, SystemAccount: sysPub,
		NoLog: true, NoSigs: true, MaxControlLine: maxControlLine,
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	if !s.ReadyForConnections(30 * time.Second) {
		t.Fatal("operator-mode NATS not ready in 30s")
	}
	c := &operatorCluster{url: s.ClientURL(), account: acc, accountPub: accPub, signing: signing}

	// The manager's own user, as an operator makes it with nsc: signed by the account's
	// identity key, no limits, in a creds file.
	admin, adminPub := mustKey(t, nkeys.CreateUser)
	uc := jwt.NewUserClaims(adminPub)
	uc.Name = "weft-manager"
	adminJWT, err := uc.Encode(acc)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := jwt.FormatUserConfig(adminJWT, seedOf(t, admin))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "manager.creds")
	if err := os.WriteFile(path, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, js, err := queue.Connect(ctx, queue.ClientOptions{URL: c.url, CredsFile: path, Name: "manager"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if err := queue.EnsureStreams(ctx, js, queue.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := queue.EnsureConsumers(ctx, js, []queue.FunctionKey{{Namespace: "mq", Name: "a"}, {Namespace: "mq", Name: "b"}}); err != nil {
		t.Fatal(err)
	}
	c.admin = js
	return c
}

// issuer is the manager's Issuer for c's account with its signing key.
func (c *operatorCluster) issuer(t *testing.T, o queue.IssuerOptions) *queue.Issuer {
	t.Helper()
	o.Account, o.SigningSeed = c.accountPub, seedOf(t, c.signing)
	i, err := queue.NewIssuer(o)
	if err != nil {
		t.Fatal(err)
	}
	return i
}

// dialJWT connects as a sidecar does with m (async.Dial's options without its retries):
// the JWT and seed, the inbox prefix.
func dialJWT(t *testing.T, url string, m contract.QueueMeta) (*peer, error) {
	t.Helper()
	p := &peer{errs: make(chan error, 64)}
	opts := []nats.Option{nats.Name(t.Name()), nats.UserJWTAndSeed(m.JWT, m.Seed), nats.NoReconnect(),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case p.errs <- err:
			default:
			}
		})}
	if m.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(m.InboxPrefix))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, err
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	p.nc, p.js = nc, js
	return p, nil
}

func mustDialJWT(t *testing.T, url string, m contract.QueueMeta) *peer {
	t.Helper()
	p, err := dialJWT(t, url, m)
	if err != nil {
		t.Fatalf("connecting as %s with its minted JWT: %v", m.User, err)
	}
	return p
}

// restrictC is a policy: function mq/c admits only mq/a's pods.
func restrictC() (map[queue.FunctionKey][]string, error) {
	return map[queue.FunctionKey][]string{{Namespace: "mq", Name: "c"}: {"mq/a"}}, nil
}

// On an external cluster in JWT mode each identity's minted credential carries exactly the
// embedded server's permissions: a function's pods pull and ack their own calls and call
// other functions; a namespace's callers cannot pull any function's calls; a caller a
// function's weft.dev/async-callers leaves out cannot publish to it, one it names can.
func TestJWTIdentitiesOnExternalCluster(t *testing.T) {
	c := startOperatorCluster(t)
	iss := c.issuer(t, queue.IssuerOptions{Policy: queue.CallPolicyFunc(restrictC)})
	ctx := context.Background()
	a := mustDialJWT(t, c.url, iss.ForView("mq", "a"))
	web := mustDialJWT(t, c.url, iss.ForView("web", ""))

	if _, err := web.js.Publish(ctx, contract.CallsSubject("mq", "a"), []byte("web->a")); err != nil {
		t.Fatalf("namespace web calling mq/a: %v", err)
	}
	if _, err := a.js.Publish(ctx, contract.CallsSubject("mq", "b"), []byte("a->b")); err != nil {
		t.Fatalf("mq/a calling mq/b: %v", err)
	}
	if _, err := a.js.Publish(ctx, contract.CallsSubject("mq", "c"), []byte("a->c")); err != nil {
		t.Fatalf("mq/a calling mq/c, which admits it: %v", err)
	}
	a.quiet(t, "mq/a calling")
	web.quiet(t, "web calling mq/a")

	// web may not call mq/c: the publish is refused, nothing is queued.
	short, cancel := context.WithTimeout(ctx, time.Second)
	if _, err := web.js.Publish(short, contract.CallsSubject("mq", "c"), []byte("web->c")); err == nil {
		t.Fatal("web queued a call to mq/c, which admits only mq/a")
	}
	cancel()
	web.violation(t, "web calling mq/c", contract.CallsSubject("mq", "c"))

	// The caller cannot pull mq/a's calls, nor subscribe to them.
	aConsumer := contract.CallsStream + "." + contract.ConsumerName("mq", "a")
	if err := web.nc.PublishRequest("$JS.API.CONSUMER.MSG.NEXT."+aConsumer, web.nc.NewInbox(), []byte(`{"batch":1}`)); err != nil {
		t.Fatal(err)
	}
	web.violation(t, "web pulling mq/a's calls", "$JS.API.CONSUMER.MSG.NEXT."+aConsumer)
	if _, err := web.nc.SubscribeSync(contract.CallsSubject("mq", "a")); err != nil {
		t.Fatal(err)
	}
	web.violation(t, "web subscribing to mq/a's calls", contract.CallsSubject("mq", "a"))
	// mq/a cannot pull mq/b's calls or delete the stream.
	bConsumer := contract.CallsStream + "." + contract.ConsumerName("mq", "b")
	if err := a.nc.PublishRequest("$JS.API.CONSUMER.MSG.NEXT."+bConsumer, a.nc.NewInbox(), []byte(`{"batch":1}`)); err != nil {
		t.Fatal(err)
	}
	a.violation(t, "mq/a pulling mq/b's calls", "$JS.API.CONSUMER.MSG.NEXT."+bConsumer)
	short, cancel = context.WithTimeout(ctx, time.Second)
	if err := a.js.DeleteStream(short, contract.CallsStream); err == nil {
		t.Fatal("mq/a deleted WEFT_CALLS")
	}
	cancel()
	a.violation(t, "mq/a deleting WEFT_CALLS", "$JS.API.STREAM.DELETE."+contract.CallsStream)

	// mq/a pulls and acks its own call; mq/b's and mq/c's stay queued.
	if got := pullOne(t, a, "mq", "a"); got != "web->a" {
		t.Fatalf("mq/a pulled %q, want web->a", got)
	}
	for fn, want := range map[string]int{"a": 0, "b": 1} {
		if n, err := queue.PendingCount(ctx, c.admin, "mq", fn); err != nil || n != want {
			t.Errorf("backlog of mq/%s = %d, %v; want %d", fn, n, err, want)
		}
	}
}

// The minted JWT's permissions are the embedded server's for the same identity and grant,
// list for list (queue.JWTPermissions is the one conversion), and the JWT is no bearer
// token, expires after the lifetime, and is signed by the signing key for the account.
func TestJWTCarriesTheEmbeddedPermissions(t *testing.T) {
	c := startOperatorCluster(t)
	clk := testclock.NewFakeClock(time.Now())
	iss := c.issuer(t, queue.IssuerOptions{Policy: queue.CallPolicyFunc(restrictC), Lifetime: time.Hour, Clock: clk})
	restricted, _ := restrictC()
	signingPub, _ := c.signing.PublicKey()
	for _, id := range []queue.Identity{queue.NamespaceIdentity("web"), queue.FunctionIdentity("mq", "a"), queue.RevisionIdentity("mq", "a", "v2")} {
		m := iss.For(id)
		uc, err := jwt.DecodeUserClaims(m.JWT)
		if err != nil {
			t.Fatalf("%s: %v", id.User(), err)
		}
		want := queue.Permissions(id, queue.Grants(id, restricted))
		if d := cmp.Diff([]string(want.Publish.Allow), []string(uc.Pub.Allow)); d != "" {
			t.Errorf("%s: publish allow (-embedded +jwt):\n%s", id.User(), d)
		}
		if d := cmp.Diff([]string(want.Publish.Deny), []string(uc.Pub.Deny)); d != "" {
			t.Errorf("%s: publish deny (-embedded +jwt):\n%s", id.User(), d)
		}
		if d := cmp.Diff([]string(want.Subscribe.Allow), []string(uc.Sub.Allow)); d != "" {
			t.Errorf("%s: subscribe allow (-embedded +jwt):\n%s", id.User(), d)
		}
		if len(uc.Sub.Deny) != 0 {
			t.Errorf("%s: subscribe deny %v, want none", id.User(), uc.Sub.Deny)
		}
		if uc.BearerToken || uc.Issuer != signingPub || uc.IssuerAccount != c.accountPub || uc.Name != id.User() {
			t.Errorf("%s: bearer %v issuer %s issuer account %s name %s", id.User(), uc.BearerToken, uc.Issuer, uc.IssuerAccount, uc.Name)
		}
		if want := clk.Now().Add(time.Hour).Unix(); uc.Expires != want {
			t.Errorf("%s: expires %d, want %d", id.User(), uc.Expires, want)
		}
		kp, err := nkeys.FromSeed([]byte(m.Seed))
		if err != nil {
			t.Fatal(err)
		}
		if pub, _ := kp.PublicKey(); pub != uc.Subject {
			t.Errorf("%s: the seed's key %s is not the JWT's subject %s", id.User(), pub, uc.Subject)
		}
		if web := (id == queue.NamespaceIdentity("web")); web != slices.Contains(uc.Pub.Deny, contract.CallsSubject("mq", "c")) {
			t.Errorf("%s: deny list %v (web must be denied mq/c, the others not)", id.User(), uc.Pub.Deny)
		}
	}
}

// editJWT returns token with its claims changed by edit, signed by signer (nil: the
// original signature kept, as an attacker without any key would).
func editJWT(t *testing.T, token string, signer nkeys.KeyPair, edit func(*jwt.UserClaims)) string {
	t.Helper()
	uc, err := jwt.DecodeUserClaims(token)
	if err != nil {
		t.Fatal(err)
	}
	edit(uc)
	if signer != nil {
		out, err := uc.Encode(signer)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	parts := strings.Split(token, ".")
	body, err := json.Marshal(uc)
	if err != nil {
		t.Fatal(err)
	}
	parts[1] = base64.RawURLEncoding.EncodeToString(body)
	return strings.Join(parts, ".")
}

// What the server refuses: a minted JWT with its permissions widened, whether re-signed by
// another account key (also one claiming the Weft account as issuer) or left with the
// original signature; an expired JWT; a JWT with another user's seed; a JWT without any
// seed; a token. The unedited credential connects, so each refusal is the edit's.
func TestJWTForgedExpiredOrUnprovenRefused(t *testing.T) {
	c := startOperatorCluster(t)
	iss := c.issuer(t, queue.IssuerOptions{})
	m := iss.ForView("web", "")
	mustDialJWT(t, c.url, m).nc.Close()

	rogueKP, _ := mustKey(t, nkeys.CreateAccount)
	widen := func(uc *jwt.UserClaims) {
		uc.Pub.Allow, uc.Pub.Deny = jwt.StringList{">"}, nil
		uc.Sub.Allow = jwt.StringList{">"}
	}
	expiredIss := c.issuer(t, queue.IssuerOptions{Lifetime: time.Hour, Clock: testclock.NewFakeClock(time.Now().Add(-2 * time.Hour))})
	expired := expiredIss.ForView("web", "")
	other := iss.ForView("mq", "a")

	for _, tc := range []struct {
		what string
		m    contract.QueueMeta
	}{
		{"widened, re-signed by another account key", contract.QueueMeta{JWT: editJWT(t, m.JWT, rogueKP, widen), Seed: m.Seed}},
		{"widened, re-signed by another key for the Weft account", contract.QueueMeta{JWT: editJWT(t, m.JWT, rogueKP, func(uc *jwt.UserClaims) {
			widen(uc)
			uc.IssuerAccount = c.accountPub
		}), Seed: m.Seed}},
		{"widened, original signature", contract.QueueMeta{JWT: editJWT(t, m.JWT, nil, widen), Seed: m.Seed}},
		{"lifetime extended, original signature", contract.QueueMeta{JWT: editJWT(t, expired.JWT, nil, func(uc *jwt.UserClaims) {
			uc.Expires = time.Now().Add(time.Hour).Unix()
		}), Seed: expired.Seed}},
		{"expired", expired},
		{"another identity's seed", contract.QueueMeta{JWT: m.JWT, Seed: other.Seed}},
	} {
		if p, err := dialJWT(t, c.url, tc.m); err == nil {
			p.nc.Close()
			t.Errorf("%s: the server accepted it", tc.what)
		} else if !errors.Is(err, nats.ErrAuthorization) && !strings.Contains(strings.ToLower(err.Error()), "authorization") {
			t.Errorf("%s: %v, want an authorization error", tc.what, err)
		}
	}

	// The JWT alone, its nonce signed by nobody (an empty signature) or by a key of its own.
	for what, sign := range map[string]nats.SignatureHandler{
		"no signature":          func([]byte) ([]byte, error) { return nil, nil },
		"signed by a fresh key": func(n []byte) ([]byte, error) { kp, _ := nkeys.CreateUser(); return kp.Sign(n) },
	} {
		nc, err := nats.Connect(c.url, nats.UserJWT(func() (string, error) { return m.JWT, nil }, sign), nats.NoReconnect())
		if err == nil {
			nc.Close()
			t.Errorf("the JWT with %s: accepted", what)
		}
	}
	// A token, as the legacy shared-token path sends.
	if nc, err := nats.Connect(c.url, nats.Token("s3cret"), nats.NoReconnect()); err == nil {
		nc.Close()
		t.Error("a token was accepted")
	}
}

// A policy change replaces the credential of each identity whose grant it changes (and only
// those), with a new NKEY: the new one is refused what the policy now forbids. The old JWT
// stays valid until it expires (NATS cannot take back a signed JWT without the operator's
// key): the lifetime bounds that.
func TestJWTPolicyChangeReissues(t *testing.T) {
	c := startOperatorCluster(t)
	var mu sync.Mutex
	restricted := map[queue.FunctionKey][]string{}
	policy := queue.CallPolicyFunc(func() (map[queue.FunctionKey][]string, error) {
		mu.Lock()
		defer mu.Unlock()
		out := map[queue.FunctionKey][]string{}
		for k, v := range restricted {
			out[k] = v
		}
		return out, nil
	})
	iss := c.issuer(t, queue.IssuerOptions{Policy: policy})
	webOld, aOld := iss.ForView("web", ""), iss.ForView("mq", "a")
	if again := iss.ForView("web", ""); again != webOld {
		t.Fatal("a second view of the same identity got a new credential")
	}
	if iss.Refresh() {
		t.Fatal("Refresh reported a change with the same policy")
	}
	mu.Lock()
	restricted[queue.FunctionKey{Namespace: "mq", Name: "b"}] = []string{"mq/a"}
	mu.Unlock()
	if !iss.Refresh() {
		t.Fatal("Refresh did not report the policy change")
	}
	webNew, aNew := iss.ForView("web", ""), iss.ForView("mq", "a")
	if webNew.JWT == webOld.JWT || webNew.Seed == webOld.Seed {
		t.Fatal("web's grant changed but its credential did not")
	}
	if aNew != aOld {
		t.Error("mq/a's grant did not change but its credential did")
	}

	ctx := context.Background()
	web := mustDialJWT(t, c.url, webNew)
	short, cancel := context.WithTimeout(ctx, time.Second)
	if _, err := web.js.Publish(short, contract.CallsSubject("mq", "b"), []byte("x")); err == nil {
		t.Fatal("web's new credential queued a call to mq/b, which now admits only mq/a")
	}
	cancel()
	web.violation(t, "web calling mq/b", contract.CallsSubject("mq", "b"))
	if _, err := mustDialJWT(t, c.url, aNew).js.Publish(ctx, contract.CallsSubject("mq", "b"), []byte("a->b")); err != nil {
		t.Fatalf("mq/a calling mq/b: %v", err)
	}
	// The documented limit: the old JWT still works until it expires.
	old := mustDialJWT(t, c.url, webOld)
	if _, err := old.js.Publish(ctx, contract.CallsSubject("mq", "b"), []byte("old")); err != nil {
		t.Fatalf("web's old credential: %v (if NATS now revokes, update docs/nats-identities.md)", err)
	}
}

// Renewal and the cache's bound: a credential is reused until half its lifetime has
// passed; then Refresh drops it (and every credential no view asked for since), and the
// next view gets a new one. An identity no view asks for any more leaves the cache.
func TestJWTRenewedAtHalfLifeAndCacheBounded(t *testing.T) {
	c := startOperatorCluster(t)
	clk := testclock.NewFakeClock(time.Now())
	iss := c.issuer(t, queue.IssuerOptions{Lifetime: time.Hour, Clock: clk})
	first := iss.ForView("mq", "a")
	iss.ForView("gone", "")
	clk.Step(29 * time.Minute)
	if iss.Refresh() || iss.ForView("mq", "a") != first || iss.Cached() != 2 {
		t.Fatalf("before half life: the credential changed or the cache holds %d", iss.Cached())
	}
	clk.Step(time.Minute)
	if !iss.Refresh() {
		t.Fatal("Refresh at half life reported nothing to renew")
	}
	if n := iss.Cached(); n != 0 {
		t.Fatalf("after Refresh at half life the cache holds %d credentials, want 0", n)
	}
	second := iss.ForView("mq", "a")
	if second.JWT == first.JWT || second.Seed == first.Seed {
		t.Fatal("the renewed credential is the old one")
	}
	if n := iss.Cached(); n != 1 {
		t.Fatalf("cache holds %d credentials, want 1: the identity no view asked for stays gone", n)
	}
	mustDialJWT(t, c.url, second).nc.Close()
}

// Until the policy has been read once no credential is minted: a caller must not get a
// JWT that ignores a function's weft.dev/async-callers. The first successful Refresh
// reports a change, so the views get their credentials.
func TestJWTNotMintedWithoutPolicy(t *testing.T) {
	c := startOperatorCluster(t)
	var fail atomic.Bool
	fail.Store(true)
	iss := c.issuer(t, queue.IssuerOptions{Policy: queue.CallPolicyFunc(func() (map[queue.FunctionKey][]string, error) {
		if fail.Load() {
			return nil, errors.New("cache not started")
		}
		return restrictC()
	})})
	if m := iss.ForView("web", ""); m.JWT != "" || m.Seed != "" {
		t.Fatal("a credential was minted while the policy could not be read")
	}
	if iss.Refresh() {
		t.Fatal("Refresh reported a change while the policy could not be read")
	}
	fail.Store(false)
	if !iss.Refresh() {
		t.Fatal("the first successful Refresh reported no change")
	}
	uc, err := jwt.DecodeUserClaims(iss.ForView("web", "").JWT)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(uc.Pub.Deny, contract.CallsSubject("mq", "c")) {
		t.Fatalf("web's JWT does not deny mq/c: %v", uc.Pub.Deny)
	}
}

// NewIssuer refuses keys that cannot sign for the account, and never repeats the seed.
func TestNewIssuerRefusesBadKeys(t *testing.T) {
	_, accPub := mustKey(t, nkeys.CreateAccount)
	user, userPub := mustKey(t, nkeys.CreateUser)
	acc, _ := mustKey(t, nkeys.CreateAccount)
	for what, o := range map[string]queue.IssuerOptions{
		"user seed":          {Account: accPub, SigningSeed: seedOf(t, user)},
		"garbage seed":       {Account: accPub, SigningSeed: []byte("SAnot-a-seed-at-all")},
		"user as account":    {Account: userPub, SigningSeed: seedOf(t, acc)},
		"lifetime too short": {Account: accPub, SigningSeed: seedOf(t, acc), Lifetime: time.Minute},
	} {
		_, err := queue.NewIssuer(o)
		if err == nil {
			t.Errorf("%s: accepted", what)
			continue
		}
		if strings.Contains(err.Error(), string(o.SigningSeed)) {
			t.Errorf("%s: the error repeats the seed", what)
		}
	}
}

// The manager without --nats-creds signs its own admin user: it makes streams and reads
// backlogs, and when its JWT expires (the server disconnects it) it reconnects with a new
// one. The clock starts so that the first JWT expires 3 s after it is signed.
func TestJWTAdminSignsItself(t *testing.T) {
	c := startOperatorCluster(t)
	clk := testclock.NewFakeClock(time.Now().Add(-2*time.Minute + 3*time.Second))
	iss := c.issuer(t, queue.IssuerOptions{Lifetime: 2 * time.Minute, Clock: clk})
	o := iss.Admin()
	o.URL, o.Name = c.url, "manager"
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	nc, js, err := queue.Connect(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := queue.EnsureStreams(ctx, js, queue.StreamOptions{}); err != nil {
		t.Fatalf("the self-signed manager making the streams: %v", err)
	}
	clk.SetTime(time.Now()) // the next JWT is valid for 2 minutes
	poll.Until(t, 30*time.Second, func() bool { return nc.Stats().Reconnects >= 1 && nc.IsConnected() },
		"waiting for the manager to reconnect after its first JWT expired")
	if _, err := queue.PendingCount(ctx, js, "mq", "a"); err != nil {
		t.Fatalf("the manager reading a backlog after reconnecting: %v", err)
	}
}
