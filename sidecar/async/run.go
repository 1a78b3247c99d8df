package async

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// result is the app's answer to one attempt, or why there was none.
type result struct {
	attempt
	header    http.Header
	body      []byte
	truncated bool
	took      time.Duration
}

// handle runs one delivered call and settles it: ack (final answer), nak with a delay
// (retry), or dead-letter and terminate. work is cancelled only when a stop ran out of
// drain time; the call is then handed back untouched.
func (c *Consumer) handle(work context.Context, msg jetstream.Msg) {
	if c.opts.Revision != "" && !c.ownShare() {
		// This revision lost its traffic (a rollback) while the call waited for it: it
		// goes where the split sends calls now.
		c.dispatch(work, msg, true)
		return
	}
	cfg := c.config()
	n := 1
	meta, err := msg.Metadata()
	if err == nil {
		n = int(meta.NumDelivered)
	}
	if c.opts.Revision != "" {
		// Attempts it had on revisions it was dispatched away from count too. Only
		// dispatchers can publish to a revision's subject, so the header is theirs.
		n += priorAttempts(msg.Headers())
	}
	call, err := decodeCall(&nats.Msg{Subject: msg.Subject(), Header: msg.Headers(), Data: msg.Data()})
	if err != nil {
		c.bury(work, cfg, msg, nil, n, err.Error(), nil)
		return
	}
	enqueued := call.enqueued
	if enqueued.IsZero() && meta != nil {
		enqueued = meta.Timestamp
	}
	if old, why := expired(cfg, enqueued, c.opts.Clock.Now()); old {
		c.bury(work, cfg, msg, call, n-1, why, nil)
		return
	}
	stop := c.keepOwned(msg)
	res := c.runApp(work, cfg, call)
	stop()
	if work.Err() != nil {
		_ = msg.Nak()
		return
	}
	switch v, delay, reason := decide(cfg, res.attempt, n); v {
	case done:
		c.stats.done.Add(1)
		if err := msg.Ack(); err != nil {
			c.opts.Logger.Warn("acking an async call failed; it may run again", "call", describe(msg), "err", err)
		}
		c.callback(work, call, res, "", n)
	case retry:
		c.stats.retried.Add(1)
		c.opts.Logger.Info("async call will be retried", "call", call.id, "attempt", n, "in", delay, "reason", reason)
		if err := msg.NakWithDelay(delay); err != nil {
			c.opts.Logger.Warn("naking an async call failed; it will be redelivered after the ack wait", "call", call.id, "err", err)
		}
	case dead:
		c.bury(work, cfg, msg, call, n, reason, &res)
	}
}

// keepOwned tells JetStream the call is still being worked on every AckWait/3, so a call
// longer than AckWait is not given to another pod meanwhile (the duplicate executions of
// openfaas/faas#1108).
func (c *Consumer) keepOwned(msg jetstream.Msg) (stop func()) {
	t := c.opts.Clock.NewTicker(c.opts.AckWait / 3)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-t.C():
				_ = msg.InProgress()
			}
		}
	}()
	return func() { t.Stop(); close(done) }
}

// runApp makes one attempt against the local app, bounded by the function's timeout.
func (c *Consumer) runApp(work context.Context, cfg Config, call *call) result {
	ctx, cancel := context.WithTimeout(work, cfg.Timeout)
	defer cancel()
	start := c.opts.Clock.Now()
	req, err := http.NewRequestWithContext(ctx, call.method, strings.TrimSuffix(c.opts.AppURL, "/")+call.uri, bytes.NewReader(call.body))
	if err != nil {
		return result{attempt: attempt{err: fmt.Errorf("building the request: %w", err)}}
	}
	req.Header = call.header.Clone()
	req.Header.Set(HeaderCallID, call.id)
	if call.host != "" {
		req.Host = call.host
	}
	resp, err := c.opts.Client.Do(req)
	if err != nil {
		return result{attempt: attempt{err: appError(ctx, cfg, err)}, took: c.opts.Clock.Since(start)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, c.opts.MaxResponseBytes+1))
	if err != nil {
		return result{attempt: attempt{err: appError(ctx, cfg, err)}, took: c.opts.Clock.Since(start)}
	}
	r := result{attempt: attempt{status: resp.StatusCode}, header: resp.Header, body: body, took: c.opts.Clock.Since(start)}
	if int64(len(body)) > c.opts.MaxResponseBytes {
		r.body, r.truncated = body[:c.opts.MaxResponseBytes], true
	}
	return r
}

// errTimeout marks an attempt that ran past the function's timeout.
var errTimeout = errors.New("timed out")

func appError(ctx context.Context, cfg Config, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("%w after %s (spec.timeout)", errTimeout, cfg.Timeout)
	}
	return err
}

// bury ends a call that will not run again: it goes to the dead-letter subject (if the
// function keeps them) with the reason and attempt count, is terminated in WEFT_CALLS, and
// the caller's callback hears of the failure. If the dead-letter publish fails the call is
// naked instead, so it is buried again on redelivery rather than lost.
func (c *Consumer) bury(work context.Context, cfg Config, msg jetstream.Msg, call *call, attempts int, reason string, last *result) {
	if cfg.DeadLetter {
		h := nats.Header{}
		for k, vs := range msg.Headers() {
			h[k] = append([]string(nil), vs...)
		}
		h.Set(HeaderDeadReason, reason)
		h.Set(HeaderAttempts, strconv.Itoa(attempts))
		ctx, cancel := context.WithTimeout(work, 10*time.Second)
		_, err := c.js.PublishMsg(ctx, &nats.Msg{Subject: deadSubject(c.opts.Function), Header: h, Data: msg.Data()})
		cancel()
		if err != nil {
			c.opts.Logger.Warn("dead-lettering an async call failed; it stays queued", "call", describe(msg), "err", err)
			_ = msg.NakWithDelay(cfg.Backoff)
			return
		}
	}
	c.stats.dead.Add(1)
	if err := msg.Term(); err != nil {
		c.opts.Logger.Warn("terminating a dead async call failed; it may be delivered again", "call", describe(msg), "err", err)
	}
	c.opts.Logger.Warn("async call failed for good", "call", msg.Headers().Get(HeaderCallID), "attempts", attempts, "reason", reason, "deadLettered", cfg.DeadLetter)
	if call != nil {
		res := result{}
		if last != nil {
			res = *last
		}
		c.callback(work, call, res, reason, attempts)
	}
}
