package xds

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats.go"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/queue"
	"github.com/weftmesh/weft/internal/snapshot"
	"github.com/weftmesh/weft/sidecar/async"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
	"github.com/weftmesh/weft/sidecar/xdsclient"
)

// natsServer runs the manager's embedded NATS with key until the test ends.
func natsServer(t *testing.T, key string) *queue.Server {
	t.Helper()
	s, err := queue.NewServer(queue.ServerOptions{Listen: "127.0.0.1:-1", StoreDir: t.TempDir(), Key: key, Logger: logr.Discard()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = s.Start(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	<-s.Ready()
	return s
}

// The queue credential a sidecar's xDS client assembles from its SDS secret is the one the
// real NATS server takes: the async client (async.Dial, as cmd/sidecar uses it) connects
// with it. After the key rotates, the sidecar receives the new password over SDS, connects
// with it, and the old one is refused.
func TestQueueCredentialOverSDSAgainstRealNATS(t *testing.T) {
	key1, _, _ := queue.EnsureToken(nil)
	key2, _, _ := queue.EnsureToken(nil)
	s1, s2 := natsServer(t, key1), natsServer(t, key2)
	in := input("10.0.0.1")
	in.MeshFunctions = []meshv1alpha1.MeshFunction{{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "fn", Generation: 1},
		Spec: meshv1alpha1.MeshFunctionSpec{Port: 8080}}}
	translate := func(url, key string) *snapshot.Result {
		q, err := snapshot.NewQueue(url, queue.NewCredentials(key).ForView)
		if err != nil {
			t.Fatal(err)
		}
		in.Queue = q
		return snapshot.Translate(in)
	}
	c := NewCache()
	ctx := context.Background()
	if err := c.SetResult(ctx, translate(s1.ClientURL(), key1)); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, c)
	cl := xdsclient.New(xdsclient.Options{Address: s.Addr().String(), Node: node("productpage-1", "default", 0),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = cl.Run(cctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	// queueAt waits for the queue at url with a password other than notPassword: the new
	// cluster may apply with the previous secret for a moment (CDS and SDS are separate
	// responses, as in Envoy); the secret follows.
	queueAt := func(url, notPassword string) contract.QueueMeta {
		t.Helper()
		var q contract.QueueMeta
		poll.Until(t, 10*time.Second, func() bool {
			cfg := cl.Current()
			if cfg == nil || cfg.Clusters[contract.QueueClusterName] == nil {
				return false
			}
			q = *cfg.Clusters[contract.QueueClusterName].Queue
			return q.URL == url && q.Password != notPassword
		}, "waiting for the queue at "+url)
		return q
	}
	dial := func(q contract.QueueMeta) *nats.Conn {
		t.Helper()
		nc, _, err := async.Dial(q, t.Name(), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	old := queueAt(s1.ClientURL(), "")
	if old.User != "ns.default" || old.Password == "" {
		t.Fatalf("caller's credential %q/%t, want user ns.default with a password", old.User, old.Password != "")
	}
	nc := dial(old)
	poll.Until(t, 10*time.Second, nc.IsConnected, "the sidecar's credential from SDS was not accepted by NATS")

	if err := c.SetResult(ctx, translate(s2.ClientURL(), key2)); err != nil {
		t.Fatal(err)
	}
	rotated := queueAt(s2.ClientURL(), old.Password)
	nc2 := dial(rotated)
	poll.Until(t, 10*time.Second, nc2.IsConnected, "the rotated credential from SDS was not accepted by NATS")
	stale := old
	stale.URL = s2.ClientURL()
	nc3 := dial(stale)
	poll.Until(t, 10*time.Second, func() bool {
		err := nc3.LastError()
		return err != nil && strings.Contains(strings.ToLower(err.Error()), "authorization")
	}, "the old password was not refused after the rotation")
	if nc3.IsConnected() {
		t.Fatal("connected with the old password after the rotation")
	}
}
