package async

import (
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Dial connects a sidecar to NATS. It returns at once even if NATS is down and keeps
// reconnecting forever: meanwhile publishes answer 503 and the consumer waits, so a NATS
// restart never takes a pod's synchronous traffic down with it. token or credsFile may be
// empty.
func Dial(url, token, credsFile, name string) (*nats.Conn, jetstream.JetStream, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
	}
	if token != "" {
		opts = append(opts, nats.Token(token))
	}
	if credsFile != "" {
		opts = append(opts, nats.UserCredentials(credsFile))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connecting to NATS at %s: %w", url, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("JetStream client for %s: %w", url, err)
	}
	return nc, js, nil
}
