package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/weftmesh/weft/controllers"
	"github.com/weftmesh/weft/internal/autoscale"
	"github.com/weftmesh/weft/internal/queue"
	"github.com/weftmesh/weft/internal/snapshot"
)

// queueOptions are the flags of asynchronous invocation's queue (internal/queue).
type queueOptions struct {
	url, token, creds string
	listen, storeDir  string
	secret, advertise string
}

var queueOpts = bindQueueFlags(flag.CommandLine)

func bindQueueFlags(fs *flag.FlagSet) *queueOptions {
	o := &queueOptions{}
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "weft-system"
	}
	fs.StringVar(&o.url, "nats-url", "", "URL of an external NATS cluster with JetStream; empty embeds a NATS server in the manager.")
	fs.StringVar(&o.token, "nats-token", os.Getenv("NATS_TOKEN"), "Token for --nats-url (default $NATS_TOKEN).")
	fs.StringVar(&o.creds, "nats-creds", "", "Credentials file for --nats-url.")
	fs.StringVar(&o.listen, "nats-listen", "0.0.0.0:4222", "Address the embedded NATS server listens on; \"off\" disables asynchronous calls.")
	fs.StringVar(&o.storeDir, "nats-store-dir", filepath.Join(os.TempDir(), "weft-nats"), "JetStream store directory of the embedded server.")
	fs.StringVar(&o.advertise, "nats-advertise", "nats://weft-manager."+ns+".svc:4222", "URL sidecars use for the embedded NATS server.")
	fs.StringVar(&o.secret, "nats-secret", ns+"/weft-nats-token", "namespace/name of the Secret holding the embedded server's generated key, from which every NATS user's password is derived.")
	return o
}

// setupQueue embeds a NATS JetStream server (or connects to --nats-url) and feeds each
// function's backlog of queued calls to the autoscaler as demand, so a function at zero with
// pending async calls scales up; a function with revisions is fed per revision (its own
// calls plus its share of those not dispatched yet: queue.Demand), under the revision's
// autoscaler key. Every sidecar learns the queue's URL and its identity's
// credential over xDS.
func setupQueue(mgr ctrl.Manager, as *autoscale.Autoscaler, snap *controllers.SnapshotReconciler) error {
	o := queueOpts
	if o.listen == "off" && o.url == "" {
		return nil
	}
	sink := queue.PendingSinkFunc(func(f queue.FunctionKey, n int) {
		as.SetPending(autoscale.FunctionKey{Namespace: f.Namespace, Name: f.Name}, n)
	})
	log := ctrl.Log.WithName("queue")
	if o.url != "" {
		q, err := snapshot.NewQueue(o.url, snapshot.SharedQueueToken(o.token))
		if err != nil {
			return fmt.Errorf("--nats-url: %w", err)
		}
		snap.Queue = q
		// The functions' splits share their backlogs between revisions and move calls off
		// revisions without traffic; their consumers the sidecars may make themselves.
		fns := &queue.MeshFunctions{Reader: mgr.GetClient()}
		return mgr.Add(&queue.Runner{Client: queue.ClientOptions{URL: o.url, Token: o.token, CredsFile: o.creds}, Functions: fns, Sink: sink, Logger: log})
	}
	key, err := natsToken(mgr, o.secret)
	if err != nil {
		return err
	}
	// Every sidecar identity (a function's pods, a namespace's other sidecars) gets its own
	// user, its password derived from the Secret's key; the manager is AdminUser.
	creds := queue.NewCredentials(key)
	q, err := snapshot.NewQueue(o.advertise, creds.ForView)
	if err != nil {
		return fmt.Errorf("--nats-advertise: %w", err)
	}
	// A revision's pods connect as the revision: they dispatch the function's calls and run
	// their revision's.
	q.RevisionCredential = creds.ForRevision
	snap.Queue = q
	fns := &queue.MeshFunctions{Reader: mgr.GetClient()}
	srv, err := queue.NewServer(queue.ServerOptions{Listen: o.listen, StoreDir: o.storeDir, Key: key, Policy: fns, Logger: ctrl.Log.WithName("nats")})
	if err != nil {
		return fmt.Errorf("configuring the embedded NATS server: %w", err)
	}
	if err := mgr.Add(srv); err != nil {
		return err
	}
	// The manager makes every function's consumer: identities may not.
	return mgr.Add(&queue.Runner{Embedded: srv, Client: creds.Admin(), Functions: fns, Sink: sink, Logger: log})
}

// natsToken reads the embedded server's token from its Secret, creating it on first start.
func natsToken(mgr ctrl.Manager, ref string) (string, error) {
	ns, name, ok := strings.Cut(ref, "/")
	if !ok || ns == "" || name == "" {
		return "", fmt.Errorf("--nats-secret=%q: want namespace/name", ref)
	}
	// The manager's cache is not running yet, so read and write the Secret directly.
	direct, err := client.New(mgr.GetConfig(), client.Options{Scheme: mgr.GetScheme()})
	if err != nil {
		return "", fmt.Errorf("building a client for the NATS token: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sec := &corev1.Secret{}
	err = direct.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, sec)
	if err != nil && !apierrors.IsNotFound(err) {
		return "", fmt.Errorf("reading the NATS token Secret %s: %w", ref, err)
	}
	token, data, changed := queue.EnsureToken(sec.Data)
	if !changed {
		return token, nil
	}
	if apierrors.IsNotFound(err) {
		sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: data}
		err = direct.Create(ctx, sec)
	} else {
		sec.Data = data
		err = direct.Update(ctx, sec)
	}
	if err != nil {
		return "", fmt.Errorf("storing the NATS token in Secret %s (does namespace %s exist?): %w", ref, ns, err)
	}
	return token, nil
}
