package queue

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/weftmesh/weft/contract"
)

// Queued calls of functions with revisions (docs/revisions.md). Callers publish to the
// function's subject; the function's pods dispatch each call by the traffic split in force
// then to a revision's subject (sidecar/async); the manager's part is here: it makes each
// kept revision's consumer, reports each revision's share of the backlog to the autoscaler,
// and moves calls off revisions that no longer have traffic and may have no pod to do it.

// Function is one MeshFunction as the queue sees it.
type Function struct {
	FunctionKey
	// Revisions are the revisions it keeps (status.revisions), when it serves revisions.
	Revisions []string
	// Traffic is its split (status.traffic summed per revision, 0 % left out); empty when
	// it serves no revisions.
	Traffic []contract.RevisionTraffic
}

// CallsKey names one calls subject: a function's (Revision "") or one of its revisions'.
type CallsKey struct{ Namespace, Name, Revision string }

// RevisionConsumerConfig is the durable consumer revision rev's pods share, with the
// settings of ConsumerConfig.
func RevisionConsumerConfig(fn FunctionKey, rev string) jetstream.ConsumerConfig {
	c := ConsumerConfig(fn)
	c.Durable = contract.RevisionConsumerName(fn.Namespace, fn.Name, rev)
	c.Description = "Weft sidecars of revision " + rev + " of function " + fn.Namespace + "/" + fn.Name
	c.FilterSubject = contract.RevisionCallsSubject(fn.Namespace, fn.Name, rev)
	return c
}

// Backlog returns the messages held per calls subject (waiting, running or waiting for a
// retry); subjects with none are absent.
func Backlog(ctx context.Context, js StreamGetter) (map[CallsKey]int, error) {
	s, err := js.Stream(ctx, contract.CallsStream)
	if err != nil {
		return nil, fmt.Errorf("looking up stream %s: %w", contract.CallsStream, err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(contract.CallsPrefix+">"))
	if err != nil {
		return nil, fmt.Errorf("reading pending calls of stream %s: %w", contract.CallsStream, err)
	}
	out := make(map[CallsKey]int, len(info.State.Subjects))
	for subj, n := range info.State.Subjects {
		if ns, name, rev, ok := contract.ParseCallsSubject(subj); ok && n > 0 {
			out[CallsKey{ns, name, rev}] += int(n)
		}
	}
	return out, nil
}

// orphaned reports whether calls waiting on revision rev of fn are to be moved: the split
// gives rev nothing (a rollback, or rev was removed), or fn serves no revisions any more.
func (fn Function) orphaned(rev string) bool {
	return rev != "" && contract.TrafficPercent(fn.Traffic, rev) == 0
}

// Demand is the backlog as the autoscaler counts it, by its keys: a function without
// revisions by its own name, a revision by "<namespace>/<revision>". Of a function with
// revisions, the calls not yet dispatched (on its own subject, or on a revision without
// traffic, to be moved) are shared by percent (largest remainder, so one call wakes one
// revision), and each revision with traffic adds the calls dispatched to it: every
// revision the split will send calls to wakes at once, not only after a first one has
// dispatched. fns maps the known functions; a subject of a function not in it counts for
// its own key (a function's, or "<namespace>/<revision>" for a revision's).
func Demand(backlog map[CallsKey]int, fns map[FunctionKey]Function) map[FunctionKey]int {
	out := map[FunctionKey]int{}
	undispatched := map[FunctionKey]int{}
	for k, n := range backlog {
		key := FunctionKey{k.Namespace, k.Name}
		fn, known := fns[key]
		switch {
		case !known && k.Revision != "":
			out[FunctionKey{k.Namespace, k.Revision}] += n
		case !known || len(fn.Traffic) == 0:
			out[key] += n // revision subjects of a function without revisions are moved to its own
		case fn.orphaned(k.Revision) || k.Revision == "":
			undispatched[key] += n
		default:
			out[FunctionKey{k.Namespace, k.Revision}] += n
		}
	}
	for key, n := range undispatched {
		for rev, share := range shares(fns[key].Traffic, n) {
			if share > 0 {
				out[FunctionKey{key.Namespace, rev}] += share
			}
		}
	}
	return out
}

// shares splits n by t's percents with the largest-remainder method: the shares add up to
// n, and ties go to the earlier revision.
func shares(t []contract.RevisionTraffic, n int) map[string]int {
	total := int(contract.TrafficTotal(t))
	out := map[string]int{}
	if total == 0 {
		return out
	}
	type rem struct {
		rev string
		r   int
		i   int
	}
	var rems []rem
	given := 0
	for i, r := range t {
		if r.Percent <= 0 {
			continue
		}
		q := n * int(r.Percent)
		out[r.Revision] += q / total
		given += q / total
		rems = append(rems, rem{r.Revision, q % total, i})
	}
	slices.SortStableFunc(rems, func(a, b rem) int { return b.r - a.r })
	for i := 0; given < n && i < len(rems); i++ {
		out[rems[i].rev]++
		given++
	}
	return out
}

// MaxMovesPerPoll bounds the calls the manager moves off revisions without traffic in one
// poll (each is one publish round trip), so a large backlog moves over a few polls
// without delaying the backlog reports.
const MaxMovesPerPoll = 1000

// DispatchJS is what moving calls needs: the stream, the revision's consumer (made if
// missing) and publishing.
type DispatchJS interface {
	StreamGetter
	Consumer(ctx context.Context, stream, name string) (jetstream.Consumer, error)
	CreateOrUpdateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error)
	PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error)
}

