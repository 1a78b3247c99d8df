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
// backlog drained is reported once with 0. A function with revisions is reported per
// revision (Demand), and, with Dispatch, the calls waiting on a revision that lost its
// traffic are moved on (MoveOrphans).
type PendingWatcher struct {
	JS   StreamGetter
	Sink PendingSink
	// Functions, when set, are given their consumers (and their revisions') on every poll
	// (SyncConsumers), so a new function's pods find theirs within one interval; their
	// splits decide how a backlog is shared between revisions.
	Functions FunctionLister
	// Dispatch, when set with Functions, moves calls off revisions without traffic.
	Dispatch DispatchJS
	Clock    clock.WithTicker // default clock.RealClock
	Interval time.Duration    // default 2s, the autoscaler's decision tick
	Logger   logr.Logger
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
	var lastErr, lastDeadErr, lastConsErr, lastMoveErr string
	// A new watcher (after a reconnect) starts from no series: it cannot know which of a
	// previous watcher's functions drained meanwhile. Its first poll is immediate.
	pendingMessages.Reset()
	deadLetters.Reset()
	pendingSeries, deadSeries := &gaugeSet{vec: pendingMessages}, &gaugeSet{vec: deadLetters}
	warned := false
	logOnce := func(last *string, err error, msg string) {
		switch {
		case err == nil:
			*last = ""
		case ctx.Err() == nil && err.Error() != *last:
			w.Logger.Error(err, msg)
			*last = err.Error()
		}
	}
	t := clk.NewTicker(interval)
	defer t.Stop()
	for {
		var fns []Function
		var known map[FunctionKey]Function
		var fnErr error
		if w.Functions != nil {
			if fns, fnErr = w.Functions.Functions(ctx); fnErr == nil {
				known = make(map[FunctionKey]Function, len(fns))
				for _, fn := range fns {
					known[fn.FunctionKey] = fn
				}
			}
		}
		backlog, err := Backlog(ctx, w.JS)
		logOnce(&lastErr, err, "cannot read async backlog; autoscaler keeps the last counts")
		if err == nil {
			cur := Demand(backlog, known)
			// Drained keys first: a function's key that stops being reported (it got
			// revisions) resolves to a revision through the autoscaler's alias, and its 0
			// must not overwrite the count that revision is given below.
			for fn := range last {
				if _, ok := cur[fn]; !ok {
					w.Sink.SetPending(fn, 0)
				}
			}
			for fn, n := range cur {
				if last[fn] != n {
					w.Sink.SetPending(fn, n)
				}
			}
			last = cur
			perFunction := map[FunctionKey]int{}
			for k, n := range backlog {
				perFunction[FunctionKey{k.Namespace, k.Name}] += n
			}
			if n := pendingSeries.set(perFunction); n > 0 && !warned {
				w.Logger.Info("more functions have queued calls than the metrics show", "limit", MaxFunctionSeries, "left out", n)
				warned = true
			}
			if w.Dispatch != nil && known != nil {
				moved, err := MoveOrphans(ctx, w.Dispatch, backlog, known, MaxMovesPerPoll)
				if moved > 0 {
					w.Logger.Info("moved queued calls off revisions without traffic", "calls", moved)
				}
				logOnce(&lastMoveErr, err, "cannot move queued calls off revisions without traffic; retrying")
			}
		}
		if w.Functions != nil {
			consErr := fnErr
			if consErr == nil && err == nil {
				var made, deleted int
				made, deleted, consErr = SyncConsumers(ctx, w.JS, fns, backlog)
				if made > 0 || deleted > 0 {
					w.Logger.Info("synced async consumers", "created", made, "deleted", deleted)
				}
			}
			logOnce(&lastConsErr, consErr, "cannot create the consumers of functions; their pods wait for them")
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
