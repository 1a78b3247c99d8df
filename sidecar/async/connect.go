package async

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/weftmesh/weft/contract"
)

// Dial connects a sidecar to the NATS the control plane names in q, with the credential it
// sent: this sidecar identity's user and password (and its inbox prefix, the only subjects
// the identity may subscribe to), its user JWT and NKEY seed (an external cluster in JWT
// mode), or an external cluster's token. It returns at once even if
// NATS is down and keeps reconnecting forever: meanwhile publishes answer 503 and the
// consumer waits, so a NATS restart never takes a pod's synchronous traffic down with it.
// refused (may be nil) learns the subjects NATS refuses this identity to publish to; give
// the same to the Publisher.
func Dial(q contract.QueueMeta, name string, refused *Refusals) (*nats.Conn, jetstream.JetStream, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		// A manager restarting with a new key refuses the old password until this sidecar
		// gets the new one over xDS (and dials again); keep trying meanwhile instead of
		// giving up after two refusals.
		nats.IgnoreAuthErrorAbort(),
		nats.ErrorHandler(asyncErrors(name, refused)),
		nats.ReconnectHandler(func(*nats.Conn) { refused.reset() }),
	}
	var creds *jwtCreds
	switch {
	case q.JWT != "":
		// An external cluster in decentralized JWT mode: the user JWT the manager minted
		// for this identity, and its seed to sign the server's nonce with (the JWT is no
		// bearer token). q.User only names the identity. Read at every (re)connect, so
		// Renew can swap in the manager's next one.
		creds = &jwtCreds{jwt: q.JWT, seed: q.Seed}
		opts = append(opts, nats.UserJWT(creds.user, creds.sign),
			nats.ClosedHandler(func(nc *nats.Conn) { renewable.Delete(nc) }))
	case q.User != "":
		opts = append(opts, nats.UserInfo(q.User, q.Password))
	}
	if q.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(q.InboxPrefix))
	}
	if q.Token != "" {
		opts = append(opts, nats.Token(q.Token))
	}
	nc, err := nats.Connect(q.URL, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connecting to NATS at %s: %w", q.URL, err)
	}
	if creds != nil {
		renewable.Store(nc, creds)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("JetStream client for %s: %w", q.URL, err)
	}
	return nc, js, nil
}

// asyncErrors logs the server's asynchronous errors (a permissions violation: this
// identity may not call a function, or the control plane and NATS disagree), each distinct
// one once in a row, instead of nats.go's default print to stderr on every occurrence.
func asyncErrors(name string, refused *Refusals) nats.ErrHandler {
	var mu sync.Mutex
	var last string
	return func(_ *nats.Conn, _ *nats.Subscription, err error) {
		refused.note(err, time.Now())
		mu.Lock()
		repeat := err.Error() == last
		last = err.Error()
		mu.Unlock()
		if !repeat {
			slog.Default().Warn("NATS refused an operation of this sidecar", "connection", name, "err", err)
		}
	}
}

// renewable holds the JWT credential of each open connection Dial made with one (removed
// when the connection closes): at most one entry per open connection.
var renewable sync.Map // *nats.Conn -> *jwtCreds

// jwtCreds is a connection's current user JWT and seed.
type jwtCreds struct {
	mu        sync.Mutex
	jwt, seed string
}

func (c *jwtCreds) user() (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.jwt, nil
}

// sign signs the server's nonce with the seed of the JWT user returned last: both change
// together under the lock, and nats.go asks for the JWT before the signature.
func (c *jwtCreds) sign(nonce []byte) ([]byte, error) {
	c.mu.Lock()
	seed := c.seed
	c.mu.Unlock()
	kp, err := nkeys.FromSeed([]byte(seed))
	if err != nil {
		return nil, errors.New("the NATS user seed the control plane sent does not parse")
	}
	defer kp.Wipe()
	return kp.Sign(nonce)
}

// Renew moves nc, made by Dial with credential old, to q when q is the same identity's next
// user JWT (the manager renews each at half its lifetime, and re-mints it when the policy
// changes the identity's grant): it swaps the JWT and seed in and reconnects at once, so the
// server applies q's permissions, while the connection keeps its subscriptions — a call in
// flight is still acked after, the consumer keeps pulling. It reports false, changing
// nothing, when q differs in anything else (URL, user, inbox prefix, a password or token)
// or nc has no JWT credential: then the caller dials again.
func Renew(nc *nats.Conn, old, q contract.QueueMeta) bool {
	if nc == nil || old.JWT == "" || q.JWT == "" || q.Seed == "" || q.URL != old.URL || q.User != old.User ||
		q.InboxPrefix != old.InboxPrefix || q.Token != "" || q.Password != "" {
		return false
	}
	v, ok := renewable.Load(nc)
	if !ok {
		return false
	}
	c := v.(*jwtCreds)
	c.mu.Lock()
	c.jwt, c.seed = q.JWT, q.Seed
	c.mu.Unlock()
	if nc.IsClosed() {
		return false
	}
	_ = nc.ForceReconnect() // fails only on a closed connection
	return true
}
