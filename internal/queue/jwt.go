package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
	"k8s.io/utils/clock"

	"github.com/weftmesh/weft/contract"
)

// Identities on an external NATS cluster in decentralized JWT mode (docs/nats-identities.md,
// "An external NATS cluster"). The operator of that cluster gives the manager one of its
// account's signing keys; the manager then signs, for each identity, a user JWT carrying
// exactly the subject permissions the embedded server's authenticator would register for it
// (Permissions of Grants), for a fresh user NKEY whose seed only that identity's sidecars
// receive. The NATS server checks the JWT's signature chain (user -> account signing key ->
// account -> operator), its expiry, and the client's signature of its nonce with the seed.

// DefaultJWTLifetime is how long a minted user JWT is valid. It bounds how long a
// credential outlives a policy change that narrows its grant (the server cannot take back a
// valid JWT without the operator's key; see Issuer).
const DefaultJWTLifetime = 24 * time.Hour

// IssuerOptions configure an Issuer.
type IssuerOptions struct {
	// Account is the public key (A...) of the NATS account the sidecars' users belong to.
	Account string
	// SigningSeed is the seed (SA...) of one of that account's signing keys, or of the
	// account itself. A signing key must not be scoped: a scoped key's users get the
	// scope's permissions, not the ones minted here.
	SigningSeed []byte
	// Lifetime of each user JWT (default DefaultJWTLifetime, at least 2 minutes). A
	// credential is replaced once half of it has passed.
	Lifetime time.Duration
	// Policy restricts which identities may call which functions (nil: every identity may
	// call every function). Refresh re-reads it.
	Policy CallPolicy
	Clock  clock.Clock // default clock.RealClock
}

// Issuer mints and caches the user JWTs of an external cluster's identities. The sidecars
// of one identity share its credential (as they share a password on the embedded server);
// it is minted when a view first needs it and replaced, with a new NKEY, when half its
// lifetime has passed or the policy changes its grant. The cache holds one entry per
// identity that a sidecar view asked for within the last half lifetime: Refresh drops the
// others, so it is bounded by the number of identities (namespaces, functions and revisions
// with sidecars), and each entry is a few kilobytes.
type Issuer struct {
	account  string
	signer   nkeys.KeyPair
	lifetime time.Duration
	policy   CallPolicy
	clock    clock.Clock

	// largest is the longest JWT minted so far, in bytes (see LargeJWT).
	largest atomic.Int64

	mu sync.Mutex
	// restricted is the policy's last answer; ok false until it was read once.
	restricted map[FunctionKey][]string
	ok         bool
	cache      map[Identity]*issued
}

type issued struct {
	grant   string // grantKey of the grant it carries
	meta    contract.QueueMeta
	renewAt time.Time
}

// NewIssuer checks the keys: the seed must be an account key's.
func NewIssuer(o IssuerOptions) (*Issuer, error) {
	if !nkeys.IsValidPublicAccountKey(o.Account) {
		return nil, errors.New("the NATS account must be an account public key (A...)")
	}
	kp, err := nkeys.FromSeed(o.SigningSeed)
	if err != nil {
		return nil, fmt.Errorf("the NATS account signing seed does not parse: %w", errors.New(scrub(err.Error(), o.SigningSeed)))
	}
	pub, err := kp.PublicKey()
	if err != nil || !nkeys.IsValidPublicAccountKey(pub) {
		return nil, errors.New("the NATS account signing seed is not an account key's (want SA...)")
	}
	if o.Lifetime == 0 {
		o.Lifetime = DefaultJWTLifetime
	}
	if o.Lifetime < 2*time.Minute {
		return nil, fmt.Errorf("NATS user JWT lifetime %s is under 2m: sidecars would reconnect all the time", o.Lifetime)
	}
	if o.Clock == nil {
		o.Clock = clock.RealClock{}
	}
	return &Issuer{account: o.Account, signer: kp, lifetime: o.Lifetime, policy: o.Policy, clock: o.Clock, cache: map[Identity]*issued{}}, nil
}

// scrub keeps a seed out of an error message (nkeys' errors do not quote it today).
func scrub(msg string, seed []byte) string {
	if s := strings.TrimSpace(string(seed)); s != "" {
		msg = strings.ReplaceAll(msg, s, "[redacted]")
	}
	return msg
}

// SigningKey is the public key the JWTs are signed with (for logs and docs; not secret).
func (i *Issuer) SigningKey() string {
	pub, _ := i.signer.PublicKey()
	return pub
}

