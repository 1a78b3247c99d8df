package cli

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/go-logr/logr"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/yaml"

	"github.com/weftmesh/weft/controllers"
	"github.com/weftmesh/weft/internal/xds"
	"github.com/weftmesh/weft/sidecar/xdsclient"
	"github.com/weftmesh/weft/testenv"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// mesh is the shared test world: a real kube-apiserver with Weft's CRDs, the snapshot
// reconciler and the xDS server running in process as cmd/manager wires them, the debug
// endpoints on loopback, one sidecar (the real xDS client, ACKing) and one raw ADS stream
// that NACKs CDS.
type mesh struct {
	kubeconfig string
	debugURL   string
	client     client.Client
	xdsAddr    string
}

var world *mesh

const testNS = "shop"

func TestMain(m *testing.M) {
	flag.Parse()
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		// Run the tests without the world; each that needs it skips (or fails in CI).
		os.Exit(m.Run())
	}
	ctx, cancel := context.WithCancel(context.Background())
	env := &envtest.Environment{CRDDirectoryPaths: []string{filepath.Join("..", "..", "config", "crd", "bases")}, ErrorIfCRDPathMissing: true}
	w, stop, err := startWorld(ctx, env)
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the test world:", err)
		cancel()
		_ = env.Stop()
		os.Exit(1)
	}
	world = w
	code := m.Run()
	stop()
	cancel()
	_ = env.Stop()
	os.Exit(code)
}

func needWorld(t *testing.T) *mesh {
	t.Helper()
	if world == nil {
		testenv.Missing(t, "KUBEBUILDER_ASSETS is not set: export KUBEBUILDER_ASSETS=$(go run ./hack/envtest | tail -n1)")
	}
	return world
}

func startWorld(ctx context.Context, env *envtest.Environment) (*mesh, func(), error) {
	cfg, err := env.Start()
	if err != nil {
		return nil, nil, err
	}
	user, err := env.AddUser(envtest.User{Name: "weft-cli-test", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return nil, nil, err
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp("", "weft-cli-test")
	if err != nil {
		return nil, nil, err
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		return nil, nil, err
	}
	cl, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, nil, err
	}
	if err := cl.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNS}}); err != nil {
		return nil, nil, err
	}
	if err := applyFile(ctx, cl, filepath.Join("testdata", "fixtures.yaml")); err != nil {
		return nil, nil, err
	}

	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
		Cache:  cache.Options{DefaultNamespaces: map[string]cache.Config{testNS: {}}},
		Logger: logr.Discard(),
	})
	if err != nil {
		return nil, nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	xc := xds.NewCache()
	r := controllers.NewSnapshotReconciler(mgr.GetClient(), mgr.GetAPIReader(), xc, mgr.Elected())
	srv := xds.New(xc, xds.Options{Listener: ln, OnChange: r.Notify, Log: logr.Discard()})
	r.Nodes = srv
	r.Recorder = mgr.GetEventRecorder("weft-snapshot")
	if err := r.SetupWithManager(mgr); err != nil {
		return nil, nil, err
	}
	if err := mgr.Add(srv); err != nil {
		return nil, nil, err
	}
	dln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	if err := mgr.Add(&xds.DebugServer{Server: srv, Listener: dln, Log: logr.Discard()}); err != nil {
		return nil, nil, err
	}
	mctx, stopMgr := context.WithCancel(ctx)
	mgrDone := make(chan error, 1)
	go func() { mgrDone <- mgr.Start(mctx) }()
	<-srv.Ready()

	w := &mesh{kubeconfig: kubeconfig, debugURL: "http://" + dln.Addr().String(), client: cl, xdsAddr: srv.Addr().String()}
	sidecar := xdsclient.New(xdsclient.Options{Address: w.xdsAddr, Node: testNode("productpage-1", "productpage", 9080)})
	go func() { _ = sidecar.Run(mctx) }()
	nackDone, err := nackingSidecar(mctx, w.xdsAddr)
	if err != nil {
		stopMgr()
		return nil, nil, err
	}
	stop := func() {
		stopMgr()
		<-mgrDone
		<-nackDone
		_ = os.RemoveAll(dir)
	}
	if err := w.waitSettled(ctx); err != nil {
		stop()
		return nil, nil, err
	}
	return w, stop, nil
}

