// Command manager is the Weft operator: it reconciles MeshRoutes, MeshFunctions and
// RedisProxies, serves their xDS snapshots to sidecars, and scales functions.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"os"
	"strconv"

	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/controllers"
	"github.com/weftmesh/weft/internal/peer"
	"github.com/weftmesh/weft/internal/xds"
)

var scheme = runtime.NewScheme()

func init() {
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(meshv1alpha1.AddToScheme(scheme))
}

// options are the manager's flags.
type options struct {
	metricsAddr   string
	secureMetrics bool
	probeAddr     string
	leaderElect   bool
	leaderNS      string
	xdsAddr       string
	debugAddr     string
	// peerAddr is the peer port (internal/peer); peerAdvertise is where other replicas reach
	// it (default $POD_IP and peerAddr's port).
	peerAddr      string
	peerAdvertise string
	// outboundPolicy is Istio's outboundTrafficPolicy.mode for every sidecar.
	outboundPolicy string
}

func main() {
	var o options
	flag.StringVar(&o.metricsAddr, "metrics-bind-address", "0", "Address of the metrics endpoint (:8443 for HTTPS, :8080 for HTTP, 0 to disable).")
	flag.BoolVar(&o.secureMetrics, "metrics-secure", true, "Serve metrics over HTTPS with authentication and authorization.")
	flag.StringVar(&o.probeAddr, "health-probe-bind-address", ":8081", "Address of the /healthz and /readyz endpoints.")
	flag.BoolVar(&o.leaderElect, "leader-elect", false, "Elect a leader: only the leader writes status and replicas; every replica serves xDS.")
	flag.StringVar(&o.leaderNS, "leader-election-namespace", "", "Namespace of the leader-election Lease (default: the pod's namespace).")
	flag.StringVar(&o.xdsAddr, "xds-address", ":"+strconv.Itoa(contract.XDSPort), "Address of the xDS (ADS) gRPC server sidecars connect to; the autoscaler's signal service shares it.")
	flag.StringVar(&o.peerAddr, "peer-address", ":"+strconv.Itoa(peer.Port),
		"Address of the peer port, where followers send the leader their sidecars' stats, demand and ACK state (with --leader-elect only).")
	flag.StringVar(&o.peerAdvertise, "peer-advertise", "",
		"host:port other replicas reach this replica's peer port at (default $POD_IP and --peer-address's port).")
	flag.StringVar(&o.debugAddr, "debug-bind-address", "127.0.0.1:"+strconv.Itoa(xds.DebugPort),
		"Address of the read-only debug endpoints (/debug/syncz, /debug/config_dump) weft proxy-status and proxy-config read; keep it on loopback (they have no authentication; the CLI reaches them by port-forward), \"0\" to disable.")
	flag.StringVar(&o.outboundPolicy, "outbound-traffic-policy", string(contract.AllowAny),
		"What sidecars do with a destination that is no Service of the mesh: ALLOW_ANY passes it through unchanged (Istio's default), REGISTRY_ONLY refuses it (HTTP 502 saying why, TCP closed).")
	zapOpts := zap.Options{Development: false}
	zapOpts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zapOpts)))
	log := ctrl.Log.WithName("setup")

	if err := run(o); err != nil {
		log.Error(err, "manager stopped")
		os.Exit(1)
	}
}

func run(o options) error {
	log := ctrl.Log.WithName("setup")
	metricsOpts := metricsserver.Options{
		BindAddress:   o.metricsAddr,
		SecureServing: o.secureMetrics,
		// HTTP/2 is off: it is open to the Rapid Reset and Stream Cancellation CVEs.
		TLSOpts: []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }},
	}
	if o.secureMetrics {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	repl, err := newReplication(o)
	if err != nil {
		return err
	}
	cfg := ctrl.GetConfigOrDie()
	opts := ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsOpts,
		HealthProbeBindAddress:  o.probeAddr,
		LeaderElection:          o.leaderElect,
		LeaderElectionID:        leaseName,
		LeaderElectionNamespace: o.leaderNS,
		// The leader steps down at once on SIGTERM so a new one takes over without waiting
		// for the lease to expire.
		LeaderElectionReleaseOnCancel: true,
	}
	if repl.enabled() {
		// The Lease's holder identity names the leader's peer port (peer.Identity).
		ns, err := leaderNamespace(o)
		if err != nil {
			return err
		}
		if opts.LeaderElectionResourceLockInterface, err = peer.NewLock(cfg, ns, leaseName, repl.identity); err != nil {
			return fmt.Errorf("building the leader-election lock: %w", err)
		}
	}
	mgr, err := ctrl.NewManager(cfg, opts)
	if err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("caches", controllers.CachesSynced(mgr.GetCache())); err != nil {
		return err
	}
	sec, err := setupXDSSecurity(mgr)
	if err != nil {
		return err
	}
	injectOpts.xdsCA = sec.ca
	if err := setupInjection(mgr); err != nil {
		return err
	}
	policy := contract.OutboundTrafficPolicy(o.outboundPolicy)
	if policy != contract.AllowAny && policy != contract.RegistryOnly {
		return fmt.Errorf("--outbound-traffic-policy=%q: use %s or %s", o.outboundPolicy, contract.AllowAny, contract.RegistryOnly)
	}
	srv, cache, snap, err := setupXDS(mgr, o.xdsAddr, policy, sec, repl)
	if err != nil {
		return err
	}
	if err := setupCA(mgr, srv, sec); err != nil {
		return err
	}
	if o.debugAddr != "0" {
		if err := mgr.Add(&xds.DebugServer{Server: srv, Address: o.debugAddr, Log: ctrl.Log.WithName("debug")}); err != nil {
			return fmt.Errorf("adding the debug server: %w", err)
		}
	}
	if err := setupFunctions(mgr, o, sec, srv, cache, snap, repl); err != nil {
		return err
	}
	log.Info("starting manager")
	return mgr.Start(ctrl.SetupSignalHandler())
}

// setupXDS adds the snapshot reconciler and the xDS server, both on every replica. Other
// gRPC services (the autoscaler's signal intake) register on the returned server before
// the manager starts.
func setupXDS(mgr ctrl.Manager, addr string, policy contract.OutboundTrafficPolicy, sec xdsSecurity, repl *replication) (*xds.Server, *xds.Cache, *controllers.SnapshotReconciler, error) {
	cache := xds.NewCache()
	r := controllers.NewSnapshotReconciler(mgr.GetClient(), mgr.GetAPIReader(), cache, mgr.Elected())
	r.OutboundTrafficPolicy = policy
	onChange := func() { r.Notify(); repl.nodesChanged() }
	srv := xds.New(cache, xds.Options{Address: addr, OnChange: onChange, Log: ctrl.Log.WithName("xds"), Auth: sec.auth, TLS: sec.tls})
	r.Nodes = srv
	r.Recorder = mgr.GetEventRecorder("weft-snapshot")
	if err := r.SetupWithManager(mgr); err != nil {
		return nil, nil, nil, fmt.Errorf("setting up the snapshot controller: %w", err)
	}
	if err := mgr.Add(srv); err != nil {
		return nil, nil, nil, fmt.Errorf("adding the xDS server: %w", err)
	}
	return srv, cache, r, nil
}
