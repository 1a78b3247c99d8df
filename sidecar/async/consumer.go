package async

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"k8s.io/utils/clock"

	"github.com/weftmesh/weft/contract"
)

// ConsumerJS is the part of jetstream.JetStream a Consumer uses: its durable consumer, and
// publishing to the dead-letter subject.
type ConsumerJS interface {
	MsgPublisher
	Consumer(ctx context.Context, stream string, name string) (jetstream.Consumer, error)
	CreateOrUpdateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error)
}

// ConsumerOptions configure a Consumer; zero values take defaults.
type ConsumerOptions struct {
	// Function is the function this pod serves (node metadata "function").
	Function FunctionRef
	// Revision is the pod's revision (its weft.dev/revision label) when the function has
	// revisions: the pod then dispatches the function's calls by the split (SetTraffic) and
	// runs those dispatched to its revision. Empty: it runs the function's calls.
	Revision string
	// AppURL is the local app, http://127.0.0.1:<appPort>.
	AppURL string
	// Config is the function's async policy; SetConfig replaces it when xDS changes it.
	Config Config
	// Client calls the app; default a client without a timeout (Config.Timeout bounds each
	// attempt).
	Client *http.Client
	// CallbackClient posts results; default a plain client with CallbackTimeout.
	CallbackClient *http.Client
	// AckWait is how long JetStream waits for this sidecar before it gives a call to
	// another one. Long calls stay owned by sending "in progress" every AckWait/3, so this
	// only bounds how soon a crashed sidecar's calls are redelivered. Default 30s.
	AckWait time.Duration
	// FetchWait is how long one pull waits for calls. Default 5s.
	FetchWait time.Duration
	// DrainTimeout bounds how long Run waits for calls in flight after its context ends;
	// calls still running then are cancelled and handed back for redelivery. Default 30s.
	DrainTimeout time.Duration
	// CallbackAttempts, CallbackBackoff (doubling) and CallbackTimeout bound delivering
	// one result. Defaults 3, 500ms and 10s.
	CallbackAttempts int
	CallbackBackoff  time.Duration
	CallbackTimeout  time.Duration
	// MaxResponseBytes of the app's answer forwarded to the callback; the rest is cut and
	// the callback carries X-Weft-Body-Truncated. Default 8 MiB.
	MaxResponseBytes int64
	Clock            clock.WithTicker // default clock.RealClock
	Logger           *slog.Logger     // default slog.Default()
}

// Consumer is the callee side: it pulls its function's calls, runs them against the local
// app at most MaxInflight at a time, and settles each one (ack, retry, dead-letter).
type Consumer struct {
	js    ConsumerJS
	opts  ConsumerOptions
	cfg   atomic.Pointer[Config]
	stats consumerStats
	// traffic is the split calls are dispatched by (SetTraffic).
	traffic atomic.Pointer[[]contract.RevisionTraffic]
	// beforeAck, in tests, runs between a dispatched copy's store and the original's ack.
	beforeAck func(jetstream.Msg)

	mu       sync.Mutex
	inflight int
	freed    chan struct{} // signalled (non-blocking) when a call finishes
}

// NewConsumer checks the options; nothing is pulled until Run.
func NewConsumer(js ConsumerJS, opts ConsumerOptions) (*Consumer, error) {
	if opts.Function.Namespace == "" || opts.Function.Name == "" {
		return nil, errors.New("async consumer needs the pod's function (namespace and name)")
	}
	if opts.AppURL == "" {
		return nil, errors.New("async consumer needs the local app URL")
	}
	if opts.Client == nil {
		opts.Client = &http.Client{}
	}
	if opts.CallbackTimeout <= 0 {
		opts.CallbackTimeout = 10 * time.Second
	}
	if opts.CallbackClient == nil {
		opts.CallbackClient = &http.Client{Timeout: opts.CallbackTimeout}
	}
	if opts.AckWait <= 0 {
		opts.AckWait = 30 * time.Second
	}
	if opts.FetchWait <= 0 {
		opts.FetchWait = 5 * time.Second
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 30 * time.Second
	}
	if opts.CallbackAttempts <= 0 {
		opts.CallbackAttempts = 3
	}
	if opts.CallbackBackoff <= 0 {
		opts.CallbackBackoff = 500 * time.Millisecond
	}
	if opts.MaxResponseBytes <= 0 {
		opts.MaxResponseBytes = 8 << 20
	}
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	opts.Logger = opts.Logger.With("function", opts.Function.String())
	c := &Consumer{js: js, opts: opts, freed: make(chan struct{}, 1)}
	c.SetConfig(opts.Config)
	return c, nil
}

// SetConfig replaces the policy; calls that start after it use the new one.
func (c *Consumer) SetConfig(cfg Config) {
	d := DefaultConfig()
	if cfg.MaxAttempts < 1 {
		cfg.MaxAttempts = d.MaxAttempts
	}
	if cfg.MaxInflight < 1 {
		cfg.MaxInflight = d.MaxInflight
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = d.Timeout
	}
	c.cfg.Store(&cfg)
}

