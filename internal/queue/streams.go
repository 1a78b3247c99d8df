package queue

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weftmesh/weft/contract"
)

// StreamOptions tune the two streams; zero values take the defaults below.
type StreamOptions struct {
	// Duplicates is how long a call's Nats-Msg-Id (derived from its Idempotency-Key) is
	// remembered, so a retried publish within it runs the call once. Default 10m.
	Duplicates time.Duration
	// DeadMaxAge is how long dead-lettered calls are kept for inspection. Default 7 days.
	DeadMaxAge time.Duration
	// MaxMsgSize bounds one call (body plus headers). Default DefaultMaxPayload.
	MaxMsgSize int32
	// Replicas for an external clustered NATS; the embedded server takes 1. Default 1.
	Replicas int
}

// StreamConfigs returns the WEFT_CALLS and WEFT_DEAD stream configurations (pure; exposed
// for tests and for operators who create the streams themselves on an external cluster).
//
// WEFT_CALLS is a work queue: a message is removed once a function's sidecar acks it, so
// its per-subject count is exactly the function's backlog. WEFT_DEAD keeps messages by age.
func StreamConfigs(o StreamOptions) (calls, dead jetstream.StreamConfig) {
	if o.Duplicates == 0 {
		o.Duplicates = 10 * time.Minute
	}
	if o.DeadMaxAge == 0 {
		o.DeadMaxAge = 7 * 24 * time.Hour
	}
	if o.MaxMsgSize == 0 {
		o.MaxMsgSize = DefaultMaxPayload
	}
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	calls = jetstream.StreamConfig{
		Name:        contract.CallsStream,
		Description: "Weft asynchronous function calls, one subject per function",
		Subjects:    []string{contract.CallsPrefix + ">"},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardNew,
		Duplicates:  o.Duplicates,
		MaxMsgSize:  o.MaxMsgSize,
		Replicas:    o.Replicas,
	}
	dead = jetstream.StreamConfig{
		Name:        contract.DeadStream,
		Description: "Weft asynchronous calls that ran out of attempts or age",
		Subjects:    []string{contract.DeadPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardOld,
		MaxAge:      o.DeadMaxAge,
		Duplicates:  2 * time.Minute,
		MaxMsgSize:  o.MaxMsgSize,
		Replicas:    o.Replicas,
	}
	return calls, dead
}

// StreamManager is the part of jetstream.JetStream that EnsureStreams needs.
type StreamManager interface {
	CreateOrUpdateStream(ctx context.Context, cfg jetstream.StreamConfig) (jetstream.Stream, error)
}

// EnsureStreams creates the two streams or updates them to the current configuration. It is
// idempotent, so the manager runs it on every start.
func EnsureStreams(ctx context.Context, js StreamManager, o StreamOptions) error {
	calls, dead := StreamConfigs(o)
	for _, cfg := range []jetstream.StreamConfig{calls, dead} {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("creating or updating JetStream stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}

// ConsumerConfig is function fn's durable pull consumer on WEFT_CALLS, which all its pods
// share. The manager makes it (EnsureConsumers): a function's identity may only find,
// pull from and ack it. The settings match sidecar/async's own (it makes the consumer when
// NATS has no per-identity users): explicit acks, AckWait 30s (the sidecar sends "in
// progress" every AckWait/3 and must agree), no JetStream delivery limit (the sidecar
// counts attempts and dead-letters), and MaxAckPending above the sum of its pods'
// maxInflight.
func ConsumerConfig(fn FunctionKey) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       contract.ConsumerName(fn.Namespace, fn.Name),
		Description:   "Weft sidecars of function " + fn.Namespace + "/" + fn.Name,
		FilterSubject: contract.CallsSubject(fn.Namespace, fn.Name),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxDeliver:    -1,
		MaxAckPending: 100_000,
	}
}

// FunctionLister lists the functions whose calls are consumed (every MeshFunction: any may
// be called asynchronously with "Prefer: respond-async"), with their revisions and split.
type FunctionLister interface {
	Functions(ctx context.Context) ([]Function, error)
}

// EnsureConsumers makes the consumer of each function in fns that WEFT_CALLS lacks, and
// returns how many it made. Existing consumers are left as they are (SyncConsumers also
// makes and removes revisions' consumers).
func EnsureConsumers(ctx context.Context, js StreamGetter, fns []FunctionKey) (int, error) {
	s, err := js.Stream(ctx, contract.CallsStream)
	if err != nil {
		return 0, fmt.Errorf("looking up stream %s: %w", contract.CallsStream, err)
	}
	have := map[string]bool{}
	names := s.ConsumerNames(ctx)
	for n := range names.Name() {
		have[n] = true
	}
	if err := names.Err(); err != nil {
		return 0, fmt.Errorf("listing the consumers of %s: %w", contract.CallsStream, err)
	}
	made := 0
	for _, fn := range fns {
		cfg := ConsumerConfig(fn)
		if have[cfg.Durable] {
			continue
		}
		if _, err := s.CreateOrUpdateConsumer(ctx, cfg); err != nil {
			return made, fmt.Errorf("creating consumer %s of function %s/%s: %w", cfg.Durable, fn.Namespace, fn.Name, err)
		}
		made++
	}
	return made, nil
}
