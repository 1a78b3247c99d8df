package async

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/weftmesh/weft/contract"
)

// Dispatching by the traffic split (a function with revisions, docs/revisions.md).
//
// A pod of a revision runs two pulls: the function's consumer, whose calls it does not run
// but dispatches (draws a revision by the split this sidecar has now and republishes the
// call to that revision's subject), and its own revision's consumer, whose calls it runs —
// unless its revision has 0 % of the traffic by then (a rollback), when it dispatches them
// again. The split that decides is the one in force when a call leaves the function's
// queue, not when it was published. A copy is acked only after JetStream stored it, and
// it carries contract.DispatchMsgID, so a dispatcher killed in between neither loses the
// call (the original is redelivered after AckWait) nor doubles it (the second copy is a
// duplicate JetStream drops).

// dispatchBatch bounds the calls one pod holds unacked while dispatching: each takes one
// publish round trip, and a batch is pulled only once the previous one is settled.
const dispatchBatch = 64

// dispatchTimeout bounds one republish's wait for JetStream's ack.
const dispatchTimeout = 10 * time.Second

// noSplitRetry is how long a call waits before another delivery when this sidecar knows no
// split for its function yet (its config lags the function's revisions).
const noSplitRetry = time.Second

// SetTraffic replaces the split queued calls are dispatched by (the function cluster's
// FunctionMeta.Traffic); nil: the function serves no revisions.
func (c *Consumer) SetTraffic(t []contract.RevisionTraffic) {
	t = append([]contract.RevisionTraffic(nil), t...)
	c.traffic.Store(&t)
}

func (c *Consumer) split() []contract.RevisionTraffic {
	if p := c.traffic.Load(); p != nil {
		return *p
	}
	return nil
}

// ownShare reports whether this pod's revision has traffic now; true when no split is
// known (the function serves no revisions, or this sidecar's config lags), so calls run.
func (c *Consumer) ownShare() bool {
	t := c.split()
	return contract.TrafficTotal(t) == 0 || contract.TrafficPercent(t, c.opts.Revision) > 0
}

// dispatchLoop pulls the function's calls and dispatches each until ctx ends.
func (c *Consumer) dispatchLoop(ctx, work context.Context) {
	cons, err := c.durable(ctx, c.functionConsumer())
	if err != nil {
		return
	}
	var lastErr string
	for ctx.Err() == nil {
		fctx, cancel := context.WithTimeout(ctx, c.opts.FetchWait)
		batch, err := cons.Fetch(dispatchBatch, jetstream.FetchContext(fctx))
		if err == nil {
			for msg := range batch.Messages() {
				c.dispatch(work, msg, false)
			}
			err = batch.Error()
		}
		cancel()
		if err == nil || ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			lastErr = ""
			continue
		}
		if err.Error() != lastErr {
			c.opts.Logger.Warn("pulling async calls to dispatch failed; retrying", "err", err)
			lastErr = err.Error()
		}
		c.sleep(ctx, time.Second)
		if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrConsumerDeleted) || errors.Is(err, jetstream.ErrStreamNotFound) {
			if cons, err = c.durable(ctx, c.functionConsumer()); err != nil {
				return
			}
		}
	}
}

