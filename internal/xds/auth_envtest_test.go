package xds_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/yaml"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/autoscale"
	"github.com/weftmesh/weft/internal/inject"
	"github.com/weftmesh/weft/internal/queue"
	"github.com/weftmesh/weft/internal/snapshot"
	"github.com/weftmesh/weft/internal/workload"
	"github.com/weftmesh/weft/internal/xds"
	"github.com/weftmesh/weft/sidecar/activator"
	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/xdsclient"
	"github.com/weftmesh/weft/testenv"
)

// The secrets of the test mesh: each must reach only the sidecars that need it.
const (
	redisServerPW = "server-pw-7f3a"
	redisClientPW = "client-pw-91c2"
	queueKey      = "nats-key-5d0e"
	ztNS          = "zt"
)

var kube struct {
	once sync.Once
	env  *envtest.Environment
	c    client.Client
	cs   *kubernetes.Clientset
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if kube.env != nil {
		_ = kube.env.Stop()
	}
	os.Exit(code)
}

// apiServer starts one envtest API server for the package's tests, with the namespace and
// ServiceAccounts they use (envtest runs no controller-manager, so no "default" one).
func apiServer(t *testing.T) (client.Client, *kubernetes.Clientset) {
	t.Helper()
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		testenv.Missing(t, "KUBEBUILDER_ASSETS is not set; run with KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh | tail -n1)")
	}
	kube.once.Do(func() {
		logf.SetLogger(logr.Discard())
		kube.env = &envtest.Environment{ControlPlaneStartTimeout: 3 * time.Minute}
		cfg, err := kube.env.Start()
		if err != nil {
			kube.err = err
			kube.env = nil
			return
		}
		scheme := runtime.NewScheme()
		_ = clientgoscheme.AddToScheme(scheme)
		if kube.c, kube.err = client.New(cfg, client.Options{Scheme: scheme}); kube.err != nil {
			return
		}
		if kube.cs, kube.err = kubernetes.NewForConfig(cfg); kube.err != nil {
			return
		}
		ctx := context.Background()
		kube.err = kube.c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ztNS}})
		for _, sa := range []string{"web", "cache", "fn", "other"} {
			if kube.err == nil {
				kube.err = kube.c.Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ztNS, Name: sa}})
			}
		}
	})
	if kube.err != nil {
		t.Fatalf("starting envtest: %v", kube.err)
	}
	return kube.c, kube.cs
}

// meshedPod creates a pod as the webhook or a renderer leaves it: a sidecar container with
// --app-port when appPort is set.
func meshedPod(t *testing.T, c client.Client, name, sa string, labels map[string]string, appPort int) *corev1.Pod {
	t.Helper()
	sc := corev1.Container{Name: workload.SidecarContainerName, Image: "weft-sidecar"}
	if appPort != 0 {
		sc.Args = []string{"--app-port=" + itoa(appPort)}
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ztNS, Name: name, Labels: labels},
		Spec: corev1.PodSpec{ServiceAccountName: sa, Containers: []corev1.Container{{Name: "app", Image: "app"}, sc}}}
	if err := c.Create(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Delete(context.Background(), pod) })
	return pod
}

func itoa(n int) string { return strconv.Itoa(n) }

// podToken is a token the API server mints for pod as its kubelet would for the projected
// volume (audience weft unless told otherwise, bound to the pod).
func podToken(t *testing.T, cs *kubernetes.Clientset, pod *corev1.Pod, audience string) string {
	t.Helper()
	tr, err := cs.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(context.Background(), pod.Spec.ServiceAccountName, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: ptr.To[int64](600),
			BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for pod %s: %v", pod.Name, err)
	}
	return tr.Status.Token
}

