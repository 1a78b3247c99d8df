package async_test

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/async"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
)

func TestSidecarStartedBeforeNATSCatchesUp(t *testing.T) {
	// Reserve a loopback port, free it, and start NATS there only after the sidecar is up.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	nc, js, err := async.Dial(contract.QueueMeta{URL: "nats://" + addr}, t.Name(), nil)
	if err != nil {
		t.Fatalf("Dial with NATS down must not fail: %v", err)
	}
	defer nc.Close()
	cfg := fastConfig()
	app := newRecorder(t, ok)
	runConsumer(t, js, app.URL, cfg, nil) // keeps retrying its durable consumer meanwhile

	srv := caller(t, js, cfg, async.PublisherOptions{})
	if status, _, body := callAsync(t, srv.URL, "early", nil); status != http.StatusServiceUnavailable || !strings.Contains(body, "not connected to NATS") {
		t.Errorf("publish with NATS down: %d %q; want 503 saying the sidecar is not connected", status, body)
	}
	newMeshAt(t, addr)
	var status int
	var id string
	poll.Until(t, 90*time.Second, func() bool {
		status, id, _ = callAsync(t, srv.URL, "late", nil)
		return status == http.StatusAccepted
	}, "waiting for the sidecar's publish to succeed after NATS came up")
	poll.Until(t, 90*time.Second, func() bool { return app.count() >= 1 }, "waiting for the call to run")
	if got := app.all()[0].header.Get(async.HeaderCallID); got != id {
		t.Errorf("app ran call %s, want %s", got, id)
	}
}

func TestConsumerRecreatesItsDurableWhenDeleted(t *testing.T) {
	m := newMesh(t)
	cfg := fastConfig()
	app := newRecorder(t, ok)
	runConsumer(t, m.js, app.URL, cfg, func(o *async.ConsumerOptions) { o.FetchWait = 500 * time.Millisecond })
	srv := caller(t, m.js, cfg, async.PublisherOptions{})
	callAsync(t, srv.URL, "before", nil)
	poll.Until(t, 90*time.Second, func() bool { return app.count() >= 1 }, "waiting for the first call")

	if err := m.js.DeleteConsumer(context.Background(), "WEFT_CALLS", async.DurableName(fnA)); err != nil {
		t.Fatal(err)
	}
	callAsync(t, srv.URL, "after", nil)
	poll.Until(t, 90*time.Second, func() bool { return app.count() >= 2 }, "waiting for the call queued after the consumer was deleted")
}