// MoveOrphans moves the calls waiting on revisions that lost their traffic (or were
// removed) to a revision the split draws now, or to the function's own subject when it
// serves no revisions any more, at most limit of them; it returns how many it moved. Such
// a revision may have no pod left to do it (it is at zero, or deleted), and waking it only
// to pass its calls on would be a cold start for nothing. Each copy is stored before its
// original is acked, with contract.DispatchMsgID, as the sidecars dispatch. Calls a pod
// is running or retrying are not touched: they are not delivered until settled.
func MoveOrphans(ctx context.Context, js DispatchJS, backlog map[CallsKey]int, fns map[FunctionKey]Function, limit int) (int, error) {
	keys := make([]CallsKey, 0, len(backlog))
	for k := range backlog {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b CallsKey) int {
		return strings.Compare(a.Namespace+"/"+a.Name+"/"+a.Revision, b.Namespace+"/"+b.Name+"/"+b.Revision)
	})
	moved := 0
	var errs []error
	for _, k := range keys {
		fn, known := fns[FunctionKey{k.Namespace, k.Name}]
		if !known || !fn.orphaned(k.Revision) || moved >= limit {
			continue
		}
		n, err := moveRevision(ctx, js, fn, k.Revision, min(backlog[k], limit-moved))
		moved += n
		if err != nil {
			errs = append(errs, fmt.Errorf("moving the calls of revision %s of function %s/%s: %w", k.Revision, k.Namespace, k.Name, err))
		}
	}
	return moved, errors.Join(errs...)
}

func moveRevision(ctx context.Context, js DispatchJS, fn Function, rev string, n int) (int, error) {
	cfg := RevisionConsumerConfig(fn.FunctionKey, rev)
	cons, err := js.Consumer(ctx, contract.CallsStream, cfg.Durable)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		cons, err = js.CreateOrUpdateConsumer(ctx, contract.CallsStream, cfg)
	}
	if err != nil {
		return 0, err
	}
	batch, err := cons.FetchNoWait(n)
	if err != nil {
		return 0, err
	}
	moved := 0
	var lastErr error
	for msg := range batch.Messages() {
		if err := moveOne(ctx, js, fn, msg); err != nil {
			lastErr = err
			_ = msg.NakWithDelay(time.Second)
			continue
		}
		moved++
	}
	if lastErr == nil {
		lastErr = batch.Error()
	}
	return moved, lastErr
}