func (c *Consumer) config() Config { return *c.cfg.Load() }

// DurableName is the JetStream consumer all of a function's sidecars share. Kubernetes
// names never contain "_", so the name is unambiguous.
func DurableName(fn FunctionRef) string { return contract.ConsumerName(fn.Namespace, fn.Name) }

// Run pulls and runs calls until ctx ends, then waits up to DrainTimeout for calls in
// flight. Calls not yet pulled stay in the stream for the function's other pods. It returns
// nil on a clean stop; NATS being unavailable is retried, not returned. With a Revision it
// also dispatches the function's calls (dispatch.go) and runs its revision's.
func (c *Consumer) Run(ctx context.Context) error {
	// Calls in flight outlive ctx so a stop can finish them; abort cancels them when the
	// drain time is up.
	work, abort := context.WithCancel(context.WithoutCancel(ctx))
	defer abort()
	run := c.functionConsumer()
	var dispatching sync.WaitGroup
	if c.opts.Revision != "" {
		run = c.revisionConsumer()
		dispatching.Go(func() { c.dispatchLoop(ctx, work) })
	}
	defer dispatching.Wait()
	cons, err := c.durable(ctx, run)
	if err != nil {
		return nil // ctx ended while waiting for NATS
	}
	var wg sync.WaitGroup
	var lastErr string
	for {
		free := c.waitFree(ctx)
		if free == 0 {
			break
		}
		fctx, cancel := context.WithTimeout(ctx, c.opts.FetchWait)
		batch, err := cons.Fetch(free, jetstream.FetchContext(fctx))
		if err == nil {
			for msg := range batch.Messages() {
				c.take()
				wg.Go(func() {
					defer c.release()
					c.handle(work, msg)
				})
			}
			err = batch.Error()
		}
		cancel()
		if err != nil && ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			if err.Error() != lastErr {
				c.opts.Logger.Warn("pulling async calls failed; retrying", "err", err)
				lastErr = err.Error()
			}
			c.sleep(ctx, time.Second)
			if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) ||
				errors.Is(err, jetstream.ErrStreamNotFound) {
				// Someone deleted the consumer or the stream was recreated: make ours again.
				if cons, err = c.durable(ctx, run); err != nil {
					break
				}
			}
		} else if err == nil {
			lastErr = ""
		}
	}
	drained := make(chan struct{})
	go func() { wg.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-c.opts.Clock.After(c.opts.DrainTimeout):
		c.opts.Logger.Warn("async calls still running at shutdown; handing them back for redelivery", "drainTimeout", c.opts.DrainTimeout)
		abort()
		<-drained
	}
	return nil
}

// durable finds the function's durable pull consumer, or makes it, retrying while NATS is
// unreachable (the sidecar may start before NATS) or the consumer does not exist yet. The
// embedded server's manager makes every function's consumer (internal/queue
// ConsumerConfig, the same settings as here) and a function's identity may not, so that
// its pods cannot turn the consumer into a push consumer delivering elsewhere; without it
// (an external cluster, no authentication) the sidecar makes it.
func (c *Consumer) durable(ctx context.Context, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	var lastErr string
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		cons, err := c.js.Consumer(cctx, contract.CallsStream, cfg.Durable)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			cons, err = c.js.CreateOrUpdateConsumer(cctx, contract.CallsStream, cfg)
		}
		cancel()
		if err == nil {
			return cons, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err.Error() != lastErr {
			c.opts.Logger.Warn("cannot find or create the async consumer; retrying", "consumer", cfg.Durable, "err", err)
			lastErr = err.Error()
		}
		c.sleep(ctx, 2*time.Second)
	}
}

// waitFree blocks until fewer than MaxInflight calls run and returns how many more may
// start, or 0 when ctx ends.
func (c *Consumer) waitFree(ctx context.Context) int {
	for {
		c.mu.Lock()
		free := c.config().MaxInflight - c.inflight
		c.mu.Unlock()
		if ctx.Err() != nil {
			return 0
		}
		if free > 0 {
			return free
		}
		select {
		case <-ctx.Done():
			return 0
		case <-c.freed:
		}
	}
}

func (c *Consumer) take() {
	c.mu.Lock()
	c.inflight++
	c.mu.Unlock()
}

func (c *Consumer) release() {
	c.mu.Lock()
	c.inflight--
	c.mu.Unlock()
	select {
	case c.freed <- struct{}{}:
	default:
	}
}

func (c *Consumer) sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-c.opts.Clock.After(d):
	}
}

func describe(msg jetstream.Msg) string {
	return fmt.Sprintf("%s %s", msg.Subject(), msg.Headers().Get(HeaderCallID))
}