// meshInput is a RedisProxy pool (passwords both ways) for pods labelled app=cache, a
// MeshFunction zt/fn, and the queue with its token.
func meshInput(t *testing.T) *snapshot.Input {
	t.Helper()
	var rp meshv1alpha1.RedisProxy
	must(t, yaml.Unmarshal([]byte(`
metadata: {name: pool, namespace: zt, generation: 1, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  workloadSelector: {labels: {app: cache}}
  listener: {address: 127.0.0.1, port: 6379}
  servers: [{name: s1, address: "10.0.0.10:6379"}]
  auth:
    downstream: {passwordSecretRef: {name: redis-auth, key: client}}
    upstream: {passwordSecretRef: {name: redis-auth}}
`), &rp))
	var fn meshv1alpha1.MeshFunction
	must(t, yaml.Unmarshal([]byte(`
metadata: {name: fn, namespace: zt, generation: 1, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  template: {spec: {containers: [{name: fn, image: example/fn}]}}
  async: {enabled: true}
`), &fn))
	q, err := snapshot.NewQueue("nats://10.244.0.1:4222", queueCreds.ForView)
	must(t, err)
	return &snapshot.Input{
		RedisProxies:  []meshv1alpha1.RedisProxy{rp},
		MeshFunctions: []meshv1alpha1.MeshFunction{fn},
		Secrets: []corev1.Secret{{ObjectMeta: metav1.ObjectMeta{Namespace: ztNS, Name: "redis-auth"},
			Data: map[string][]byte{"client": []byte(redisClientPW), "password": []byte(redisServerPW)}}},
		Queue: q,
	}
}

// queueCreds derive the queue's per-identity passwords, as the manager's embedded server.
var queueCreds = queue.NewCredentials(queueKey)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

type secureServer struct {
	srv   *xds.Server
	clock *clocktesting.FakeClock
	roots *x509.CertPool
	ca    []byte
}

// startSecure runs the xDS server as the manager does by default: TLS with a certificate
// of its own CA, every stream and call authenticated, the signal service on the same port.
func startSecure(t *testing.T, c client.Client, in *snapshot.Input, register ...func(grpc.ServiceRegistrar)) *secureServer {
	t.Helper()
	bundle, err := inject.Generate(time.Now(), []string{contract.XDSServerName})
	must(t, err)
	cert, err := bundle.TLSCertificate()
	must(t, err)
	fc := clocktesting.NewFakeClock(time.Now())
	cache := xds.NewCache()
	must(t, cache.SetResult(context.Background(), snapshot.Translate(in)))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	srv := xds.New(cache, xds.Options{Listener: ln, Auth: xds.NewAuthenticator(c, fc),
		TLS: &tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12}})
	as := autoscale.NewAutoscaler(fc, autoscale.ScaleSinkFunc(func(autoscale.FunctionKey, autoscale.Decision) {}))
	as.SetSpec(autoscale.FunctionKey{Namespace: ztNS, Name: "fn"}, autoscale.DefaultSpec())
	srv.Register(func(r grpc.ServiceRegistrar) { autoscale.RegisterSignalServer(r, as) })
	for _, fn := range register {
		srv.Register(fn)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-srv.Ready()
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(bundle.CACert)
	return &secureServer{srv: srv, clock: fc, roots: roots, ca: bundle.CACert}
}

// dial connects over TLS verified with the server's CA (as a sidecar does).
func (s *secureServer) dial(t *testing.T) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(s.srv.Addr().String(), grpc.WithTransportCredentials(
		credentials.NewTLS(&tls.Config{RootCAs: s.roots, ServerName: contract.XDSServerName, MinVersion: tls.VersionTLS12})))
	must(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func withToken(ctx context.Context, tok string) context.Context {
	if tok == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, contract.AuthorizationHeader, contract.BearerPrefix+tok)
}

// claimedNode is what a hostile client may send: any ID, any metadata.
func claimedNode(t *testing.T, id string, md map[string]any) *corev3.Node {
	t.Helper()
	s, err := structpb.NewStruct(md)
	must(t, err)
	return &corev3.Node{Id: id, Metadata: s}
}

// allSecretNames is what a hostile client asks SDS for: every Redis password and queue
// credential of the test mesh, whoever it belongs to.
var allSecretNames = []string{
	contract.RedisDownstreamSecretName(ztNS, "pool"), contract.RedisUpstreamSecretName(ztNS, "pool"),
	contract.QueueSecretName(ztNS, ""), contract.QueueSecretName(ztNS, "fn"),
	contract.QueueSecretName("weft-system", ""), contract.QueueSecretName("default", ""),
}

