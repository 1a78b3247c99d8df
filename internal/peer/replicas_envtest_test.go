package peer_test

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/autoscale"
	"github.com/weftmesh/weft/internal/inject"
	"github.com/weftmesh/weft/internal/peer"
	"github.com/weftmesh/weft/internal/snapshot"
	"github.com/weftmesh/weft/internal/xds"
	"github.com/weftmesh/weft/sidecar/activator"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
	"github.com/weftmesh/weft/testenv"
)

// Lease timings of the test replicas: short so failover takes seconds.
const (
	leaseDuration = 3 * time.Second
	renewDeadline = 2 * time.Second
	retryPeriod   = 500 * time.Millisecond
)

var kube struct {
	once sync.Once
	env  *envtest.Environment
	cfg  *rest.Config
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if kube.env != nil {
		_ = kube.env.Stop()
	}
	os.Exit(code)
}

func apiServer(t *testing.T) *rest.Config {
	t.Helper()
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		testenv.Missing(t, "KUBEBUILDER_ASSETS is not set; run with KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh | tail -n1)")
	}
	kube.once.Do(func() {
		logf.SetLogger(logr.Discard())
		kube.env = &envtest.Environment{ControlPlaneStartTimeout: 3 * time.Minute}
		kube.cfg, kube.err = kube.env.Start()
		if kube.err != nil {
			kube.env = nil
		}
	})
	if kube.err != nil {
		t.Fatalf("starting envtest: %v", kube.err)
	}
	return kube.cfg
}

var fn = types.NamespacedName{Namespace: "default", Name: "fn"}

// withFunction is a translation input with MeshFunction default/fn and one endpoint, ready
// (serving) or terminating (draining).
func withFunction(ready bool) *snapshot.Input {
	return &snapshot.Input{
		MeshFunctions: []meshv1alpha1.MeshFunction{{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "fn"}}},
		EndpointSlices: []discoveryv1.EndpointSlice{{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "fn-1", Labels: map[string]string{discoveryv1.LabelServiceName: "fn"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Port: ptr.To[int32](contract.InboundPort)}},
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.5.0.1"}, Conditions: discoveryv1.EndpointConditions{
				Ready: ptr.To(ready), Serving: ptr.To(true), Terminating: ptr.To(!ready)}}},
		}},
	}
}

type decision struct {
	fn autoscale.FunctionKey
	d  autoscale.Decision
}

// replica is one manager as cmd/manager wires it with --leader-elect: a controller-runtime
// manager electing on a real Lease, an xDS server with the signal service, and the peer
// port. Its autoscaler (leader only) emits to decisions.
type replica struct {
	name      string
	peerAddr  string
	mgr       ctrl.Manager
	cache     *xds.Cache
	xds       *xds.Server
	as        *autoscale.Autoscaler
	hub       *peer.Hub
	decisions chan decision
	cancel    context.CancelFunc
	done      chan error
}

func (r *replica) leads() bool {
	select {
	case <-r.mgr.Elected():
		return true
	default:
		return false
	}
}