// moveOne republishes one call where the split sends it now and acks the original.
func moveOne(ctx context.Context, js DispatchJS, fn Function, msg jetstream.Msg) error {
	meta, err := msg.Metadata()
	if err != nil {
		return err
	}
	h := nats.Header{}
	for k, vs := range msg.Headers() {
		h[k] = append([]string(nil), vs...)
	}
	prior, _ := strconv.Atoi(h.Get(contract.HeaderPriorAttempts))
	prior = min(max(prior, 0), contract.MaxAsyncAttempts) + int(meta.NumDelivered) - 1
	h.Del(contract.HeaderPriorAttempts)
	if prior > 0 {
		h.Set(contract.HeaderPriorAttempts, strconv.Itoa(prior))
	}
	id := h.Get("X-Call-Id")
	if id == "" {
		id = "call"
	}
	h.Set(nats.MsgIdHdr, contract.DispatchMsgID(id, meta.Sequence.Stream))
	subject := contract.CallsSubject(fn.Namespace, fn.Name)
	if total := contract.TrafficTotal(fn.Traffic); total > 0 {
		subject = contract.RevisionCallsSubject(fn.Namespace, fn.Name, contract.PickRevision(fn.Traffic, rand.Uint32N(total)))
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := js.PublishMsg(pctx, &nats.Msg{Subject: subject, Header: h, Data: msg.Data()}); err != nil {
		return err
	}
	return msg.Ack()
}

// SyncConsumers makes the consumer of every function in fns and of each revision it keeps
// that WEFT_CALLS lacks, and deletes the consumers of revisions of those functions that are
// no longer kept once nothing waits on their subjects (backlog: Backlog's answer). It
// returns how many it made and deleted. Consumers of functions not in fns are left alone.
func SyncConsumers(ctx context.Context, js StreamGetter, fns []Function, backlog map[CallsKey]int) (made, deleted int, err error) {
	s, err := js.Stream(ctx, contract.CallsStream)
	if err != nil {
		return 0, 0, fmt.Errorf("looking up stream %s: %w", contract.CallsStream, err)
	}
	have := map[string]bool{}
	names := s.ConsumerNames(ctx)
	for n := range names.Name() {
		have[n] = true
	}
	if err := names.Err(); err != nil {
		return 0, 0, fmt.Errorf("listing the consumers of %s: %w", contract.CallsStream, err)
	}
	want := map[string]bool{}
	byPrefix := map[string]bool{} // consumer name prefixes of the functions in fns
	for _, fn := range fns {
		cfgs := []jetstream.ConsumerConfig{ConsumerConfig(fn.FunctionKey)}
		for _, rev := range fn.Revisions {
			cfgs = append(cfgs, RevisionConsumerConfig(fn.FunctionKey, rev))
		}
		byPrefix[contract.ConsumerName(fn.Namespace, fn.Name)+"_"] = true
		for _, cfg := range cfgs {
			want[cfg.Durable] = true
			if have[cfg.Durable] {
				continue
			}
			if _, err := s.CreateOrUpdateConsumer(ctx, cfg); err != nil {
				return made, deleted, fmt.Errorf("creating consumer %s of function %s/%s: %w", cfg.Durable, fn.Namespace, fn.Name, err)
			}
			made++
		}
	}
	for name := range have {
		parts := strings.Split(name, "_")
		if want[name] || len(parts) != 4 || parts[0] != "weft" || !byPrefix["weft_"+parts[1]+"_"+parts[2]+"_"] {
			continue
		}
		if backlog[CallsKey{parts[1], parts[2], parts[3]}] > 0 {
			continue // MoveOrphans moves them first
		}
		if err := s.DeleteConsumer(ctx, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return made, deleted, fmt.Errorf("deleting consumer %s of a removed revision: %w", name, err)
		}
		deleted++
	}
	return made, deleted, nil
}
