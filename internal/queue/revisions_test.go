package queue_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/queue"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
)

func traffic(kv ...any) []contract.RevisionTraffic {
	var out []contract.RevisionTraffic
	for i := 0; i < len(kv); i += 2 {
		out = append(out, contract.RevisionTraffic{Revision: kv[i].(string), Percent: int32(kv[i+1].(int))})
	}
	return out
}

// TestDemandSharesBacklog: undispatched calls of a function with revisions are shared by
// percent and add up (one call wakes one revision); calls dispatched to a revision count
// for it, unless it lost its traffic (they will be moved, so they are shared too).
func TestDemandSharesBacklog(t *testing.T) {
	fk := func(ns, n string) queue.FunctionKey { return queue.FunctionKey{Namespace: ns, Name: n} }
	fns := map[queue.FunctionKey]queue.Function{
		fk("p", "split"): {FunctionKey: fk("p", "split"), Revisions: []string{"s-1", "s-2", "s-3"}, Traffic: traffic("s-1", 90, "s-2", 10)},
		fk("p", "plain"): {FunctionKey: fk("p", "plain")},
	}
	for _, tc := range []struct {
		name    string
		backlog map[queue.CallsKey]int
		want    map[queue.FunctionKey]int
	}{
		{"one call wakes one revision", map[queue.CallsKey]int{{"p", "split", ""}: 1}, map[queue.FunctionKey]int{fk("p", "s-1"): 1}},
		{"shared 90/10", map[queue.CallsKey]int{{"p", "split", ""}: 100}, map[queue.FunctionKey]int{fk("p", "s-1"): 90, fk("p", "s-2"): 10}},
		{"largest remainder", map[queue.CallsKey]int{{"p", "split", ""}: 15}, map[queue.FunctionKey]int{fk("p", "s-1"): 14, fk("p", "s-2"): 1}},
		{"dispatched count for their revision", map[queue.CallsKey]int{{"p", "split", "s-2"}: 7}, map[queue.FunctionKey]int{fk("p", "s-2"): 7}},
		{"a revision at 0 % is shared", map[queue.CallsKey]int{{"p", "split", "s-3"}: 10, {"p", "split", "gone"}: 10}, map[queue.FunctionKey]int{fk("p", "s-1"): 18, fk("p", "s-2"): 2}},
		{"no revisions: own key, revision subjects too", map[queue.CallsKey]int{{"p", "plain", ""}: 3, {"p", "plain", "old"}: 2}, map[queue.FunctionKey]int{fk("p", "plain"): 5}},
		{"unknown function", map[queue.CallsKey]int{{"x", "f", ""}: 3, {"x", "f", "f-1"}: 2}, map[queue.FunctionKey]int{fk("x", "f"): 3, fk("x", "f-1"): 2}},
	} {
		if d := cmp.Diff(tc.want, queue.Demand(tc.backlog, fns)); d != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, d)
		}
	}
}