// fetch opens an ADS stream with tok and node, asks for every cluster and listener and
// then for every secret of the mesh by name (allSecretNames), and returns what came back
// (raw bytes of every resource) or the stream's error.
func fetch(t *testing.T, conn *grpc.ClientConn, tok string, node *corev3.Node) (map[string][][]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(withToken(context.Background(), tok), 10*time.Second)
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	got := map[string][][]byte{}
	for i, typ := range []string{resourcev3.ClusterType, resourcev3.ListenerType} {
		req := &discoveryv3.DiscoveryRequest{TypeUrl: typ}
		if i == 0 {
			req.Node = node
		}
		if err := st.Send(req); err != nil {
			// io.EOF: the server already ended the stream; Recv has its status.
			_, rerr := st.Recv()
			return nil, rerr
		}
		resp, err := st.Recv()
		if err != nil {
			return nil, err
		}
		for _, r := range resp.GetResources() {
			got[typ] = append(got[typ], r.GetValue())
		}
	}
	// SDS by name: go-control-plane answers with the requested secrets the view holds (or,
	// for a view holding none, an empty response); a name it does not hold is never sent.
	if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.SecretType, ResourceNames: allSecretNames}); err != nil {
		return nil, err
	}
	resp, err := st.Recv()
	if err != nil {
		return nil, err
	}
	for _, r := range resp.GetResources() {
		got[resourcev3.SecretType] = append(got[resourcev3.SecretType], r.GetValue())
	}
	return got, nil
}

func holds(got map[string][][]byte, secret string) bool {
	for _, rs := range got {
		for _, r := range rs {
			if strings.Contains(string(r), secret) {
				return true
			}
		}
	}
	return false
}

// A stream without a valid token is refused, whatever it claims: no token, a token for
// another audience, one of a ServiceAccount not bound to any pod, garbage, and plaintext.
func TestAuthRefusesStreamsWithoutAValidToken(t *testing.T) {
	c, cs := apiServer(t)
	s := startSecure(t, c, meshInput(t))
	conn := s.dial(t)
	cachePod := meshedPod(t, c, "cache-1", "cache", map[string]string{"app": "cache"}, 0)
	victim := claimedNode(t, "cache-1."+ztNS, map[string]any{"namespace": ztNS, "labels": map[string]any{"app": "cache"}})

	unbound, err := cs.CoreV1().ServiceAccounts(ztNS).CreateToken(context.Background(), "other", &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: []string{contract.TokenAudience}}}, metav1.CreateOptions{})
	must(t, err)
	for _, c := range []struct{ name, tok string }{
		{"no token", ""},
		{"API-server audience", podToken(t, cs, cachePod, "https://kubernetes.default.svc")},
		{"another ServiceAccount, bound to no pod", unbound.Status.Token},
		{"not a token", "eyJhbGciOiJub25lIn0.e30."},
		{"oversized", strings.Repeat("a", 20<<10)},
	} {
		got, err := fetch(t, conn, c.tok, victim)
		if status.Code(err) != codes.Unauthenticated {
			t.Errorf("%s: stream ended with %v (got %d types), want Unauthenticated", c.name, err, len(got))
		}
	}

	// Plaintext to the TLS port never gets as far as a token.
	plain, err := grpc.NewClient(s.srv.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	must(t, err)
	defer plain.Close()
	if _, err := fetch(t, plain, "", victim); err == nil {
		t.Error("a plaintext client got configuration from the TLS port")
	}
}

// An expired token is refused, and a stream whose token expires while it is open is ended
// with Unauthenticated (the sidecar then reconnects with its rotated token).
func TestAuthExpiredTokenAndLongStream(t *testing.T) {
	c, cs := apiServer(t)
	s := startSecure(t, c, meshInput(t))
	conn := s.dial(t)
	pod := meshedPod(t, c, "web-exp", "web", map[string]string{"app": "web"}, 8080)
	tok := podToken(t, cs, pod, contract.TokenAudience)

	ctx, cancel := context.WithTimeout(withToken(context.Background(), tok), 20*time.Second)
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	must(t, err)
	must(t, st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, Node: &corev3.Node{Id: "web-exp." + ztNS}}))
	if _, err := st.Recv(); err != nil {
		t.Fatalf("a valid token was refused: %v", err)
	}
	// The API-server minted the token for 600 s; step past it.
	s.clock.Step(601 * time.Second)
	if _, err := st.Recv(); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("the stream outlived its token: Recv = %v, want Unauthenticated", err)
	}
	// A new stream with the same (now expired, and its review no longer cached) token.
	if _, err := fetch(t, conn, tok, &corev3.Node{Id: "web-exp." + ztNS}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("an expired token opened a stream: %v", err)
	}
}

