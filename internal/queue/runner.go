package queue

import (
	"context"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/utils/clock"

	"github.com/weftmesh/weft/contract"
)

// Runner is the manager's side of the queue in one Runnable: it waits for the embedded
// server (if any), connects, makes sure the streams exist, and feeds per-function backlogs
// to the autoscaler until ctx ends. NATS being unreachable is retried, never fatal, so the
// manager keeps reconciling while the queue is down.
type Runner struct {
	// Embedded is the in-process server; nil when Client.URL names an external cluster.
	Embedded *Server
	// Client says how to connect; its URL is ignored when Embedded is set.
	Client  ClientOptions
	Streams StreamOptions
	Sink    PendingSink
	// Functions, when set, get their consumers made by the manager (see ConsumerConfig):
	// needed when sidecars connect as identities that may not make them.
	Functions FunctionLister
	Interval  time.Duration    // pending poll interval, default 2s
	Clock     clock.WithTicker // default clock.RealClock
	Logger    logr.Logger
}

// Start blocks until ctx is done.
func (r *Runner) Start(ctx context.Context) error {
	clk := r.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	opts := r.Client
	if r.Embedded != nil {
		select {
		case <-ctx.Done():
			return nil
		case <-r.Embedded.Ready():
		}
		opts.URL = r.Embedded.ClientURL()
	}
	if opts.Name == "" {
		opts.Name = "weft-manager"
	}
	var lastErr string
	for {
		err := r.connectAndWatch(ctx, opts, clk)
		if ctx.Err() != nil {
			return nil
		}
		if err.Error() != lastErr {
			r.Logger.Error(err, "async queue unavailable; retrying", "url", opts.URL)
			lastErr = err.Error()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-clk.After(5 * time.Second):
		}
	}
}

func (r *Runner) connectAndWatch(ctx context.Context, opts ClientOptions, clk clock.WithTicker) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	nc, js, err := Connect(cctx, opts)
	if err != nil {
		cancel()
		return err
	}
	defer nc.Close()
	err = EnsureStreams(cctx, js, r.Streams)
	cancel()
	if err != nil {
		return err
	}
	r.Logger.Info("async queue ready", "url", opts.URL, "streams", []string{contract.CallsStream, contract.DeadStream})
	w := &PendingWatcher{JS: js, Sink: r.Sink, Functions: r.Functions, Dispatch: js, Clock: clk, Interval: r.Interval, Logger: r.Logger}
	return w.Start(ctx)
}

// NeedLeaderElection is true: one manager sets up streams and drives the autoscaler.
func (r *Runner) NeedLeaderElection() bool { return true }
