package main

import (
	"fmt"
	"net"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/weftmesh/weft/controllers"
	"github.com/weftmesh/weft/internal/autoscale"
	"github.com/weftmesh/weft/internal/peer"
	"github.com/weftmesh/weft/internal/xds"
)

// leaseName is the leader-election Lease.
const leaseName = "manager.weft.dev"

// replication is how the manager's replicas share the work (docs/ha.md): with leader
// election off there is one replica and both are nil.
type replication struct {
	identity string
	fwd      *peer.Forwarder
	hub      *peer.Hub
	server   *peer.Server
}

// newReplication prepares the peer port when the manager elects a leader: its identity
// names its peer address (POD_IP:port unless --peer-advertise says otherwise).
func newReplication(o options) (*replication, error) {
	if !o.leaderElect {
		return &replication{}, nil
	}
	adv := o.peerAdvertise
	if adv == "" {
		ip := os.Getenv("POD_IP")
		if ip == "" {
			return nil, fmt.Errorf("--leader-elect: set --peer-advertise or the POD_IP environment variable: followers reach the leader's peer port there")
		}
		_, port, err := net.SplitHostPort(o.peerAddr)
		if err != nil {
			return nil, fmt.Errorf("--peer-address=%q: %w", o.peerAddr, err)
		}
		adv = net.JoinHostPort(ip, port)
	}
	name, _ := os.Hostname()
	if pod := os.Getenv("POD_NAME"); pod != "" {
		name = pod
	}
	return &replication{identity: peer.Identity(name, adv), fwd: &peer.Forwarder{}, hub: &peer.Hub{}}, nil
}

// enabled reports whether there are peers to talk to.
func (r *replication) enabled() bool { return r.fwd != nil }

// nodesChanged is the xDS server's OnChange share: a follower reports its sidecars.
func (r *replication) nodesChanged() {
	if r.enabled() {
		r.fwd.NodesChanged()
	}
}

// leaderNamespace is where the Lease lives: the flag, else the pod's namespace.
func leaderNamespace(o options) (string, error) {
	if o.leaderNS != "" {
		return o.leaderNS, nil
	}
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns, nil
	}
	b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
	if err != nil {
		return "", fmt.Errorf("--leader-elect outside a pod: set --leader-election-namespace or POD_NAMESPACE")
	}
	return strings.TrimSpace(string(b)), nil
}

// setupReplication wires the peer port once the xDS server, its cache, the snapshot
// reconciler and the autoscaler exist. It returns the signal service's sink, the hand-off
// and status's node source: the local autoscaler and xDS server with one replica, the
// Forwarder and the Hub (which cover every replica) with several.
func (r *replication) setup(mgr ctrl.Manager, o options, sec xdsSecurity, srv *xds.Server, cache *xds.Cache,
	snap *controllers.SnapshotReconciler, as *autoscale.Autoscaler) (autoscale.SignalSink, controllers.Handoff, error) {
	if !r.enabled() {
		return as, srv, nil
	}
	ns, err := leaderNamespace(o)
	if err != nil {
		return nil, nil, err
	}
	psec := peer.Security{}
	if sec.tls != nil {
		psec = peer.Security{TLS: sec.tls, CA: sec.ca, Token: peer.Token(sec.key)}
	}
	dial, err := peer.Dialer(psec)
	if err != nil {
		return nil, nil, err
	}
	log := ctrl.Log.WithName("peer")
	*r.hub = peer.Hub{Sink: as, Local: srv, Elected: mgr.Elected(), OnChange: snap.Notify}
	*r.fwd = peer.Forwarder{
		Replica: r.identity,
		Leader:  peer.LeaseLeader{Reader: mgr.GetAPIReader(), Lease: types.NamespacedName{Namespace: ns, Name: leaseName}, Self: r.identity},
		Dial:    dial,
		Local:   as,
		Elected: mgr.Elected(),
		Report:  func() peer.Report { return peer.ReportOf(srv.Nodes(), cache) },
		Clock:   clock.RealClock{},
		Log:     log,
	}
	r.server = &peer.Server{Address: o.peerAddr, Security: psec, Hub: r.hub, Log: log}
	// The Hub runs only on the leader (it notes when leading began); the server and the
	// Forwarder run on every replica.
	for _, run := range []manager.Runnable{r.server, r.fwd, r.hub} {
		if err := mgr.Add(run); err != nil {
			return nil, nil, fmt.Errorf("adding the peer port: %w", err)
		}
	}
	snap.Nodes = r.hub
	return r.fwd, r.hub, nil
}