// Each sidecar gets the view of its verified pod: a client with a valid token of one pod
// that claims another pod's node ID is refused, and one that claims another view's
// metadata (labels, redisProxy, function) under its own node ID gets its own view only.
// No client obtains a Redis password or the queue token it was not granted.
func TestAuthViewFromVerifiedPodOnly(t *testing.T) {
	c, cs := apiServer(t)
	s := startSecure(t, c, meshInput(t))
	conn := s.dial(t)
	cachePod := meshedPod(t, c, "cache-2", "cache", map[string]string{"app": "cache"}, 0)
	webPod := meshedPod(t, c, "web-2", "web", map[string]string{"app": "web"}, 0)
	fnPod := meshedPod(t, c, "fn-2", "fn", map[string]string{workload.LabelFunction: "fn"}, 8080)
	cacheTok := podToken(t, cs, cachePod, contract.TokenAudience)
	webTok := podToken(t, cs, webPod, contract.TokenAudience)
	fnTok := podToken(t, cs, fnPod, contract.TokenAudience)

	// The pool's own pod gets both of its passwords.
	got, err := fetch(t, conn, cacheTok, &corev3.Node{Id: "cache-2." + ztNS})
	must(t, err)
	if !holds(got, redisServerPW) || !holds(got, redisClientPW) {
		t.Fatal("the pod the pool selects did not get the pool's passwords")
	}
	// ... as SDS secrets, and only there.
	sds := map[string][][]byte{resourcev3.SecretType: got[resourcev3.SecretType]}
	delete(got, resourcev3.SecretType)
	if !holds(sds, redisServerPW) || !holds(sds, redisClientPW) || holds(got, redisServerPW) || holds(got, redisClientPW) {
		t.Fatal("the pool's passwords travel outside SDS")
	}

	// web's token claiming cache's node ID: refused.
	if _, err := fetch(t, conn, webTok, &corev3.Node{Id: "cache-2." + ztNS}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a token of web-2 claiming cache-2's node ID: %v, want PermissionDenied", err)
	}
	// web's token, its own node ID, cache's metadata and the standalone-proxy claim: web's view.
	forged := claimedNode(t, "web-2."+ztNS, map[string]any{"namespace": ztNS, "redisProxy": ztNS + "/pool",
		"function": ztNS + "/fn", "appPort": 8080, "labels": map[string]any{"app": "cache"}})
	got, err = fetch(t, conn, webTok, forged)
	must(t, err)
	if holds(got, redisServerPW) || holds(got, redisClientPW) {
		t.Fatal("a sidecar claiming the pool's labels in its metadata got the pool's passwords")
	}
	for _, l := range got[resourcev3.ListenerType] {
		if strings.Contains(string(l), contract.InboundListenerName) {
			t.Fatal("claimed appPort gave web-2 an inbound listener")
		}
	}
	// Every workload may call fn, so web gets a queue credential: its namespace's, not the
	// function's it claimed (which would let it pull fn's calls). The function's pod gets
	// the function's.
	nsPass, fnPass := queueCreds.ForView(ztNS, "").Password, queueCreds.ForView(ztNS, "fn").Password
	if !holds(got, nsPass) || holds(got, fnPass) {
		t.Errorf("web claiming fn: namespace credential %v (want true), fn's %v (want false)", holds(got, nsPass), holds(got, fnPass))
	}
	got, err = fetch(t, conn, fnTok, nil)
	must(t, err)
	if !holds(got, fnPass) || holds(got, nsPass) || holds(got, redisServerPW) {
		t.Errorf("function pod: fn's queue credential %v (want true), namespace's %v, redis password %v (want false)",
			holds(got, fnPass), holds(got, nsPass), holds(got, redisServerPW))
	}

	// Status credits each sidecar by its verified node ID.
	for _, n := range s.srv.Nodes() {
		if !strings.HasSuffix(n.ID, "."+ztNS) || (n.ID != "cache-2.zt" && n.ID != "web-2.zt" && n.ID != "fn-2.zt") {
			t.Errorf("tracked node %q is not a verified pod", n.ID)
		}
	}
}

