package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/inject"
	"github.com/weftmesh/weft/internal/xds"
)

// xdsAuthOptions are the flags of the xDS port's TLS and sidecar authentication
// (docs/zero-trust.md).
type xdsAuthOptions struct {
	insecure   bool
	certSecret string
	certHosts  string
}

var xdsAuthOpts = bindXDSAuthFlags(flag.CommandLine)

func bindXDSAuthFlags(fs *flag.FlagSet) *xdsAuthOptions {
	o := &xdsAuthOptions{}
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "weft-system"
	}
	fs.BoolVar(&o.insecure, "xds-insecure", false,
		"Serve xDS and signals in plaintext to anyone, with views taken from what sidecars claim (tests and development only: any pod then reads every secret of the mesh).")
	fs.StringVar(&o.certSecret, "xds-cert-secret", ns+"/weft-xds-cert", "namespace/name of the Secret holding the xDS port's self-managed CA and serving certificate.")
	fs.StringVar(&o.certHosts, "xds-cert-hosts", contract.XDSServerName+",weft-manager."+ns+".svc",
		"Comma-separated DNS names and IPs the xDS serving certificate covers; sidecars verify "+contract.XDSServerName+".")
	return o
}

// xdsSecurity is what the xDS server and the renderers need for the secure mode; all nil
// with --xds-insecure.
type xdsSecurity struct {
	tls  *tls.Config
	auth *xds.Authenticator
	ca   []byte
	// key is the serving certificate's private key, from which the peer token derives.
	key []byte
}

// setupXDSSecurity loads or creates the xDS certificate (the same self-managed CA approach
// as the webhook's, in its own Secret) and builds the authenticator, which reviews tokens
// and reads pods with an uncached client: the manager does not watch every pod.
func setupXDSSecurity(mgr ctrl.Manager) (xdsSecurity, error) {
	o := xdsAuthOpts
	if o.insecure {
		ctrl.Log.WithName("setup").Info("xDS runs UNAUTHENTICATED (--xds-insecure): any client gets any view and every secret in it")
		return xdsSecurity{}, nil
	}
	ns, name, ok := strings.Cut(o.certSecret, "/")
	if !ok || ns == "" || name == "" {
		return xdsSecurity{}, fmt.Errorf("--xds-cert-secret=%q: want namespace/name", o.certSecret)
	}
	direct, err := client.New(mgr.GetConfig(), client.Options{Scheme: mgr.GetScheme()})
	if err != nil {
		return xdsSecurity{}, fmt.Errorf("building a client for xDS authentication: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bundle, err := inject.EnsureSecret(ctx, direct, types.NamespacedName{Namespace: ns, Name: name}, strings.Split(o.certHosts, ","), time.Now())
	if err != nil {
		return xdsSecurity{}, fmt.Errorf("preparing the xDS certificate (does namespace %s exist?): %w", ns, err)
	}
	cert, err := bundle.TLSCertificate()
	if err != nil {
		return xdsSecurity{}, err
	}
	return xdsSecurity{
		tls:  &tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS12},
		auth: xds.NewAuthenticator(direct, clock.RealClock{}),
		ca:   bundle.CACert,
		key:  bundle.Key,
	}, nil
}
