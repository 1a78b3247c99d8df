package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

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
	if err := setupQueueLeader(mgr); err != nil {
		return nil, nil, fmt.Errorf("preparing the NATS Service to follow the leader: %w", err)
	}
	return r.fwd, r.hub, nil
}

// queueLabel marks the leader's pod: the queue runner, which consumes calls, is leader-only
// and reads its own replica's embedded NATS server, so the NATS Service (weft-nats) selects
// only the pod with this label (docs/ha.md).
const queueLabel = "weft.dev/queue"

// queueLeader labels this replica's pod as the queue's once it leads (a leader-only
// Runnable); unlabelQueue removes a label a previous container of the same pod left.
type queueLeader struct {
	c        client.Client
	ns, pod  string
	interval time.Duration
}

func (q queueLeader) Start(ctx context.Context) error {
	for {
		err := labelPod(ctx, q.c, q.ns, q.pod, ptr.To("leader"))
		if err == nil {
			ctrl.Log.WithName("peer").Info("this replica serves the queue", "pod", q.pod)
			break
		}
		ctrl.Log.WithName("peer").Error(err, "labelling the leader's pod for the NATS Service; retrying")
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(q.interval):
		}
	}
	<-ctx.Done()
	return nil
}

// labelPod sets (or, with nil, removes) queueLabel on a pod.
func labelPod(ctx context.Context, c client.Client, ns, name string, value *string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]*string{queueLabel: value}}})
	if err != nil {
		return err
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if err := c.Patch(ctx, pod, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return fmt.Errorf("patching pod %s/%s's %s label: %w", ns, name, queueLabel, err)
	}
	return nil
}

// setupQueueLeader makes the NATS Service follow the leader when the queue is the embedded
// server and the manager runs as a pod (POD_NAME).
func setupQueueLeader(mgr ctrl.Manager) error {
	pod, ns := os.Getenv("POD_NAME"), os.Getenv("POD_NAMESPACE")
	if queueOpts.url != "" || queueOpts.listen == "off" || pod == "" || ns == "" {
		return nil
	}
	direct, err := client.New(mgr.GetConfig(), client.Options{Scheme: mgr.GetScheme()})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := labelPod(ctx, direct, ns, pod, nil); err != nil {
		return err
	}
	return mgr.Add(queueLeader{c: direct, ns: ns, pod: pod, interval: 2 * time.Second})
}
