package main

import (
	"bytes"
	"context"
	"errors"
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
	// account and signingSecret turn on per-identity user JWTs on --nats-url.
	account, signingSecret string
	jwtLifetime            time.Duration
}

var queueOpts = bindQueueFlags(flag.CommandLine)

func bindQueueFlags(fs *flag.FlagSet) *queueOptions {
	o := &queueOptions{}
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "weft-system"
	}
	fs.StringVar(&o.url, "nats-url", "", "URL of an external NATS cluster with JetStream; empty embeds a NATS server in the manager.")
	fs.StringVar(&o.token, "nats-token", os.Getenv("NATS_TOKEN"), "Legacy: one token for --nats-url that the manager and every sidecar share (default $NATS_TOKEN). Any sidecar may then pull any function's calls; prefer --nats-account-signing-seed-secret.")
	fs.StringVar(&o.creds, "nats-creds", "", "Credentials file of the manager's own user on --nats-url (with --nats-account-signing-seed-secret and no file, the manager signs its own user).")
	fs.StringVar(&o.account, "nats-account", "", "Public key (A...) of the NATS account Weft's users belong to on --nats-url, in decentralized JWT mode.")
	fs.StringVar(&o.signingSecret, "nats-account-signing-seed-secret", "", "namespace/name of a Secret whose key \""+signingSeedKey+"\" holds a signing key seed (SA...) of --nats-account: the manager then mints each sidecar identity its own user JWT, with its own permissions, instead of sharing --nats-token.")
	fs.DurationVar(&o.jwtLifetime, "nats-jwt-lifetime", queue.DefaultJWTLifetime, "Lifetime of each minted NATS user JWT; renewed at half. It bounds how long a credential outlives a policy change that narrows it.")
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
		fns := &queue.MeshFunctions{Reader: mgr.GetClient()}
		var iss *queue.Issuer
		if o.signingSecret != "" || o.account != "" {
			seed, err := readSigningSeed(mgr, o.signingSecret)
			if err != nil {
				return err
			}
			if iss, err = queue.NewIssuer(queue.IssuerOptions{Account: o.account, SigningSeed: seed, Lifetime: o.jwtLifetime, Policy: fns}); err != nil {
				return fmt.Errorf("--nats-account / --nats-account-signing-seed-secret: %w", err)
			}
			// Renewals and policy changes re-mint credentials; the snapshots carry them.
			if err := mgr.Add(&queue.IssuerRefresh{Issuer: iss, Resync: snap.Resync, Logger: log}); err != nil {
				return err
			}
			log.Info("minting a NATS user JWT per sidecar identity", "account", o.account, "signingKey", iss.SigningKey(), "lifetime", o.jwtLifetime)
		} else {
			log.Info("every sidecar shares --nats-token (legacy): any sidecar may pull any function's calls; set --nats-account and --nats-account-signing-seed-secret for per-identity credentials")
		}
		q, client, err := externalQueue(o, iss)
		if err != nil {
			return err
		}
		snap.Queue = q
		// The manager makes every function's consumer (identities may not) and shares the
		// functions' backlogs between revisions.
		return mgr.Add(&queue.Runner{Client: client, Functions: fns, Sink: sink, Logger: log})
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

// signingSeedKey is the key, in --nats-account-signing-seed-secret, of the account signing
// key's seed.
const signingSeedKey = "seed"

// externalQueue is what the sidecars and the manager are given for --nats-url: with iss,
// each sidecar identity its own minted user JWT and the manager --nats-creds or a user it
// signs itself; without, the legacy shared --nats-token for all. A token with iss is
// refused: no sidecar may receive one when identities have their own credentials.
func externalQueue(o *queueOptions, iss *queue.Issuer) (*snapshot.Queue, queue.ClientOptions, error) {
	client := queue.ClientOptions{URL: o.url, Token: o.token, CredsFile: o.creds}
	if iss == nil {
		q, err := snapshot.NewQueue(o.url, snapshot.SharedQueueToken(o.token))
		if err != nil {
			return nil, client, fmt.Errorf("--nats-url: %w", err)
		}
		return q, client, nil
	}
	if o.token != "" {
		return nil, client, errors.New("--nats-token (or $NATS_TOKEN) is set with --nats-account-signing-seed-secret: each sidecar identity gets its own JWT, so no token is sent to any; unset the token")
	}
	q, err := snapshot.NewQueue(o.url, iss.ForView)
	if err != nil {
		return nil, client, fmt.Errorf("--nats-url: %w", err)
	}
	// A revision's pods connect as the revision: they dispatch the function's calls and run
	// their revision's.
	q.RevisionCredential = iss.ForRevision
	if o.creds == "" {
		client = iss.Admin()
		client.URL = o.url
	}
	return q, client, nil
}

// readSigningSeed reads the account signing key's seed from Secret ref (namespace/name).
// Errors never hold the seed.
func readSigningSeed(mgr ctrl.Manager, ref string) ([]byte, error) {
	ns, name, ok := strings.Cut(ref, "/")
	if !ok || ns == "" || name == "" {
		return nil, fmt.Errorf("--nats-account-signing-seed-secret=%q: want namespace/name (--nats-account needs it)", ref)
	}
	// The manager's cache is not running yet (and caches no Secret data): read directly.
	direct, err := client.New(mgr.GetConfig(), client.Options{Scheme: mgr.GetScheme()})
	if err != nil {
		return nil, fmt.Errorf("building a client for the NATS signing key: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sec := &corev1.Secret{}
	if err := direct.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, sec); err != nil {
		return nil, fmt.Errorf("reading the NATS account signing key Secret %s: %w", ref, err)
	}
	seed := bytes.TrimSpace(sec.Data[signingSeedKey])
	if len(seed) == 0 {
		return nil, fmt.Errorf("secret %s has no key %q holding the account signing key's seed (SA...)", ref, signingSeedKey)
	}
	return seed, nil
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
