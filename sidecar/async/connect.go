package async

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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
	switch {
	case q.JWT != "":
		// An external cluster in decentralized JWT mode: the user JWT the manager minted
		// for this identity, and its seed to sign the server's nonce with (the JWT is no
		// bearer token). q.User only names the identity.
		opts = append(opts, nats.UserJWTAndSeed(q.JWT, q.Seed))
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
