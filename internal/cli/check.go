package cli

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/weftmesh/weft/internal/xds"
)

// Names `check` looks for: config/default's (namePrefix weft-, namespace weft-system).
const (
	webhookConfigName = "weft-sidecar-injector"
	// validatorConfigName is the MeshFunction validator's ValidatingWebhookConfiguration.
	validatorConfigName = "weft-meshfunction-validator"
	webhookSecretName   = "weft-webhook-cert"
	managerDeployment   = "weft-manager"
)

// minKubeMinor is the oldest Kubernetes 1.x the checks accept: Weft's CRDs validate with
// CEL rules (x-kubernetes-validations), GA and on by default since 1.29.
const minKubeMinor = 29

// certWarnDays: a CA bundle or serving certificate expiring sooner fails the check (the
// manager renews its self-managed certificates 30 days before they expire).
const certWarnDays = 30

// crdNames are the CRDs Weft installs.
var crdNames = []string{"meshroutes.mesh.weft.dev", "meshfunctions.mesh.weft.dev", "redisproxies.mesh.weft.dev", "meshpolicies.mesh.weft.dev"}

// nowFunc is the clock of the expiry checks; tests pin it.
var nowFunc = time.Now

// checker prints one line per check, as `linkerd check` does.
type checker struct {
	w        io.Writer
	failed   int
	warnings int
	section  string
}

func (c *checker) header(name string) {
	if c.section != "" {
		fmt.Fprintln(c.w)
	}
	c.section = name
	fmt.Fprintf(c.w, "%s\n%s\n", name, strings.Repeat("-", len(name)))
}

func (c *checker) ok(desc string) { fmt.Fprintf(c.w, "✔ %s\n", desc) }

func (c *checker) fail(desc string, err error, hint string) {
	c.failed++
	fmt.Fprintf(c.w, "✘ %s\n", desc)
	if err != nil {
		fmt.Fprintf(c.w, "    %v\n", err)
	}
	if hint != "" {
		fmt.Fprintf(c.w, "    hint: %s\n", hint)
	}
}

func (c *checker) warn(desc string, err error, hint string) {
	c.warnings++
	fmt.Fprintf(c.w, "‼ %s\n", desc)
	if err != nil {
		fmt.Fprintf(c.w, "    %v\n", err)
	}
	if hint != "" {
		fmt.Fprintf(c.w, "    hint: %s\n", hint)
	}
}

func newCheck(o *options) *cobra.Command {
	var pre bool
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Check that the cluster can run Weft (--pre) or that Weft is installed and healthy",
		Long: `check runs, one line each (✔ passed, ✘ failed, ‼ warning):

  --pre   before installing: the API server is reachable and its version supported, and you
          may create what the installation creates (CRDs, cluster roles, the webhook
          configuration, the weft-system namespace and its Deployment).
  default after installing: the API server; the three CRDs installed and established; the
          sidecar-injection webhook configured, its CA bundle a valid certificate that does
          not expire within 30 days (and the serving certificate signed by it); the manager
          Deployment available; the manager serving xDS (and which sidecars reject config).

It exits non-zero when a check fails; warnings do not fail it.`,
		Example: `  weft check --pre
  weft check
  kubectl weft check --context prod`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := o.ctx(cmd.Context())
			defer cancel()
			c := &checker{w: o.streams.Out}
			runChecks(ctx, o, c, pre)
			fmt.Fprintln(c.w)
			if c.failed > 0 {
				fmt.Fprintf(c.w, "Status check results are ✘ (%d failed, %d warnings)\n", c.failed, c.warnings)
				return ErrChecksFailed
			}
			fmt.Fprintf(c.w, "Status check results are ✔ (%d warnings)\n", c.warnings)
			return nil
		},
	}
	cmd.Flags().BoolVar(&pre, "pre", false, "run the pre-installation checks")
	return cmd
}

