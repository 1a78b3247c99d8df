package async_test

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/queue"
	"github.com/weftmesh/weft/sidecar/async"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
)

const (
	rev1 = "orders-00001"
	rev2 = "orders-00002"
)

func split(p1, p2 int32) []contract.RevisionTraffic {
	return []contract.RevisionTraffic{{Revision: rev1, Percent: p1}, {Revision: rev2, Percent: p2}}
}

// revisionPod starts the consumer of one revision's pod on its own NATS connection (so a
// test can cut it) and returns it with its connection.
func revisionPod(t *testing.T, m *mesh, rev, appURL string, cfg async.Config, traffic []contract.RevisionTraffic, tweak func(*async.ConsumerOptions)) (*async.Consumer, *nats.Conn, func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, js, err := queue.Connect(ctx, queue.ClientOptions{URL: m.url, Name: t.Name() + "/" + rev})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	c, stop := startConsumer(t, js, appURL, cfg, func(o *async.ConsumerOptions) {
		o.Revision = rev
		if tweak != nil {
			tweak(o)
		}
	})
	c.SetTraffic(traffic)
	return c, nc, stop
}

// backlog is the number of messages stored on subject.
func backlog(t *testing.T, js jetstream.JetStream, subject string) int {
	t.Helper()
	s, err := js.Stream(context.Background(), contract.CallsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background(), jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	return int(info.State.Subjects[subject])
}

// publishCalls queues n calls to fnA through a caller's Publisher and returns their ids.
func publishCalls(t *testing.T, m *mesh, cfg async.Config, n int) map[string]bool {
	t.Helper()
	srv := caller(t, m.js, cfg, async.PublisherOptions{})
	ids := map[string]bool{}
	for i := range n {
		status, id, body := callAsync(t, srv.URL+"/orders/"+strconv.Itoa(i), "p", nil)
		if status != http.StatusAccepted {
			t.Fatalf("call %d: %d %s", i, status, body)
		}
		ids[id] = true
	}
	return ids
}

// callIDs counts the call ids an app ran, failing on one it ran twice.
func callIDs(t *testing.T, recs ...*recorder) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, r := range recs {
		for _, q := range r.all() {
			id := q.header.Get(async.HeaderCallID)
			out[id]++
			if out[id] > 1 {
				t.Errorf("call %s ran %d times", id, out[id])
			}
		}
	}
	return out
}

// TestDispatchFollowsSplit: 1,000 calls queued to a function split 90/10 between two
// revisions run on the first revision's app 850..950 times (±5 points; the binomial
// standard deviation is 9.5 calls) and on the second's for the rest, each call once.
func TestDispatchFollowsSplit(t *testing.T) {
	m := newMesh(t)
	cfg := fastConfig()
	cfg.MaxInflight = 50
	app1, app2 := newRecorder(t, ok), newRecorder(t, ok)
	c1, _, _ := revisionPod(t, m, rev1, app1.URL, cfg, split(90, 10), nil)
	revisionPod(t, m, rev2, app2.URL, cfg, split(90, 10), nil)
	const n = 1000
	ids := publishCalls(t, m, cfg, n)
	poll.Until(t, 120*time.Second, func() bool { return app1.count()+app2.count() >= n }, "1,000 calls run")
	ran := callIDs(t, app1, app2)
	for id := range ids {
		if ran[id] != 1 {
			t.Errorf("call %s ran %d times, want once", id, ran[id])
		}
	}
	n1, n2 := app1.count(), app2.count()
	t.Logf("90/10 over %d queued calls: %s %d, %s %d", n, rev1, n1, rev2, n2)
	if n1 < 850 || n1 > 950 || n1+n2 != n {
		t.Errorf("split %d/%d, want %s in 850..950 of %d", n1, n2, rev1, n)
	}
	if b := backlog(t, m.js, contract.CallsPrefix+">"); b != 0 {
		t.Errorf("%d messages left in %s, want none", b, contract.CallsStream)
	}
	if s := metrics(c1); !strings.Contains(s, `weft_async_dispatched_total{function="default/orders",from="function"}`) {
		t.Errorf("metrics lack the dispatch counter:\n%s", s)
	}
}

