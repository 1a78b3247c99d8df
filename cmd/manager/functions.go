package main

import (
	"fmt"
	"time"

	"google.golang.org/grpc"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/weftmesh/weft/controllers"
	"github.com/weftmesh/weft/internal/autoscale"
	"github.com/weftmesh/weft/internal/capture"
	"github.com/weftmesh/weft/internal/workload"
	"github.com/weftmesh/weft/internal/xds"
)

// setupFunctions adds the workload side: the RedisProxy standalone-proxy controller and what
// makes MeshFunctions run and scale: the autoscaler (leader only; it
// decides every 2 s and at once on a demand poke), its signal service on the xDS port (every
// replica takes sidecars' stats and pokes), and the MeshFunction controller, which renders
// the Deployment and Service, applies decisions and hands off through xDS ACKs before the
// last pod goes.
func setupFunctions(mgr ctrl.Manager, o options, sec xdsSecurity, srv *xds.Server, cache *xds.Cache,
	snap *controllers.SnapshotReconciler, repl *replication) error {
	decisions := controllers.NewDecisions()
	as := autoscale.NewAutoscaler(clock.RealClock{}, decisions)
	if err := mgr.Add(as); err != nil {
		return fmt.Errorf("adding the autoscaler: %w", err)
	}
	// With several replicas a follower's signals go to the leader's autoscaler and the
	// hand-off counts every replica's sidecars (docs/ha.md).
	sink, handoff, err := repl.setup(mgr, o, sec, srv, cache, snap, as)
	if err != nil {
		return err
	}
	srv.Register(func(r grpc.ServiceRegistrar) {
		autoscale.RegisterSignalServer(r, sink, controllers.PodRevisions{Reader: mgr.GetClient()})
	})
	if err := setupQueue(mgr, as, snap); err != nil {
		return err
	}

	opts := workload.DefaultOptions()
	opts.SidecarImage = injectOpts.image
	opts.XDSAddress = injectOpts.xdsAddress
	mode, err := capture.ParseInterception(injectOpts.interception)
	if err != nil {
		return fmt.Errorf("--interception: %w", err)
	}
	opts.Interception = mode
	opts.XDSCA = injectOpts.xdsCA
	if d := time.Duration(injectOpts.drainSeconds) * time.Second; d > 0 {
		opts.DrainTimeout = max(d, opts.DrainTimeout)
	}
	r := &controllers.MeshFunctionReconciler{
		Client:    mgr.GetClient(),
		Options:   opts,
		Scaler:    as,
		Decisions: decisions,
		Handoff:   handoff,
		Recorder:  mgr.GetEventRecorder("weft-meshfunction"),
	}
	if err := r.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the MeshFunction controller: %w", err)
	}
	rp := &controllers.RedisProxyReconciler{Client: mgr.GetClient(), Options: opts}
	if err := rp.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the RedisProxy controller: %w", err)
	}
	return nil
}
