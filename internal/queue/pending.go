package queue

import (
	"context"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats.go/jetstream"
	"k8s.io/utils/clock"

	"github.com/weftmesh/weft/contract"
)

// FunctionKey names a MeshFunction by namespace and name.
type FunctionKey struct{ Namespace, Name string }

// StreamGetter is the part of jetstream.JetStream that pending counts need.
type StreamGetter interface {
	Stream(ctx context.Context, name string) (jetstream.Stream, error)
}

// Pending returns the number of queued calls per function: messages in WEFT_CALLS, which
// includes calls being run or waiting for a retry, since those are still demand. Functions
// with nothing queued are absent.
func Pending(ctx context.Context, js StreamGetter) (map[FunctionKey]int, error) {
	return pending(ctx, js, contract.CallsPrefix+">")
}

// PendingCount returns the number of queued calls for one function.
func PendingCount(ctx context.Context, js StreamGetter, namespace, name string) (int, error) {
	m, err := pending(ctx, js, contract.CallsSubject(namespace, name))
	if err != nil {
		return 0, err
	}
	return m[FunctionKey{namespace, name}], nil
}

func pending(ctx context.Context, js StreamGetter, filter string) (map[FunctionKey]int, error) {
	s, err := js.Stream(ctx, contract.CallsStream)
	if err != nil {
		return nil, fmt.Errorf("looking up stream %s: %w", contract.CallsStream, err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return nil, fmt.Errorf("reading pending calls of stream %s: %w", contract.CallsStream, err)
	}
	out := make(map[FunctionKey]int, len(info.State.Subjects))
	for subj, n := range info.State.Subjects {
		if ns, name, ok := contract.FunctionFromSubject(subj); ok && n > 0 {
			out[FunctionKey{ns, name}] += int(n)
		}
	}
	return out, nil
}

// PendingSink receives per-function pending counts (the lead wires it to
// autoscale.Autoscaler.SetPending).
type PendingSink interface {
	SetPending(fn FunctionKey, n int)
}

// PendingSinkFunc adapts a function to PendingSink.
type PendingSinkFunc func(fn FunctionKey, n int)

// SetPending calls f.
func (f PendingSinkFunc) SetPending(fn FunctionKey, n int) { f(fn, n) }

// PendingWatcher polls WEFT_CALLS and reports each function's backlog to a sink, so queued
// calls for a function at zero replicas count as demand and scale it up. A function whose
// backlog drained is reported once with 0.
type PendingWatcher struct {
	JS   StreamGetter
	Sink PendingSink
	// Functions, when set, are given their consumers on every poll (EnsureConsumers), so
	// a new function's pods find theirs within one interval.
	Functions FunctionLister
	Clock     clock.WithTicker // default clock.RealClock
	Interval  time.Duration    // default 2s, the autoscaler's decision tick
	Logger    logr.Logger
}

// Start polls until ctx is done. Errors (NATS restarting) are logged once per change and
// retried on the next tick; the last reported counts stand meanwhile.
func (w *PendingWatcher) Start(ctx context.Context) error {
	clk := w.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	interval := w.Interval
	if interval <= 0 {
		interval = 2 * time.Second
	}
	last := map[FunctionKey]int{}
	var lastErr, lastDeadErr, lastConsErr string
	// A new watcher (after a reconnect) starts from no series: it cannot know which of a
	// previous watcher's functions drained meanwhile. Its first poll is immediate.
	pendingMessages.Reset()
	deadLetters.Reset()
	pendingSeries, deadSeries := &gaugeSet{vec: pendingMessages}, &gaugeSet{vec: deadLetters}
	warned := false
	t := clk.NewTicker(interval)
	defer t.Stop()
	for {
		cur, err := Pending(ctx, w.JS)
		switch {
		case err != nil && ctx.Err() == nil:
			if err.Error() != lastErr {
				w.Logger.Error(err, "cannot read async backlog; autoscaler keeps the last counts")
				lastErr = err.Error()
			}
		case err == nil:
			lastErr = ""
			for fn, n := range cur {
				if last[fn] != n {
					w.Sink.SetPending(fn, n)
				}
			}
			for fn := range last {
				if _, ok := cur[fn]; !ok {
					w.Sink.SetPending(fn, 0)
				}
			}
			last = cur
			if n := pendingSeries.set(cur); n > 0 && !warned {
				w.Logger.Info("more functions have queued calls than the metrics show", "limit", MaxFunctionSeries, "left out", n)
				warned = true
			}
		}
		if w.Functions != nil {
			err := w.ensureConsumers(ctx)
			if err != nil && ctx.Err() == nil && err.Error() != lastConsErr {
				w.Logger.Error(err, "cannot create the consumers of functions; their pods wait for them")
			}
			if err == nil {
				lastConsErr = ""
			} else {
				lastConsErr = err.Error()
			}
		}
		if dead, err := DeadLetters(ctx, w.JS); err == nil {
			lastDeadErr = ""
			deadSeries.set(dead)
		} else if ctx.Err() == nil && err.Error() != lastDeadErr {
			w.Logger.Error(err, "cannot read dead letters; the metric keeps the last counts")
			lastDeadErr = err.Error()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
		}
	}
}

// NeedLeaderElection is true: only the leader's autoscaler acts on pending counts.
func (w *PendingWatcher) NeedLeaderElection() bool { return true }

func (w *PendingWatcher) ensureConsumers(ctx context.Context) error {
	fns, err := w.Functions.Functions(ctx)
	if err != nil {
		return err
	}
	n, err := EnsureConsumers(ctx, w.JS, fns)
	if n > 0 {
		w.Logger.Info("created async consumers", "count", n)
	}
	return err
}