// TestRollbackMovesQueuedCalls: calls dispatched to a revision that is at zero wait on its
// subject; when the split is rolled back to the other revision before they run, the
// revision's pod that comes up dispatches them again, and every call runs on the revision
// that has the traffic now.
func TestRollbackMovesQueuedCalls(t *testing.T) {
	m := newMesh(t)
	cfg := fastConfig()
	app1, app2 := newRecorder(t, ok), newRecorder(t, ok)
	// Only revision 1 runs; the split sends every call to revision 2, at zero.
	c1, _, _ := revisionPod(t, m, rev1, app1.URL, cfg, split(0, 100), nil)
	ids := publishCalls(t, m, cfg, 100)
	rs := contract.RevisionCallsSubject(fnA.Namespace, fnA.Name, rev2)
	poll.Until(t, 30*time.Second, func() bool { return backlog(t, m.js, rs) == 100 }, "100 calls dispatched to revision 2")
	if app1.count() != 0 {
		t.Fatalf("revision 1 ran %d calls while the split gave it none", app1.count())
	}
	// Rollback: revision 2 loses its traffic. Its pod starts (the backlog woke it) with
	// the new split and must run none of the calls waiting for it.
	c1.SetTraffic(split(100, 0))
	c2, _, _ := revisionPod(t, m, rev2, app2.URL, cfg, split(100, 0), nil)
	poll.Until(t, 60*time.Second, func() bool { return app1.count() >= 100 }, "100 calls run on revision 1")
	if n := app2.count(); n != 0 {
		t.Errorf("revision 2 ran %d calls after losing its traffic, want 0", n)
	}
	ran := callIDs(t, app1)
	for id := range ids {
		if ran[id] != 1 {
			t.Errorf("call %s ran %d times on revision 1, want once", id, ran[id])
		}
	}
	waitMetrics(t, c2, `weft_async_dispatched_total{function="default/orders",from="revision"} 100`)
}

// TestDispatcherKilledBeforeAck: a dispatcher whose connection dies after JetStream stored
// the copy and before it acked the original loses nothing, and the original's redelivery
// (after AckWait) to another pod is dropped by JetStream as a duplicate, so each call is
// on the revision once: exactly once within the stream's duplicates window (10 min).
func TestDispatcherKilledBeforeAck(t *testing.T) {
	m := newMesh(t)
	cfg := fastConfig()
	fast := func(o *async.ConsumerOptions) { o.AckWait, o.FetchWait = time.Second, 500*time.Millisecond }
	app1, app2 := newRecorder(t, ok), newRecorder(t, ok)
	var killed sync.Once
	died := make(chan struct{})
	c1, nc1, stop1 := revisionPod(t, m, rev1, app1.URL, cfg, split(0, 100), fast)
	async.SetBeforeAck(c1, func(jetstream.Msg) {
		killed.Do(func() { nc1.Close(); close(died) })
	})
	ids := publishCalls(t, m, cfg, 5)
	select {
	case <-died:
	case <-time.After(30 * time.Second):
		t.Fatal("the dispatcher never reached the ack")
	}
	stop1()
	rs := contract.RevisionCallsSubject(fnA.Namespace, fnA.Name, rev2)
	fs := contract.CallsSubject(fnA.Namespace, fnA.Name)
	// A second pod of revision 1 takes over (dispatcher only: the split gives it nothing).
	revisionPod(t, m, rev1, app1.URL, cfg, split(0, 100), fast)
	poll.Until(t, 30*time.Second, func() bool { return backlog(t, m.js, fs) == 0 }, "the function's queue drained")
	if got := backlog(t, m.js, rs); got != 5 {
		t.Fatalf("revision 2 holds %d copies of 5 calls, want exactly 5 (a lost or doubled dispatch)", got)
	}
	revisionPod(t, m, rev2, app2.URL, cfg, split(0, 100), fast)
	poll.Until(t, 30*time.Second, func() bool { return app2.count() >= 5 }, "5 calls run on revision 2")
	time.Sleep(1500 * time.Millisecond) // a duplicate would be run by now
	ran := callIDs(t, app2)
	if len(ran) != 5 || app1.count() != 0 {
		t.Errorf("revision 2 ran %v, revision 1 ran %d; want the 5 calls once each on revision 2", ran, app1.count())
	}
	for id := range ids {
		if ran[id] != 1 {
			t.Errorf("call %s ran %d times", id, ran[id])
		}
	}
}