// ForView is the credential of the sidecars of namespace serving function (or, for "",
// the namespace's other sidecars): snapshot.QueueCredentialFunc for an external cluster.
func (i *Issuer) ForView(namespace, function string) contract.QueueMeta {
	if function != "" {
		return i.For(FunctionIdentity(namespace, function))
	}
	return i.For(NamespaceIdentity(namespace))
}

// ForRevision is the credential of the pods of revision rev of function namespace/name, or
// ForView's when rev is "": snapshot.Queue's RevisionCredential.
func (i *Issuer) ForRevision(namespace, function, rev string) contract.QueueMeta {
	if function != "" && rev != "" {
		return i.For(RevisionIdentity(namespace, function, rev))
	}
	return i.ForView(namespace, function)
}

// For returns id's credential: the cached one while it carries id's current grant and is
// younger than half its lifetime, else a new one. Until the policy has been read once it
// returns none (the sidecar is told where NATS is, cannot connect, and gets a credential
// with the resync that follows a successful read): minting without the policy could
// grant a caller a function that excludes it.
func (i *Issuer) For(id Identity) contract.QueueMeta {
	none := contract.QueueMeta{User: id.User(), InboxPrefix: id.InboxPrefix()}
	restricted, ok := i.currentPolicy()
	if !ok {
		return none
	}
	g := Grants(id, restricted)
	key := grantKey(g)
	now := i.clock.Now()
	i.mu.Lock()
	defer i.mu.Unlock()
	if c := i.cache[id]; c != nil && c.grant == key && now.Before(c.renewAt) {
		return c.meta
	}
	m, err := i.mint(id, Permissions(id, g), now)
	if err != nil {
		// Only a broken signing key fails (NewIssuer checked it): the sidecar keeps the
		// credential it has until it expires.
		return none
	}
	i.cache[id] = &issued{grant: key, meta: m, renewAt: now.Add(i.lifetime / 2)}
	if n := int64(len(m.JWT)); n > i.largest.Load() {
		i.largest.Store(n) // under i.mu: no lost update
	}
	return m
}

// LargeJWT is the JWT length, in bytes, above which the manager warns: the client sends the
// JWT in its CONNECT line, which a NATS server refuses above max_control_line (4096 bytes
// by default) with "maximum control line exceeded". A JWT is about 1.2 KB plus about 30
// bytes per function whose weft.dev/async-callers excludes the identity, so an identity
// excluded by some 70 functions needs a larger max_control_line on the servers.
const LargeJWT = 3 << 10

// LargestJWT is the length of the longest JWT minted so far.
func (i *Issuer) LargestJWT() int { return int(i.largest.Load()) }

// currentPolicy returns the last policy read, reading it the first time.
func (i *Issuer) currentPolicy() (map[FunctionKey][]string, bool) {
	i.mu.Lock()
	r, ok := i.restricted, i.ok
	i.mu.Unlock()
	if ok {
		return r, true
	}
	if i.policy == nil {
		i.mu.Lock()
		i.ok = true
		i.mu.Unlock()
		return nil, true
	}
	r, err := i.policy.Restricted()
	if err != nil {
		return nil, false
	}
	i.mu.Lock()
	if !i.ok { // another caller may have read a newer answer meanwhile (Refresh)
		i.restricted, i.ok = r, true
	}
	r = i.restricted
	i.mu.Unlock()
	return r, true
}

// Refresh re-reads the policy and forgets the credentials that must be replaced: those
// whose identity's grant the policy changed and those past half their lifetime (which also
// drops the identities no view has asked for since). It reports whether anything changed,
// so the caller rebuilds the sidecars' snapshots, which mints the replacements for the
// identities still in use. A policy that cannot be read changes nothing.
func (i *Issuer) Refresh() (changed bool) {
	var restricted map[FunctionKey][]string
	if i.policy != nil {
		var err error
		if restricted, err = i.policy.Restricted(); err != nil {
			return false
		}
	}
	now := i.clock.Now()
	i.mu.Lock()
	defer i.mu.Unlock()
	if !i.ok {
		changed = true // views were sent no credential while the policy was unknown
	}
	i.restricted, i.ok = restricted, true
	for id, c := range i.cache {
		if !now.Before(c.renewAt) || grantKey(Grants(id, restricted)) != c.grant {
			delete(i.cache, id)
			changed = true
		}
	}
	return changed
}

// Cached is the number of credentials held (for tests and bounds).
func (i *Issuer) Cached() int {
	i.mu.Lock()
	defer i.mu.Unlock()
	return len(i.cache)
}