// The signal service: stats only from a pod of the function they are about (its own pod),
// demand pokes only from authenticated sidecars.
func TestAuthSignals(t *testing.T) {
	c, cs := apiServer(t)
	s := startSecure(t, c, meshInput(t))
	conn := s.dial(t)
	fnPod := meshedPod(t, c, "fn-3", "fn", map[string]string{workload.LabelFunction: "fn"}, 8080)
	webPod := meshedPod(t, c, "web-3", "web", map[string]string{"app": "web"}, 0)
	fnCtx := withToken(context.Background(), podToken(t, cs, fnPod, contract.TokenAudience))
	webCtx := withToken(context.Background(), podToken(t, cs, webPod, contract.TokenAudience))
	r := activator.NewReporter(conn)

	own := []contract.PodStat{{Namespace: ztNS, Name: "fn", Pod: "fn-3", Concurrency: 5}}
	if err := r.Report(fnCtx, own); err != nil {
		t.Fatalf("the function's own pod could not report: %v", err)
	}
	for name, c := range map[string]struct {
		ctx   context.Context
		stats []contract.PodStat
		code  codes.Code
	}{
		"no token":                {context.Background(), own, codes.Unauthenticated},
		"another workload's pod":  {webCtx, own, codes.PermissionDenied},
		"a pod it is not":         {fnCtx, []contract.PodStat{{Namespace: ztNS, Name: "fn", Pod: "fn-9", Concurrency: 500}}, codes.PermissionDenied},
		"another function's name": {fnCtx, []contract.PodStat{{Namespace: ztNS, Name: "other", Pod: "fn-3"}}, codes.PermissionDenied},
	} {
		if err := r.Report(c.ctx, c.stats); status.Code(err) != c.code {
			t.Errorf("Report with %s = %v, want %v", name, err, c.code)
		}
	}
	if err := r.SendDemand(webCtx, ztNS, "fn"); err != nil {
		t.Errorf("an authenticated caller could not poke: %v", err)
	}
	if err := r.SendDemand(context.Background(), ztNS, "fn"); status.Code(err) != codes.Unauthenticated {
		t.Errorf("an unauthenticated poke = %v, want Unauthenticated", err)
	}
}

// The sidecar's own client (xdsclient with Credentials) connects with the token file and
// the CA bundle the projected volume holds, and gets its pod's config.
func TestAuthSidecarClient(t *testing.T) {
	c, cs := apiServer(t)
	s := startSecure(t, c, meshInput(t))
	pod := meshedPod(t, c, "cache-4", "cache", map[string]string{"app": "cache"}, 0)
	dir := t.TempDir()
	caFile, tokFile := filepath.Join(dir, contract.CAFile), filepath.Join(dir, contract.TokenFile)
	must(t, os.WriteFile(caFile, s.ca, 0o600))
	must(t, os.WriteFile(tokFile, []byte(podToken(t, cs, pod, contract.TokenAudience)+"\n"), 0o600))
	runSidecar(t, s.srv.Addr().String(), caFile, tokFile, "cache-4."+ztNS)
}

// runSidecar runs xdsclient as cmd/sidecar does and waits for a config holding the pool.
func runSidecar(t *testing.T, addr, caFile, tokFile, nodeID string) {
	t.Helper()
	dial, secure, err := xdsclient.Credentials(caFile, tokFile)
	must(t, err)
	if !secure {
		t.Fatal("Credentials with a CA bundle chose plaintext")
	}
	got := make(chan *config.Config, 16)
	cl := xdsclient.New(xdsclient.Options{Address: addr, Node: &corev3.Node{Id: nodeID}, DialOptions: dial,
		Applier: xdsclient.ApplierFunc(func(c *config.Config) {
			select {
			case got <- c:
			default:
			}
		})})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = cl.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.After(15 * time.Second)
	for {
		select {
		case c := <-got:
			if _, ok := c.Clusters[contract.RedisName(ztNS, "pool")]; ok {
				return
			}
		case <-deadline:
			t.Fatalf("the sidecar got no config with its pool; status %+v", cl.Status())
		}
	}
}