// startReplica starts a replica; lease names the test's Lease, sec the peer port's
// protection (the same for every replica, as they load one Secret).
func startReplica(t *testing.T, cfg *rest.Config, name, lease string, sec peer.Security) *replica {
	t.Helper()
	peerLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	xdsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	id := peer.Identity(name, peerLn.Addr().String())
	lock, err := peer.NewLock(cfg, "default", lease, id)
	if err != nil {
		t.Fatal(err)
	}
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
		LeaderElection: true, LeaderElectionResourceLockInterface: lock,
		LeaseDuration: ptr.To(leaseDuration), RenewDeadline: ptr.To(renewDeadline), RetryPeriod: ptr.To(retryPeriod),
	})
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{name: name, peerAddr: peerLn.Addr().String(), mgr: mgr, cache: xds.NewCache(), decisions: make(chan decision, 1024), done: make(chan error, 1)}
	r.as = autoscale.NewAutoscaler(clock.RealClock{}, autoscale.ScaleSinkFunc(func(fn autoscale.FunctionKey, d autoscale.Decision) {
		select {
		case r.decisions <- decision{fn, d}:
		default:
		}
	}))
	r.as.SetSpec(autoscale.FunctionKey{Namespace: fn.Namespace, Name: fn.Name}, zeroSpec())
	dial, err := peer.Dialer(sec)
	if err != nil {
		t.Fatal(err)
	}
	fwd := &peer.Forwarder{
		Replica: id,
		Leader:  peer.LeaseLeader{Reader: mgr.GetAPIReader(), Lease: types.NamespacedName{Namespace: "default", Name: lease}, Self: id},
		Dial:    dial, Local: r.as, Elected: mgr.Elected(), Clock: clock.RealClock{},
	}
	r.xds = xds.New(r.cache, xds.Options{Listener: xdsLn, OnChange: fwd.NodesChanged, GracePeriod: time.Second})
	fwd.Report = func() peer.Report { return peer.ReportOf(r.xds.Nodes(), r.cache) }
	r.hub = &peer.Hub{Sink: r.as, Local: r.xds, Elected: mgr.Elected()}
	r.xds.Register(func(s grpc.ServiceRegistrar) { autoscale.RegisterSignalServer(s, fwd) })
	srv := &peer.Server{Listener: peerLn, Security: sec, Hub: r.hub}
	// The xDS server, the Forwarder and the peer server run on every replica; the
	// autoscaler and the Hub only on the leader.
	for _, run := range []manager.Runnable{r.xds, fwd, srv, r.as, r.hub} {
		if err := mgr.Add(run); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- mgr.Start(ctx) }()
	t.Cleanup(r.stop)
	<-r.xds.Ready()
	return r
}

// stop ends the replica as a crash would: it does not release the Lease, so the others
// wait for it to expire.
func (r *replica) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
	}
}

func zeroSpec() autoscale.Spec {
	s := autoscale.DefaultSpec()
	s.InitialScale = 0
	return s
}

// security is the peer port's protection as the manager builds it from its xDS Secret.
func security(t *testing.T) peer.Security {
	t.Helper()
	b, err := inject.Generate(time.Now(), []string{contract.XDSServerName})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := b.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	return peer.Security{TLS: &tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12}, CA: b.CACert, Token: peer.Token(b.Key)}
}

// startReplicas starts n replicas on one Lease and waits for one to lead.
func startReplicas(t *testing.T, n int, lease string) (leader *replica, followers []*replica) {
	t.Helper()
	cfg := apiServer(t)
	sec := security(t)
	var all []*replica
	for i := range n {
		all = append(all, startReplica(t, cfg, lease+"-"+string(rune('a'+i)), lease, sec))
	}
	poll.Until(t, 30*time.Second, func() bool { return leaderOf(all) != nil }, "waiting for a leader")
	leader = leaderOf(all)
	for _, r := range all {
		if r != leader {
			followers = append(followers, r)
		}
	}
	return leader, followers
}

func leaderOf(rs []*replica) *replica {
	var l *replica
	for _, r := range rs {
		if r.cancel != nil && r.leads() {
			if l != nil {
				return nil // two leaders: not settled (cannot happen with a Lease)
			}
			l = r
		}
	}
	return l
}

// sidecar is a signal client connected to a replica's xDS port, as a sidecar's.
func sidecar(t *testing.T, r *replica) *activator.Reporter {
	t.Helper()
	conn, err := grpc.NewClient(r.xds.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return activator.NewReporter(conn)
}

// waitDecision waits for a decision for fn on r matching ok.
func waitDecision(t *testing.T, r *replica, within time.Duration, what string, ok func(autoscale.Decision) bool) autoscale.Decision {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case d := <-r.decisions:
			if d.fn.Name == fn.Name && ok(d.d) {
				return d.d
			}
		case <-deadline:
			t.Fatalf("%s: no such decision on %s within %s", what, r.name, within)
		}
	}
}