// A revision's identity pulls its function's calls and its own revision's, and dispatches
// to its function's revisions; it cannot pull another revision's calls. A caller may
// publish to a function's subject but not straight to a revision's (skipping the split and
// weft.dev/async-callers).
func TestRevisionIdentityPermissions(t *testing.T) {
	f := newQueueFixture(t, queue.CallPolicyFunc(func() (map[queue.FunctionKey][]string, error) {
		return map[queue.FunctionKey][]string{{Namespace: "mq", Name: "a"}: {"ops"}}, nil
	}))
	ctx := context.Background()
	a := queue.Function{FunctionKey: queue.FunctionKey{Namespace: "mq", Name: "a"}, Revisions: []string{"a-1", "a-2"}, Traffic: traffic("a-1", 50, "a-2", 50)}
	if made, _, err := queue.SyncConsumers(ctx, f.admin, []queue.Function{a}, nil); err != nil || made != 2 {
		t.Fatalf("SyncConsumers made %d, %v; want the 2 revisions' consumers", made, err)
	}
	r1 := f.as(t, queue.RevisionIdentity("mq", "a", "a-1"))
	for _, subj := range []string{contract.CallsSubject("mq", "a"), contract.RevisionCallsSubject("mq", "a", "a-1"), contract.RevisionCallsSubject("mq", "a", "a-2")} {
		if _, err := r1.js.Publish(ctx, subj, []byte(subj)); err != nil {
			t.Fatalf("revision a-1 publishing to %s: %v", subj, err)
		}
	}
	r1.quiet(t, "revision a-1 publishing to its function and its revisions")
	if got := pullOne(t, r1, "mq", "a"); got != contract.CallsSubject("mq", "a") {
		t.Errorf("pulled %q from the function's consumer", got)
	}
	pullFrom := func(p *peer, durable string) (string, error) {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		cons, err := p.js.Consumer(cctx, contract.CallsStream, durable)
		if err != nil {
			return "", err
		}
		b, err := cons.Fetch(1, jetstream.FetchMaxWait(3*time.Second))
		if err != nil {
			return "", err
		}
		m, ok := <-b.Messages()
		if !ok {
			return "", b.Error()
		}
		if err := m.DoubleAck(cctx); err != nil {
			return "", err
		}
		return string(m.Data()), nil
	}
	if got, err := pullFrom(r1, contract.RevisionConsumerName("mq", "a", "a-1")); err != nil || got != contract.RevisionCallsSubject("mq", "a", "a-1") {
		t.Errorf("revision a-1 pulling its own revision's consumer: %q, %v", got, err)
	}
	if _, err := pullFrom(r1, contract.RevisionConsumerName("mq", "a", "a-2")); err == nil {
		t.Error("revision a-1 pulled revision a-2's calls")
	}
	// The other function's pods, and callers, may not publish to a revision's subject.
	ops := f.as(t, queue.NamespaceIdentity("ops"))
	if _, err := ops.js.Publish(ctx, contract.CallsSubject("mq", "a"), []byte("ok")); err != nil {
		t.Fatalf("an admitted caller publishing to the function: %v", err)
	}
	_ = ops.nc.Publish(contract.RevisionCallsSubject("mq", "a", "a-1"), []byte("skip"))
	ops.violation(t, "a caller publishing to a revision's subject", contract.RevisionCallsSubject("mq", "a", "a-1"))
	b := f.as(t, queue.FunctionIdentity("mq", "b"))
	_ = b.nc.Publish(contract.RevisionCallsSubject("mq", "a", "a-2"), []byte("skip"))
	b.violation(t, "another function publishing to a's revision", contract.RevisionCallsSubject("mq", "a", "a-2"))
	// A refused caller (mq is not in a's weft.dev/async-callers) cannot get around the deny
	// through a revision's subject either.
	mq := f.as(t, queue.NamespaceIdentity("mq"))
	_ = mq.nc.Publish(contract.RevisionCallsSubject("mq", "a", "a-1"), []byte("skip"))
	mq.violation(t, "a refused caller publishing to a revision's subject", contract.RevisionCallsSubject("mq", "a", "a-1"))
}