// dispatch sends one call to the revision the split draws now. onRevision: the call was
// pulled from this pod's revision (which lost its traffic), so its deliveries there were
// attempts to carry along; from the function's subject, a caller's Weft-Prior-Attempts is
// not trusted and dropped.
func (c *Consumer) dispatch(work context.Context, msg jetstream.Msg, onRevision bool) {
	cfg := c.config()
	t := c.split()
	total := contract.TrafficTotal(t)
	if total == 0 {
		_ = msg.NakWithDelay(noSplitRetry)
		return
	}
	meta, _ := msg.Metadata()
	n := 1
	if meta != nil {
		n = int(meta.NumDelivered)
	}
	if len(msg.Data()) > contract.MaxAsyncBodySize {
		// No Weft sidecar publishes this (its bodies are bounded by maxBodyBytes ≤ 8 MiB):
		// a raw publish with the caller's credential. It fits nowhere else (a copy or a dead
		// letter is larger still), so it is dropped.
		c.stats.dead.Add(1)
		c.opts.Logger.Warn("dropping a queued message whose body exceeds the async limit; it was not published by a Weft sidecar",
			"call", describe(msg), "bytes", len(msg.Data()), "limit", contract.MaxAsyncBodySize)
		_ = msg.Term()
		return
	}
	call, err := decodeCall(&nats.Msg{Subject: msg.Subject(), Header: msg.Headers(), Data: msg.Data()})
	if err != nil {
		c.bury(work, cfg, msg, nil, 0, err.Error(), nil)
		return
	}
	h := nats.Header{}
	for k, vs := range msg.Headers() {
		h[k] = append([]string(nil), vs...)
	}
	prior := 0
	if onRevision {
		prior = priorAttempts(msg.Headers()) + n - 1
	}
	h.Del(contract.HeaderPriorAttempts)
	if prior > 0 {
		h.Set(contract.HeaderPriorAttempts, strconv.Itoa(prior))
	}
	if meta != nil {
		h.Set(nats.MsgIdHdr, contract.DispatchMsgID(call.id, meta.Sequence.Stream))
	} else {
		h.Del(nats.MsgIdHdr)
	}
	rev := contract.PickRevision(t, rand.Uint32N(total))
	subject := contract.RevisionCallsSubject(c.opts.Function.Namespace, c.opts.Function.Name, rev)
	ctx, cancel := context.WithTimeout(work, dispatchTimeout)
	_, err = c.js.PublishMsg(ctx, &nats.Msg{Subject: subject, Header: h, Data: msg.Data()})
	cancel()
	if err != nil {
		// Handed back: the next delivery publishes with the same Nats-Msg-Id, so a copy that
		// was stored after all is not stored twice.
		c.opts.Logger.Warn("dispatching an async call failed; it stays queued", "call", call.id, "revision", rev, "err", err)
		_ = msg.NakWithDelay(noSplitRetry)
		return
	}
	c.stats.dispatched.Add(1)
	if onRevision {
		c.stats.redispatched.Add(1)
	}
	if c.beforeAck != nil {
		c.beforeAck(msg)
	}
	if err := msg.Ack(); err != nil {
		c.opts.Logger.Warn("acking a dispatched async call failed; its redelivery will be a duplicate JetStream drops", "call", call.id, "err", err)
	}
}

// priorAttempts reads Weft-Prior-Attempts, bounded by MaxAsyncAttempts.
func priorAttempts(h nats.Header) int {
	n, err := strconv.Atoi(h.Get(contract.HeaderPriorAttempts))
	if err != nil || n < 0 {
		return 0
	}
	return min(n, contract.MaxAsyncAttempts)
}

// functionConsumer is the function's durable pull consumer (see durable).
func (c *Consumer) functionConsumer() jetstream.ConsumerConfig {
	return c.consumerConfig(DurableName(c.opts.Function), callsSubject(c.opts.Function), "Weft sidecars of function "+c.opts.Function.String())
}

// revisionConsumer is this pod's revision's durable pull consumer.
func (c *Consumer) revisionConsumer() jetstream.ConsumerConfig {
	fn := c.opts.Function
	return c.consumerConfig(contract.RevisionConsumerName(fn.Namespace, fn.Name, c.opts.Revision),
		contract.RevisionCallsSubject(fn.Namespace, fn.Name, c.opts.Revision),
		"Weft sidecars of revision "+c.opts.Revision+" of function "+fn.String())
}

func (c *Consumer) consumerConfig(durable, subject, desc string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       durable,
		Description:   desc,
		FilterSubject: subject,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.opts.AckWait,
		// Attempts are counted by this package (it dead-letters instead of dropping), so
		// JetStream must not stop redelivering on its own.
		MaxDeliver: -1,
		// Each sidecar bounds itself with MaxInflight; this only has to exceed the sum.
		MaxAckPending: 100_000,
	}
}
