package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/ca"
	"github.com/weftmesh/weft/internal/xds"
)

// caOptions are the flags of the mesh CA that issues workload certificates (docs/mtls.md).
type caOptions struct {
	secret      string
	trustDomain string
	ttl, maxTTL time.Duration
}

var caOpts = bindCAFlags(flag.CommandLine)

func bindCAFlags(fs *flag.FlagSet) *caOptions {
	o := &caOptions{}
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "weft-system"
	}
	fs.StringVar(&o.secret, "ca-secret", ns+"/weft-ca", "namespace/name of the Secret holding the mesh CA's roots (created when missing, rotated with an overlap)")
	fs.StringVar(&o.trustDomain, "trust-domain", contract.DefaultTrustDomain, "SPIFFE trust domain of workload identities")
	fs.DurationVar(&o.ttl, "workload-cert-ttl", ca.DefaultTTL, "default lifetime of a workload certificate (sidecars renew at half of it)")
	fs.DurationVar(&o.maxTTL, "workload-cert-max-ttl", ca.DefaultMaxTTL, "longest workload certificate lifetime a sidecar may ask for")
	return o
}

// setupCA loads (or creates) the mesh CA's roots, keeps them rotated on every replica and
// serves the certificate service on the xDS port. Without authentication (--xds-insecure)
// there is no verified identity to certify, so no CA runs and sidecars stay plaintext.
func setupCA(mgr ctrl.Manager, srv *xds.Server, sec xdsSecurity) error {
	if sec.auth == nil {
		ctrl.Log.WithName("setup").Info("no workload certificates: the xDS port is unauthenticated (--xds-insecure)")
		return nil
	}
	o := caOpts
	ns, name, ok := strings.Cut(o.secret, "/")
	if !ok || ns == "" || name == "" {
		return fmt.Errorf("--ca-secret=%q: want namespace/name", o.secret)
	}
	direct, err := client.New(mgr.GetConfig(), client.Options{Scheme: mgr.GetScheme()})
	if err != nil {
		return fmt.Errorf("building a client for the mesh CA: %w", err)
	}
	authority := ca.New(ca.Options{TrustDomain: o.trustDomain, DefaultTTL: o.ttl, MaxTTL: o.maxTTL}, nil)
	store := &ca.Store{Client: direct, Key: types.NamespacedName{Namespace: ns, Name: name}, CA: authority,
		Clock: clock.RealClock{}, Log: ctrl.Log.WithName("ca")}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := store.Sync(ctx); err != nil {
		return fmt.Errorf("preparing the mesh CA (does namespace %s exist?): %w", ns, err)
	}
	if err := mgr.Add(store); err != nil {
		return fmt.Errorf("adding the mesh CA keeper: %w", err)
	}
	srv.Register(func(r grpc.ServiceRegistrar) {
		xds.RegisterCertificateServer(r, authority, xds.CertificateOptions{NamespaceLabels: namespaceLabels(mgr.GetClient()),
			Log: ctrl.Log.WithName("ca"), Recorder: mgr.GetEventRecorder("weft-ca")})
	})
	return nil
}

// namespaceLabels reads namespaces from the manager's cache (it watches them already).
func namespaceLabels(c client.Reader) xds.NamespaceLabels {
	return func(ctx context.Context, name string) (map[string]string, error) {
		ns := &corev1.Namespace{}
		if err := c.Get(ctx, client.ObjectKey{Name: name}, ns); err != nil {
			return nil, err
		}
		return ns.Labels, nil
	}
}