// TestRevisionRemovedWhileCallsQueued: calls waiting on a revision that was removed from
// the split (and from the kept revisions) are moved by the manager to the revisions the
// split gives traffic, each once, keeping their headers and counting the deliveries they
// had as attempts; the removed revision's consumer is deleted once nothing waits for it.
// A function that serves no revisions any more gets its revisions' calls back on its own
// subject.
func TestRevisionRemovedWhileCallsQueued(t *testing.T) {
	token, _, _ := queue.EnsureToken(nil)
	s := startServer(t, token, t.TempDir())
	js := connect(t, s.ClientURL(), token)
	ctx := context.Background()
	if err := queue.EnsureStreams(ctx, js, queue.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	fk := queue.FunctionKey{Namespace: "p", Name: "f"}
	before := queue.Function{FunctionKey: fk, Revisions: []string{"f-1", "f-2"}, Traffic: traffic("f-1", 50, "f-2", 50)}
	if _, _, err := queue.SyncConsumers(ctx, js, []queue.Function{before}, nil); err != nil {
		t.Fatal(err)
	}
	old := contract.RevisionCallsSubject("p", "f", "f-2")
	for i := range 40 {
		h := nats.Header{"X-Call-Id": {"c" + string(rune('A'+i%26)) + string(rune('a'+i/26))}, "Weft-Method": {"POST"}, "Weft-Uri": {"/"}}
		if _, err := js.PublishMsg(ctx, &nats.Msg{Subject: old, Header: h, Data: []byte{byte(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	// Rollback: f-2 is gone; f-1 and a new f-3 share the traffic.
	after := queue.Function{FunctionKey: fk, Revisions: []string{"f-1", "f-3"}, Traffic: traffic("f-1", 75, "f-3", 25)}
	rec := &sinkRecorder{last: map[queue.FunctionKey]int{}}
	w := &queue.PendingWatcher{JS: js, Dispatch: js, Sink: rec, Functions: fixedFunctions{after}, Interval: 20 * time.Millisecond, Logger: logr.Discard()}
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Start(wctx) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	defer stop()
	count := func(subj string) int {
		m, err := queue.Backlog(ctx, js)
		if err != nil {
			t.Fatal(err)
		}
		_, n, r, _ := contract.ParseCallsSubject(subj)
		return m[queue.CallsKey{Namespace: "p", Name: n, Revision: r}]
	}
	f1, f3 := contract.RevisionCallsSubject("p", "f", "f-1"), contract.RevisionCallsSubject("p", "f", "f-3")
	poll.Until(t, 30*time.Second, func() bool { return count(old) == 0 && count(f1)+count(f3) == 40 }, "the removed revision's 40 calls moved")
	n1, n3 := count(f1), count(f3)
	t.Logf("moved 40 calls off a removed revision: f-1 %d, f-3 %d", n1, n3)
	if n1 == 0 || n3 == 0 || n1 < n3 {
		t.Errorf("moved f-1 %d, f-3 %d; want both, f-1 (75 %%) the larger", n1, n3)
	}
	poll.Until(t, 30*time.Second, func() bool {
		_, err := js.Consumer(ctx, contract.CallsStream, contract.RevisionConsumerName("p", "f", "f-2"))
		return errors.Is(err, jetstream.ErrConsumerNotFound)
	}, "the removed revision's consumer deleted")
	if _, err := js.Consumer(ctx, contract.CallsStream, contract.RevisionConsumerName("p", "f", "f-3")); err != nil {
		t.Errorf("the new revision's consumer: %v", err)
	}
	poll.Until(t, 10*time.Second, func() bool {
		a, _ := rec.get(queue.FunctionKey{Namespace: "p", Name: "f-1"})
		b, _ := rec.get(queue.FunctionKey{Namespace: "p", Name: "f-3"})
		return a == n1 && b == n3
	}, "the autoscaler told each revision its calls")
	// A moved call keeps its headers and data and gets its own message id.
	st, err := js.Stream(ctx, contract.CallsStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(ctx, f1)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get("Weft-Method") != "POST" || m.Header.Get(nats.MsgIdHdr) == "" || m.Header.Get("X-Call-Id") == "" {
		t.Errorf("moved call headers %v", m.Header)
	}
	if m.Header.Get(contract.HeaderPriorAttempts) != "" {
		t.Errorf("a call never delivered before carries %s %q", contract.HeaderPriorAttempts, m.Header.Get(contract.HeaderPriorAttempts))
	}

	// spec.traffic removed: the function serves no revisions; its revisions' calls go back
	// to its own subject, where its single Deployment's pods run them.
	stop()
	plain := queue.Function{FunctionKey: fk}
	moved, err := queue.MoveOrphans(ctx, js, map[queue.CallsKey]int{{"p", "f", "f-1"}: n1, {"p", "f", "f-3"}: n3}, map[queue.FunctionKey]queue.Function{fk: plain}, 10)
	if err != nil || moved != 10 {
		t.Fatalf("MoveOrphans with limit 10 moved %d, %v", moved, err)
	}
	if got := count(contract.CallsSubject("p", "f")); got != 10 {
		t.Errorf("the function's own subject holds %d calls, want the 10 moved (the limit)", got)
	}
}

// fixedFunctions is a FunctionLister of fixed functions.
type fixedFunctions []queue.Function

func (l fixedFunctions) Functions(context.Context) ([]queue.Function, error) { return l, nil }