func runChecks(ctx context.Context, o *options, c *checker, pre bool) {
	c.header("kubernetes-api")
	k, err := o.kube()
	if err != nil {
		c.fail("can read the kubeconfig", err, "pass --kubeconfig and --context, or set KUBECONFIG")
		return
	}
	v, err := k.clientset.Discovery().ServerVersion()
	if err != nil {
		c.fail("can reach the API server", err, "is the cluster running and the kubeconfig's server address right? (kubectl version)")
		return
	}
	c.ok("can reach the API server")
	minor, _ := strconv.Atoi(strings.TrimRight(v.Minor, "+"))
	if v.Major == "1" && minor >= minKubeMinor {
		c.ok(fmt.Sprintf("API server version %s is supported (1.%d or later)", v.GitVersion, minKubeMinor))
	} else {
		c.fail(fmt.Sprintf("API server version %s is supported", v.GitVersion), fmt.Errorf("weft needs Kubernetes 1.%d or later (CEL validation of its CRDs)", minKubeMinor), "upgrade the cluster")
	}
	if pre {
		preChecks(ctx, o, k, c)
		return
	}
	crdChecks(ctx, k, c)
	webhookChecks(ctx, o, k, c)
	managerChecks(ctx, o, k, c)
}

// preChecks asks the API server whether the caller may create what an install creates.
func preChecks(ctx context.Context, o *options, k *kube, c *checker) {
	c.header("pre-install")
	for _, ra := range []authorizationv1.ResourceAttributes{
		{Verb: "create", Group: "apiextensions.k8s.io", Resource: "customresourcedefinitions"},
		{Verb: "create", Group: "rbac.authorization.k8s.io", Resource: "clusterroles"},
		{Verb: "create", Group: "rbac.authorization.k8s.io", Resource: "clusterrolebindings"},
		{Verb: "create", Group: "admissionregistration.k8s.io", Resource: "mutatingwebhookconfigurations"},
		{Verb: "create", Resource: "namespaces"},
		{Verb: "create", Group: "apps", Resource: "deployments", Namespace: o.managerNS},
		{Verb: "create", Resource: "serviceaccounts", Namespace: o.managerNS},
	} {
		what := ra.Resource
		if ra.Group != "" {
			what += "." + ra.Group
		}
		if ra.Namespace != "" {
			what += " in " + ra.Namespace
		}
		desc := "can create " + what
		ssar := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &ra}}
		res, err := k.clientset.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, ssar, metav1.CreateOptions{})
		switch {
		case err != nil:
			c.fail(desc, err, "")
		case !res.Status.Allowed:
			c.fail(desc, fmt.Errorf("not allowed %s", res.Status.Reason), "install as a cluster admin")
		default:
			c.ok(desc)
		}
	}
	var crd apiextensionsv1.CustomResourceDefinition
	switch err := k.client.Get(ctx, client.ObjectKey{Name: crdNames[0]}, &crd); {
	case err == nil:
		c.warn("Weft is already installed", fmt.Errorf("CRD %s exists", crdNames[0]), "installing again upgrades it: run weft check (without --pre) afterwards")
	case apierrors.IsNotFound(err):
		c.ok("no earlier Weft installation (its CRDs are absent)")
	default:
		c.fail("can read CustomResourceDefinitions", err, "")
	}
}

func crdChecks(ctx context.Context, k *kube, c *checker) {
	c.header("weft-crds")
	for _, name := range crdNames {
		var crd apiextensionsv1.CustomResourceDefinition
		if err := k.client.Get(ctx, client.ObjectKey{Name: name}, &crd); err != nil {
			c.fail("CRD "+name+" is installed", err, "kubectl apply -k config/crd (or config/default)")
			continue
		}
		established, served := false, false
		for _, cond := range crd.Status.Conditions {
			if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
				established = true
			}
		}
		for _, v := range crd.Spec.Versions {
			if v.Name == "v1alpha1" && v.Served {
				served = true
			}
		}
		switch {
		case !established:
			c.fail("CRD "+name+" is established", fmt.Errorf("its Established condition is not True"), "kubectl describe crd "+name)
		case !served:
			c.fail("CRD "+name+" serves v1alpha1", fmt.Errorf("version v1alpha1 is not served"), "re-apply config/crd of this Weft release")
		default:
			c.ok("CRD " + name + " is installed and established")
		}
	}
}