// mint signs a user JWT for id with perms, for a new user NKEY, valid for the lifetime.
func (i *Issuer) mint(id Identity, perms *server.Permissions, now time.Time) (contract.QueueMeta, error) {
	token, user, err := i.sign(id.User(), perms, now)
	if err != nil {
		return contract.QueueMeta{}, err
	}
	seed, err := user.Seed()
	if err != nil {
		return contract.QueueMeta{}, err
	}
	return contract.QueueMeta{User: id.User(), InboxPrefix: id.InboxPrefix(), JWT: token, Seed: string(seed)}, nil
}

// sign makes a new user NKEY and a JWT for it named name, with perms (nil: none beyond the
// account's), expiring after the lifetime.
func (i *Issuer) sign(name string, perms *server.Permissions, now time.Time) (string, nkeys.KeyPair, error) {
	user, err := nkeys.CreateUser()
	if err != nil {
		return "", nil, err
	}
	pub, err := user.PublicKey()
	if err != nil {
		return "", nil, err
	}
	uc := jwt.NewUserClaims(pub)
	uc.Name = name
	if signer, _ := i.signer.PublicKey(); signer != i.account {
		uc.IssuerAccount = i.account // signed by one of the account's signing keys
	}
	uc.Expires = now.Add(i.lifetime).Unix()
	uc.BearerToken = false // the client must sign the server's nonce with the seed
	uc.Permissions = JWTPermissions(perms)
	token, err := uc.Encode(i.signer)
	if err != nil {
		return "", nil, fmt.Errorf("signing the NATS user JWT of %s: %w", name, err)
	}
	return token, user, nil
}

// Admin returns the manager's client options (URL left to fill) when no --nats-creds is
// given: at every connect it signs itself a user named AdminUser, without subject limits
// (it creates the streams and consumers, reads backlogs, redrives dead letters), for a new
// NKEY, valid for the lifetime. The server disconnects it when that JWT expires; it
// reconnects at once with a new one. No sidecar receives it.
func (i *Issuer) Admin() ClientOptions {
	return ClientOptions{UserJWT: func() (string, nkeys.KeyPair, error) {
		return i.sign(AdminUser, nil, i.clock.Now())
	}}
}

// JWTPermissions is p, as the embedded server registers it, in a user JWT: the one
// conversion, so both servers enforce the same lists.
func JWTPermissions(p *server.Permissions) jwt.Permissions {
	var out jwt.Permissions
	if p == nil {
		return out
	}
	conv := func(sp *server.SubjectPermission) jwt.Permission {
		if sp == nil {
			return jwt.Permission{}
		}
		return jwt.Permission{Allow: append(jwt.StringList(nil), sp.Allow...), Deny: append(jwt.StringList(nil), sp.Deny...)}
	}
	out.Pub, out.Sub = conv(p.Publish), conv(p.Subscribe)
	if r := p.Response; r != nil {
		out.Resp = &jwt.ResponsePermission{MaxMsgs: r.MaxMsgs, Expires: r.Expires}
	}
	return out
}

// IssuerRefresh runs Issuer.Refresh every Interval (default 5 s, as the embedded server
// re-checks the policy) and calls Resync when credentials must be replaced.
type IssuerRefresh struct {
	Issuer   *Issuer
	Interval time.Duration
	// Resync rebuilds every connected sidecar's snapshot (which mints the new credentials).
	Resync func()
	Clock  clock.WithTicker // default clock.RealClock
	Logger logr.Logger
}

// Start blocks until ctx is done.
func (r *IssuerRefresh) Start(ctx context.Context) error {
	clk := r.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	every := r.Interval
	if every <= 0 {
		every = 5 * time.Second
	}
	t := clk.NewTicker(every)
	defer t.Stop()
	warned := LargeJWT
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
			if r.Issuer.Refresh() {
				r.Logger.V(1).Info("replacing NATS user JWTs (policy change or renewal)")
				if r.Resync != nil {
					r.Resync()
				}
			}
			// Warn once per new maximum over LargeJWT.
			if n := r.Issuer.LargestJWT(); n > warned {
				warned = n
				r.Logger.Info("a minted NATS user JWT is large: its sidecars are refused (\"maximum control line exceeded\") unless the NATS servers' max_control_line exceeds it by 1 KiB; raise max_control_line (e.g. 64KB) or list fewer functions' weft.dev/async-callers",
					"bytes", n, "natsDefaultMaxControlLine", 4096)
			}
		}
	}
}

// NeedLeaderElection is false: every replica serves xDS, so every replica mints the
// credentials of the sidecars connected to it.
func (r *IssuerRefresh) NeedLeaderElection() bool { return false }