func testNode(pod, app string, appPort int) *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{"namespace": testNS, "pod": pod, "appPort": float64(appPort),
		"labels": map[string]any{"app": app}})
	return &corev3.Node{Id: pod + "." + testNS, Metadata: md}
}

// nackingSidecar is an old sidecar that rejects every CDS response and never asks for more.
func nackingSidecar(ctx context.Context, addr string) (<-chan struct{}, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: testNode("legacy-1", "legacy", 0), TypeUrl: resourcev3.ClusterType}); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer conn.Close()
		for {
			resp, err := st.Recv()
			if err != nil {
				return
			}
			_ = st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: resp.GetNonce(),
				ErrorDetail: &rpcstatus.Status{Code: 3, Message: "cluster weft-nats: field type STATIC is not supported by this sidecar"}})
		}
	}()
	return done, nil
}

// waitSettled waits until both sidecars are counted in the routes' status, so the golden
// output does not depend on timing.
func (w *mesh) waitSettled(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		var out bytes.Buffer
		code := Main("weft", []string{"--kubeconfig", w.kubeconfig, "--manager-url", w.debugURL, "proxy-status"}, Streams{Out: &out, Err: &out})
		var route, fn unstructured.Unstructured
		route.SetAPIVersion("mesh.weft.dev/v1alpha1")
		route.SetKind("MeshRoute")
		fn.SetAPIVersion("mesh.weft.dev/v1alpha1")
		fn.SetKind("RedisProxy")
		err1 := w.client.Get(ctx, client.ObjectKey{Namespace: testNS, Name: "reviews"}, &route)
		err2 := w.client.Get(ctx, client.ObjectKey{Namespace: testNS, Name: "cache"}, &fn)
		rejected, _, _ := unstructured.NestedInt64(route.Object, "status", "rejectedSidecars")
		synced, _, _ := unstructured.NestedInt64(route.Object, "status", "syncedSidecars")
		rpSynced, _, _ := unstructured.NestedInt64(fn.Object, "status", "syncedSidecars")
		last = out.String()
		if code == 0 && err1 == nil && err2 == nil && rejected == 1 && synced == 1 && rpSynced == 1 &&
			strings.Count(last, "SYNCED") == 4 && strings.Contains(last, "REJECTED") {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("the test mesh did not settle within 60s; last proxy-status:\n%s", last)
}

func applyFile(ctx context.Context, cl client.Client, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	for _, doc := range strings.Split(string(b), "\n---\n") {
		var u unstructured.Unstructured
		if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if len(u.Object) == 0 {
			continue
		}
		if err := cl.Create(ctx, &u); err != nil {
			return fmt.Errorf("creating %s %s: %w", u.GetKind(), u.GetName(), err)
		}
	}
	return nil
}

// run runs the CLI as main does and returns its exit code, stdout and stderr.
func (w *mesh) run(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	full := append([]string{"--kubeconfig", w.kubeconfig, "-n", testNS, "--manager-url", w.debugURL}, args...)
	code := Main("weft", full, Streams{Out: &out, Err: &errb})
	return code, out.String(), errb.String()
}

var (
	hexVersion = regexp.MustCompile(`\b[0-9a-f]{20}\b`)
	shortVer   = regexp.MustCompile(`\b[0-9a-f]{8}…`)
	loopURL    = regexp.MustCompile(`http://127\.0\.0\.1:\d+`)
	loopAddr   = regexp.MustCompile(`127\.0\.0\.1:\d{4,5}\b`)
)

// normalize replaces what differs between runs: snapshot versions and loopback ports.
func normalize(s string) string {
	s = hexVersion.ReplaceAllString(s, "<version>")
	s = shortVer.ReplaceAllString(s, "<ver>…")
	s = loopURL.ReplaceAllString(s, "http://127.0.0.1:PORT")
	return loopAddr.ReplaceAllString(s, "127.0.0.1:PORT")
}

// golden compares got (normalized) with testdata/<name>.golden, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	got = normalize(got)
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/cli -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from %s (go test ./internal/cli -update rewrites it; review the diff):\n--- got\n%s\n--- want\n%s", name, path, got, want)
	}
}
