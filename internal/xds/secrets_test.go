package xds

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/snapshot"
	sidecaradmin "github.com/weftmesh/weft/sidecar/admin"
	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/redisproxy"
	"github.com/weftmesh/weft/sidecar/redisproxy/redistest"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
	"github.com/weftmesh/weft/sidecar/xdsclient"
)

// typesWithoutSecrets are the types a view that holds no secret is sent: the tests whose
// views have no Redis password and no queue credential wait for these.
var typesWithoutSecrets = []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType}

// redisPoolInput is input() plus a RedisProxy default/cache for app=productpage in front
// of server, with client password down and server password up from Secret redis-auth.
func redisPoolInput(server, down, up string) *snapshot.Input {
	in := input("10.0.0.1")
	in.RedisProxies = []meshv1alpha1.RedisProxy{{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "cache", Generation: 1},
		Spec: meshv1alpha1.RedisProxySpec{
			WorkloadSelector: &meshv1alpha1.WorkloadSelector{Labels: map[string]string{"app": "productpage"}},
			Listener:         meshv1alpha1.RedisListener{Address: "127.0.0.1", Port: 6399},
			Servers:          []meshv1alpha1.RedisServer{{Name: "r0", Address: server}},
			Auth: &meshv1alpha1.RedisAuth{
				Downstream: &meshv1alpha1.RedisCredentials{PasswordSecretRef: meshv1alpha1.SecretKeyRef{Name: "redis-auth", Key: "client"}},
				Upstream:   &meshv1alpha1.RedisCredentials{PasswordSecretRef: meshv1alpha1.SecretKeyRef{Name: "redis-auth", Key: "server"}},
			},
		},
	}}
	in.Secrets = []corev1.Secret{{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "redis-auth"},
		Data: map[string][]byte{"client": []byte(down), "server": []byte(up)}}}
	return in
}

// lockedBuffer is a log sink the client's goroutine writes while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A rotated Redis password reaches a running sidecar's Redis proxy over SDS, without a
// restart: the server's password (requirepass changed on a real redis-server) is used by
// the proxy's new upstream connections, the client password by the next AUTH, and a client
// that authenticated before stays connected and served. Only SDS moves; the listener and
// cluster keep their versions. No password shows in the client's logs or status.
func TestRedisPasswordRotationOverSDS(t *testing.T) {
	const down1, up1, down2, up2 = "client-pw-one", "server-pw-one", "client-pw-two", "server-pw-two"
	srv := redistest.StartRedis(t, 1, "--requirepass", up1)[0]
	c := NewCache()
	ctx := context.Background()
	if err := c.SetResult(ctx, snapshot.Translate(redisPoolInput(srv.Addr, down1, up1))); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, c)
	n := node("productpage-1", "default", 0)
	v := snapshot.ViewFromNode(n)

	var mu sync.Mutex
	var proxy *redisproxy.Proxy
	var applied *config.Config
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	apply := func(cfg *config.Config) {
		mu.Lock()
		defer mu.Unlock()
		applied = cfg
		if len(cfg.RedisListeners) != 1 {
			return
		}
		pc := cfg.RedisListeners[0].Decoded
		if proxy == nil {
			p, err := redisproxy.New(pc)
			if err != nil {
				t.Errorf("starting the proxy: %v", err)
				return
			}
			proxy = p
			go func() { _ = p.Serve(ln) }()
			return
		}
		if err := proxy.Update(pc); err != nil {
			t.Errorf("updating the proxy: %v", err)
		}
	}
	logs := &lockedBuffer{}
	cl := xdsclient.New(xdsclient.Options{Address: s.Addr().String(), Node: n, Applier: xdsclient.ApplierFunc(apply),
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = cl.Run(cctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		mu.Lock()
		if proxy != nil {
			_ = proxy.Shutdown(context.Background())
		}
		mu.Unlock()
	})
	running := func() bool { mu.Lock(); defer mu.Unlock(); return proxy != nil }
	poll.Until(t, 10*time.Second, running, "waiting for the sidecar's Redis proxy")

	old := redistest.Dial(t, ln.Addr().String())
	expectReply(t, old, "-NOAUTH", "GET", "k")
	expectReply(t, old, "+OK", "AUTH", down1)
	expectReply(t, old, "+OK", "SET", "k", "v1")
	before := c.Versions(v)

	// Rotate: the server takes only the new password, the Secret holds both new ones.
	admin := redistest.Dial(t, srv.Addr)
	expectReply(t, admin, "+OK", "AUTH", up1)
	expectReply(t, admin, "+OK", "CONFIG", "SET", "requirepass", up2)
	if err := c.SetResult(ctx, snapshot.Translate(redisPoolInput(srv.Addr, down2, up2))); err != nil {
		t.Fatal(err)
	}
	after := c.Versions(v)
	for _, ty := range typesWithoutSecrets {
		if before[ty] != after[ty] {
			t.Errorf("%s version changed with only the passwords: %s → %s", ty, before[ty], after[ty])
		}
	}
	if before[resourcev3.SecretType] == "" || before[resourcev3.SecretType] == after[resourcev3.SecretType] {
		t.Fatalf("SDS versions %q → %q: the rotation is not pushed", before[resourcev3.SecretType], after[resourcev3.SecretType])
	}
	poll.Until(t, 10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return applied.Versions[resourcev3.SecretType] == after[resourcev3.SecretType]
	}, "waiting for the rotated secrets to apply")

	// Old connections of Redis itself keep their authentication: kill them so only
	// connections the proxy opens from now on, with the password it holds, can serve.
	_, _ = admin.Do("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
	fresh := redistest.Dial(t, ln.Addr().String())
	expectReply(t, fresh, "-WRONGPASS", "AUTH", down1)
	expectReply(t, fresh, "+OK", "AUTH", down2)
	poll.Until(t, 10*time.Second, func() bool {
		r, err := fresh.Do("GET", "k")
		return err == nil && strings.Contains(r, "v1")
	}, "a new client never read through the proxy's new upstream connection")
	expectReply(t, old, "+OK", "SET", "k", "v2") // authenticated before the rotation, still served
	expectReply(t, fresh, "$2\r\nv2", "GET", "k")

	// The sidecar's /config_dump lists the secrets by name, values redacted.
	adm := httptest.NewServer(sidecaradmin.New(sidecaradmin.Options{Config: cl.Current, Status: func() any { return cl.Status() }}).Handler())
	defer adm.Close()
	resp, err := http.Get(adm.URL + "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	dump, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(dump), contract.RedisUpstreamSecretName("default", "cache")) {
		t.Errorf("the sidecar's /config_dump does not list the pool's secrets:\n%s", dump)
	}
	for _, pw := range []string{down1, up1, down2, up2} {
		if strings.Contains(logs.String(), pw) || strings.Contains(fmt.Sprintf("%+v", cl.Status()), pw) {
			t.Errorf("password %q shows in the client's logs or status", pw)
		}
		if strings.Contains(string(dump), pw) || strings.Contains(string(dump), base64.StdEncoding.EncodeToString([]byte(pw))) {
			t.Errorf("password %q shows in the sidecar's /config_dump", pw)
		}
	}
}