func webhookChecks(ctx context.Context, o *options, k *kube, c *checker) {
	c.header("weft-webhook")
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := k.client.Get(ctx, client.ObjectKey{Name: webhookConfigName}, &mwc); err != nil {
		c.fail("sidecar-injection webhook "+webhookConfigName+" is configured", err, "kubectl apply -k config/default")
		return
	}
	c.ok("sidecar-injection webhook " + webhookConfigName + " is configured")
	now := nowFunc()
	var bundle []byte
	for _, wh := range mwc.Webhooks {
		if len(wh.ClientConfig.CABundle) == 0 {
			c.fail("webhook "+wh.Name+" has a CA bundle", fmt.Errorf("caBundle is empty"),
				"the manager writes it when it starts: is it running? (kubectl logs -n "+o.managerNS+" deploy/"+managerDeployment+")")
			return
		}
		bundle = wh.ClientConfig.CABundle
	}
	cas, err := parseCerts(bundle)
	if err != nil {
		c.fail("the webhook's CA bundle is a valid certificate", err, "delete Secret "+o.managerNS+"/"+webhookSecretName+": the manager makes a new CA")
		return
	}
	if err := notExpiring(cas, now); err != nil {
		c.fail("the webhook's CA bundle is valid for 30 more days", err, "restart the manager: it renews its CA 30 days before expiry")
	} else {
		c.ok(fmt.Sprintf("the webhook's CA bundle is valid for %d more days", daysLeft(cas, now)))
	}
	var sec corev1.Secret
	switch err := k.client.Get(ctx, client.ObjectKey{Namespace: o.managerNS, Name: webhookSecretName}, &sec); {
	case apierrors.IsNotFound(err):
		c.warn("the webhook's serving certificate is signed by the CA bundle", fmt.Errorf("no Secret %s/%s", o.managerNS, webhookSecretName), "the manager creates it when it starts")
	case err != nil:
		c.warn("the webhook's serving certificate is signed by the CA bundle", err, "")
	default:
		serving, err := parseCerts(sec.Data[corev1.TLSCertKey])
		if err == nil {
			err = verifies(serving[0], cas, now)
		}
		if err == nil {
			err = notExpiring(serving[:1], now)
		}
		if err != nil {
			c.fail("the webhook's serving certificate is signed by the CA bundle and valid for 30 more days", err,
				"delete Secret "+o.managerNS+"/"+webhookSecretName+" and restart the manager: it issues a new one and publishes its CA")
		} else {
			c.ok("the webhook's serving certificate is signed by the CA bundle and valid for 30 more days")
		}
	}
	validatorChecks(ctx, k, c, bundle)
}

// validatorChecks looks at the MeshFunction validator (unknown revisions refused at apply):
// without it, or with a stale CA, applies still succeed (failurePolicy Ignore) and status
// reports the problem, so these are warnings.
func validatorChecks(ctx context.Context, k *kube, c *checker, injectorCA []byte) {
	var vwc admissionregistrationv1.ValidatingWebhookConfiguration
	if err := k.client.Get(ctx, client.ObjectKey{Name: validatorConfigName}, &vwc); err != nil {
		c.warn("MeshFunction validator "+validatorConfigName+" is configured", err,
			"kubectl apply -k config/default (without it an unknown revision in spec.traffic is only reported in the MeshFunction's status)")
		return
	}
	for _, wh := range vwc.Webhooks {
		if !bytes.Equal(wh.ClientConfig.CABundle, injectorCA) {
			c.warn("MeshFunction validator "+wh.Name+" trusts the webhook CA", fmt.Errorf("its caBundle differs from the injector's"),
				"the manager writes it within 30 s when it runs with --enable-validation-webhook (the default)")
			return
		}
	}
	c.ok("MeshFunction validator " + validatorConfigName + " is configured with the webhook CA")
}

