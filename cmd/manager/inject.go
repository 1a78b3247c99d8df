package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/controllers"
	"github.com/weftmesh/weft/internal/capture"
	"github.com/weftmesh/weft/internal/inject"
)

// injectionOptions are the flags of the sidecar-injection webhook (internal/inject).
type injectionOptions struct {
	enabled      bool
	image        string
	xdsAddress   string
	drainSeconds int64
	host         string
	port         int
	certSecret   string
	certHosts    string
	configName   string
	// validate serves the MeshFunction validating webhook (controllers.MeshFunctionValidator)
	// on the same server; validatingName is its configuration, whose caBundle is kept.
	validate       bool
	validatingName string
	interception   string
	// xdsCA is the xDS CA bundle injected sidecars verify the control plane with (set by
	// run from setupXDSSecurity; empty with --xds-insecure).
	xdsCA []byte
}

var injectOpts = bindInjectionFlags(flag.CommandLine)

func bindInjectionFlags(fs *flag.FlagSet) *injectionOptions {
	o := &injectionOptions{}
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "weft-system"
	}
	fs.BoolVar(&o.enabled, "enable-sidecar-injection", true, "Serve the sidecar-injection webhook and keep its caBundle current.")
	fs.StringVar(&o.image, "sidecar-image", "ghcr.io/weftmesh/weft-sidecar:latest", "Image of the injected sidecar container.")
	fs.StringVar(&o.xdsAddress, "sidecar-xds-address", "weft-manager."+ns+".svc:"+strconv.Itoa(contract.XDSPort), "Control-plane address (host:port) injected sidecars connect to.")
	fs.Int64Var(&o.drainSeconds, "sidecar-drain-seconds", 5, "How long an injected sidecar's preStop waits before the pod stops serving.")
	fs.StringVar(&o.host, "webhook-host", "", "Address the webhook server binds (empty: all).")
	fs.IntVar(&o.port, "webhook-port", 9443, "Port of the webhook server.")
	fs.StringVar(&o.certSecret, "webhook-cert-secret", ns+"/weft-webhook-cert", "namespace/name of the Secret holding the webhook's self-managed CA and serving certificate.")
	fs.StringVar(&o.certHosts, "webhook-cert-hosts", "weft-webhook-service."+ns+".svc,weft-webhook-service."+ns+".svc.cluster.local",
		"Comma-separated DNS names and IPs the webhook serving certificate covers.")
	fs.StringVar(&o.configName, "webhook-config-name", inject.WebhookConfigName, "MutatingWebhookConfiguration whose caBundle the manager keeps.")
	fs.BoolVar(&o.validate, "enable-validation-webhook", true, "Serve the MeshFunction validating webhook (unknown revision names in spec.traffic are refused at apply) and keep its caBundle current.")
	fs.StringVar(&o.validatingName, "validating-webhook-config-name", inject.ValidatingWebhookConfigName, "ValidatingWebhookConfiguration whose caBundle the manager keeps.")
	// iptables, as Istio: apps join the mesh unmodified. proxy-env is for clusters that
	// refuse NET_ADMIN in pods (docs/capture.md "Interception modes").
	fs.StringVar(&o.interception, "interception", string(capture.InterceptionIPTables),
		`How injected and function pods without a weft.dev/interception annotation reach their sidecar: "iptables" (the weft-init container, needs NET_ADMIN) or "proxy-env" (HTTP_PROXY, for clusters without NET_ADMIN).`)
	return o
}

// setupInjection loads or creates the webhook certificate, then adds the webhook server
// (with the injection handler) and the caBundle keeper to mgr.
func setupInjection(mgr ctrl.Manager) error {
	o := injectOpts
	if !o.enabled && !o.validate {
		return nil
	}
	mode, err := capture.ParseInterception(o.interception)
	if err != nil {
		return fmt.Errorf("--interception: %w", err)
	}
	ns, name, ok := strings.Cut(o.certSecret, "/")
	if !ok || ns == "" || name == "" {
		return fmt.Errorf("--webhook-cert-secret=%q: want namespace/name", o.certSecret)
	}
	hosts := strings.Split(o.certHosts, ",")
	// The manager's cache is not running yet, so read and write the Secret directly.
	direct, err := client.New(mgr.GetConfig(), client.Options{Scheme: mgr.GetScheme()})
	if err != nil {
		return fmt.Errorf("building a client for the webhook certificate: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bundle, err := inject.EnsureSecret(ctx, direct, types.NamespacedName{Namespace: ns, Name: name}, hosts, time.Now())
	if err != nil {
		return fmt.Errorf("preparing the sidecar-injection webhook certificate (does namespace %s exist?): %w", ns, err)
	}
	cert, err := bundle.TLSCertificate()
	if err != nil {
		return err
	}
	srv := webhook.NewServer(webhook.Options{
		Host: o.host, Port: o.port,
		TLSOpts: []func(*tls.Config){func(c *tls.Config) {
			c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil }
			c.NextProtos = []string{"http/1.1"} // no HTTP/2: Rapid Reset
		}},
	})
	reader := mgr.GetAPIReader()
	keeper := &inject.CABundleKeeper{Client: direct, CA: bundle.CACert, Clock: clock.RealClock{}, Log: ctrl.Log.WithName("webhook")}
	if o.validate {
		srv.Register(inject.MeshFunctionValidatePath, &webhook.Admission{Handler: &controllers.MeshFunctionValidator{
			Reader: reader, Decoder: admission.NewDecoder(mgr.GetScheme()),
		}})
		keeper.ValidatingName = o.validatingName
	}
	if !o.enabled {
		if err := mgr.Add(srv); err != nil {
			return fmt.Errorf("adding the webhook server: %w", err)
		}
		return mgr.Add(keeper)
	}
	keeper.Name = o.configName
	srv.Register(inject.Path, &webhook.Admission{Handler: &inject.Handler{
		Config:  inject.Config{Image: o.image, XDSAddress: o.xdsAddress, DrainSeconds: o.drainSeconds, Interception: mode, XDSCA: o.xdsCA},
		Decoder: admission.NewDecoder(mgr.GetScheme()),
		Namespaces: inject.NamespaceLabelsFunc(func(ctx context.Context, name string) (map[string]string, error) {
			nsObj := &corev1.Namespace{}
			if err := reader.Get(ctx, types.NamespacedName{Name: name}, nsObj); err != nil {
				return nil, err
			}
			return nsObj.Labels, nil
		}),
	}})
	if err := mgr.Add(srv); err != nil {
		return fmt.Errorf("adding the webhook server: %w", err)
	}
	return mgr.Add(keeper)
}