func expectReply(t *testing.T, c *redistest.Client, prefix string, args ...string) {
	t.Helper()
	got, err := c.Do(args...)
	if err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	if !strings.HasPrefix(got, prefix) {
		t.Fatalf("%v = %q, want %q…", args, got, prefix)
	}
}

// Two sidecars of different queue identities, each with the sidecar's own xDS client over
// real gRPC, get different queue credentials: the function's pod its function's, a caller
// its namespace's; neither holds the other's secret. A rotated key reaches both over SDS
// while their clusters keep their versions.
func TestQueueCredentialPerIdentityOverSDS(t *testing.T) {
	var key sync.Mutex
	generation := "k1"
	cred := func(ns, fn string) contract.QueueMeta {
		key.Lock()
		defer key.Unlock()
		user := "ns." + ns
		if fn != "" {
			user = "fn." + ns + "." + fn
		}
		return contract.QueueMeta{User: user, Password: generation + "-" + user}
	}
	q, err := snapshot.NewQueue("nats://127.0.0.1:4222", cred)
	if err != nil {
		t.Fatal(err)
	}
	in := input("10.0.0.1")
	in.MeshFunctions = []meshv1alpha1.MeshFunction{{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "fn", Generation: 1},
		Spec: meshv1alpha1.MeshFunctionSpec{Port: 8080}}}
	in.Queue = q
	c := NewCache()
	ctx := context.Background()
	if err := c.SetResult(ctx, snapshot.Translate(in)); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, c)
	fnMD, err := structpb.NewStruct(map[string]any{"namespace": "default", "function": "default/fn", "appPort": float64(8080)})
	if err != nil {
		t.Fatal(err)
	}
	nodes := map[string]*corev3.Node{"caller": node("productpage-1", "default", 0), "function": {Id: "fn-1.default", Metadata: fnMD}}
	clients := map[string]*xdsclient.Client{}
	for name, n := range nodes {
		cl := xdsclient.New(xdsclient.Options{Address: s.Addr().String(), Node: n, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { _ = cl.Run(cctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		clients[name] = cl
	}
	queueOf := func(name string) *contract.QueueMeta {
		cfg := clients[name].Current()
		if cfg == nil || cfg.Clusters[contract.QueueClusterName] == nil {
			return nil
		}
		return cfg.Clusters[contract.QueueClusterName].Queue
	}
	want := func(gen string) map[string]string {
		return map[string]string{"caller": gen + "-ns.default", "function": gen + "-fn.default.fn"}
	}
	check := func(gen string) {
		t.Helper()
		for name, pw := range want(gen) {
			poll.Until(t, 10*time.Second, func() bool { q := queueOf(name); return q != nil && q.Password == pw },
				"waiting for the "+name+"'s queue credential "+gen)
			for n, raw := range clients[name].Current().Raw[resourcev3.SecretType] {
				b, _ := proto.Marshal(raw)
				for other, opw := range want(gen) {
					if other != name && strings.Contains(string(b), opw) {
						t.Errorf("%s holds %s's credential in secret %s", name, other, n)
					}
				}
			}
		}
	}
	check("k1")
	before := c.Versions(snapshot.ViewFromNode(nodes["function"]))
	key.Lock()
	generation = "k2"
	key.Unlock()
	if err := c.SetResult(ctx, snapshot.Translate(in)); err != nil {
		t.Fatal(err)
	}
	check("k2")
	if after := c.Versions(snapshot.ViewFromNode(nodes["function"])); after[resourcev3.ClusterType] != before[resourcev3.ClusterType] {
		t.Errorf("CDS version changed with only the queue key: %s → %s", before[resourcev3.ClusterType], after[resourcev3.ClusterType])
	}
}