// TestDispatchForgedAndOversized: a message on the function's subject that no sidecar
// published (no request line) is dead-lettered by the dispatcher instead of travelling on;
// one with a body over the async limit (which no caller's sidecar publishes) is dropped; a
// caller's forged Weft-Prior-Attempts is not believed (the call still gets its attempts).
func TestDispatchForgedAndOversized(t *testing.T) {
	m := newMesh(t)
	cfg := fastConfig()
	var mu sync.Mutex
	seen := map[string]int{}
	app := newRecorder(t, func(w http.ResponseWriter, r *http.Request, _ string) {
		mu.Lock()
		seen[r.Header.Get(async.HeaderCallID)]++
		n := seen[r.Header.Get(async.HeaderCallID)]
		mu.Unlock()
		if n == 1 {
			w.WriteHeader(http.StatusServiceUnavailable) // retried: maxAttempts 3
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	// A message the server delivers as a pull's client deadline passes is dropped by the
	// client and redelivered only after AckWait (30 s by default): under -race, receiving the
	// 8 MiB message can take that long, and "prior" came in the same pull. A short AckWait
	// keeps the test about what it checks.
	revisionPod(t, m, rev1, app.URL, cfg, split(100, 0), func(o *async.ConsumerOptions) { o.AckWait = 3 * time.Second })
	ctx := context.Background()
	fs := contract.CallsSubject(fnA.Namespace, fnA.Name)
	if _, err := m.js.PublishMsg(ctx, &nats.Msg{Subject: fs, Header: nats.Header{async.HeaderCallID: {"forged"}}, Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, contract.MaxAsyncBodySize+1)
	h := nats.Header{async.HeaderCallID: {"big"}, "Weft-Method": {"POST"}, "Weft-Uri": {"/"}}
	if _, err := m.js.PublishMsg(ctx, &nats.Msg{Subject: fs, Header: h, Data: big}); err != nil {
		t.Fatal(err)
	}
	h = nats.Header{async.HeaderCallID: {"prior"}, "Weft-Method": {"POST"}, "Weft-Uri": {"/"}, contract.HeaderPriorAttempts: {"99"}}
	if _, err := m.js.PublishMsg(ctx, &nats.Msg{Subject: fs, Header: h, Data: []byte("p")}); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return seen["prior"] >= 2 }, "the call with a forged prior-attempts header retried")
	poll.Until(t, 30*time.Second, func() bool { return backlog(t, m.js, contract.CallsPrefix+">") == 0 }, "the calls stream drained")
	mu.Lock()
	if seen["forged"] != 0 || seen["big"] != 0 || seen["prior"] != 2 {
		t.Errorf("app saw %v; want the forged and oversized messages never run, and the call whose header claimed 99 attempts run twice (503, then 200)", seen)
	}
	mu.Unlock()
	dead, err := m.js.Stream(ctx, contract.DeadStream)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := dead.GetLastMsgForSubject(ctx, contract.DeadSubject(fnA.Namespace, fnA.Name))
	if err != nil {
		t.Fatalf("the forged message was not dead-lettered: %v", err)
	}
	if msg.Header.Get(async.HeaderCallID) != "forged" || !strings.Contains(msg.Header.Get(async.HeaderDeadReason), "no request line") {
		t.Errorf("dead letter %v, want the forged message with its reason", msg.Header)
	}
}
