package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
)

// ClientOptions say how to reach NATS: the embedded server's URL and the manager's user
// (AdminUser and its derived password), or an external cluster (--nats-url with a token or
// a credentials file).
type ClientOptions struct {
	URL            string
	User, Password string
	// InboxPrefix replaces _INBOX for reply subjects; an identity's connection needs its
	// own (Identity.InboxPrefix), the only subjects it may subscribe to.
	InboxPrefix string
	Token       string
	CredsFile   string
	// UserJWT, when set, is asked at every (re)connect for a user JWT and the key pair the
	// JWT names, which signs the server's nonce (an external cluster in JWT mode without
	// --nats-creds: the manager signs its own user, Issuer.Admin).
	UserJWT func() (string, nkeys.KeyPair, error)
	// Name identifies the connection in NATS monitoring.
	Name string
}

// Connect dials NATS and returns the connection and a JetStream client. It waits for the
// first connection up to ctx's deadline, then reconnects forever, because the manager must
// keep working through a NATS restart.
func Connect(ctx context.Context, o ClientOptions) (*nats.Conn, jetstream.JetStream, error) {
	if o.URL == "" {
		return nil, nil, errors.New("no NATS URL: start the embedded server or set --nats-url")
	}
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.RetryOnFailedConnect(false),
	}
	if o.User != "" {
		opts = append(opts, nats.UserInfo(o.User, o.Password))
	}
	if o.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(o.InboxPrefix))
	}
	if o.Token != "" {
		opts = append(opts, nats.Token(o.Token))
	}
	if o.UserJWT != nil {
		opts = append(opts, userJWT(o.UserJWT))
	}
	if o.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(o.CredsFile))
	}
	if d, ok := ctx.Deadline(); ok {
		opts = append(opts, nats.Timeout(time.Until(d)))
	}
	nc, err := nats.Connect(o.URL, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connecting to NATS at %s: %w", o.URL, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("JetStream client for %s: %w", o.URL, err)
	}
	return nc, js, nil
}

// userJWT authenticates with the JWT mint returns at each connect, signing the nonce with
// the key pair it returned with that JWT (nats.go asks for the JWT, then the signature).
func userJWT(mint func() (string, nkeys.KeyPair, error)) nats.Option {
	var mu sync.Mutex
	var kp nkeys.KeyPair
	return nats.UserJWT(func() (string, error) {
		token, k, err := mint()
		if err != nil {
			return "", err
		}
		mu.Lock()
		kp = k
		mu.Unlock()
		return token, nil
	}, func(nonce []byte) ([]byte, error) {
		mu.Lock()
		k := kp
		mu.Unlock()
		if k == nil {
			return nil, errors.New("no NATS user key: the user JWT was not minted")
		}
		return k.Sign(nonce)
	})
}