func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing a certificate: %w", err)
		}
		out = append(out, cert)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no PEM certificate in it")
	}
	return out, nil
}

func notExpiring(certs []*x509.Certificate, now time.Time) error {
	for _, c := range certs {
		if now.Before(c.NotBefore) {
			return fmt.Errorf("certificate %q is not valid before %s", c.Subject.CommonName, c.NotBefore.UTC().Format(time.RFC3339))
		}
		if left := c.NotAfter.Sub(now); left < certWarnDays*24*time.Hour {
			return fmt.Errorf("certificate %q expires %s (in %d days)", c.Subject.CommonName, c.NotAfter.UTC().Format(time.RFC3339), int(left.Hours()/24))
		}
	}
	return nil
}

func daysLeft(certs []*x509.Certificate, now time.Time) int {
	min := -1
	for _, c := range certs {
		if d := int(c.NotAfter.Sub(now).Hours() / 24); min < 0 || d < min {
			min = d
		}
	}
	return min
}

func verifies(cert *x509.Certificate, cas []*x509.Certificate, now time.Time) error {
	pool := x509.NewCertPool()
	for _, ca := range cas {
		pool.AddCert(ca)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("the serving certificate does not verify against the CA bundle: %w", err)
	}
	return nil
}

func managerChecks(ctx context.Context, o *options, k *kube, c *checker) {
	c.header("weft-manager")
	var dep appsv1.Deployment
	err := k.client.Get(ctx, client.ObjectKey{Namespace: o.managerNS, Name: managerDeployment}, &dep)
	switch {
	case apierrors.IsNotFound(err) && (o.managerURL != "" || onThisHost(k.config.Host)):
		c.ok("manager runs outside the cluster (no Deployment " + o.managerNS + "/" + managerDeployment + "; the local mesh runs it as a process)")
	case err != nil:
		c.fail("manager Deployment "+o.managerNS+"/"+managerDeployment+" exists", err, "kubectl apply -k config/default")
	case !available(&dep):
		c.fail("manager Deployment "+o.managerNS+"/"+managerDeployment+" is available",
			fmt.Errorf("%d of %d replicas available", dep.Status.AvailableReplicas, ptrOr(dep.Spec.Replicas, 1)),
			"kubectl describe deploy/"+managerDeployment+" -n "+o.managerNS+"; kubectl logs deploy/"+managerDeployment+" -n "+o.managerNS)
	default:
		c.ok(fmt.Sprintf("manager Deployment %s/%s is available (%d of %d replicas)", o.managerNS, managerDeployment, dep.Status.AvailableReplicas, ptrOr(dep.Spec.Replicas, 1)))
	}
	ms, stop, err := o.managers(ctx, k)
	if err != nil {
		c.fail("the manager's xDS server is serving", err, "")
		return
	}
	defer stop()
	rows, err := syncz(ctx, ms)
	if err != nil {
		c.fail("the manager's xDS server is serving", err, "")
		return
	}
	c.ok(fmt.Sprintf("the manager's xDS server is serving (%d sidecars connected)", len(rows)))
	var rejecting []string
	for _, r := range rows {
		for _, typ := range statusTypes {
			if r.Types[typ].Status == xds.SyncRejected {
				rejecting = append(rejecting, r.ID)
				break
			}
		}
	}
	if len(rejecting) > 0 {
		c.warn("no sidecar rejects its configuration", fmt.Errorf("%d rejecting: %s", len(rejecting), strings.Join(rejecting, ", ")), "weft proxy-status -o wide shows why")
	} else {
		c.ok("no sidecar rejects its configuration")
	}
}

func available(d *appsv1.Deployment) bool {
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentAvailable {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func ptrOr(p *int32, d int32) int32 {
	if p == nil {
		return d
	}
	return *p
}
