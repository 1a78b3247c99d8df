package controllers

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/inject"
	"github.com/weftmesh/weft/internal/workload"
	"github.com/weftmesh/weft/testenv"
)

// countingHandler counts the admission requests that reach the validator.
type countingHandler struct {
	admission.Handler
	calls atomic.Int64
}

func (h *countingHandler) Handle(ctx context.Context, req admission.Request) admission.Response {
	h.calls.Add(1)
	return h.Handler.Handle(ctx, req)
}

// TestMeshFunctionValidatorInAPIServer installs config/webhook's ValidatingWebhookConfiguration
// into a real kube-apiserver with Weft's CRDs, serves the validator with the self-managed
// certificate (its CA published by the same CABundleKeeper the manager runs) and applies
// MeshFunctions the way kubectl does: an unknown revision in spec.traffic is refused at apply
// with a message naming it and the revisions that exist.
func TestMeshFunctionValidatorInAPIServer(t *testing.T) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		testenv.Missing(t, "KUBEBUILDER_ASSETS is not set; run with KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh | tail -n1)")
	}
	scheme := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(scheme)
	_ = meshv1alpha1.AddToScheme(scheme)
	env := &envtest.Environment{
		CRDDirectoryPaths:        []string{filepath.Join("..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing:    true,
		WebhookInstallOptions:    envtest.WebhookInstallOptions{Paths: []string{filepath.Join("..", "config", "webhook", "manifests.yaml")}},
		ControlPlaneStartTimeout: 3 * time.Minute,
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting envtest: %v", err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	for _, ns := range []string{"weft-system", "fns"} {
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
	}
	wio := &env.WebhookInstallOptions
	bundle, err := inject.EnsureSecret(ctx, c, client.ObjectKey{Namespace: "weft-system", Name: "weft-webhook-cert"}, []string{wio.LocalServingHost}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := bundle.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	srvCtx, stopServer := context.WithCancel(ctx)
	srv := webhook.NewServer(webhook.Options{Host: wio.LocalServingHost, Port: wio.LocalServingPort,
		TLSOpts: []func(*tls.Config){func(c *tls.Config) {
			c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil }
		}}})
	validator := &countingHandler{Handler: &MeshFunctionValidator{Reader: c, Decoder: admission.NewDecoder(scheme)}}
	srv.Register(inject.MeshFunctionValidatePath, &webhook.Admission{Handler: validator})
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Start(srvCtx) }()
	// The shipped configuration's name before config/default's namePrefix.
	keeper := &inject.CABundleKeeper{Client: c, ValidatingName: "meshfunction-validator", CA: bundle.CACert,
		Interval: time.Second, Clock: clock.RealClock{}, Log: ctrl.Log}
	go func() { _ = keeper.Start(ctx) }()

	// function is a MeshFunction as kubectl sends it (unset fields absent, for the API
	// server to default); templateName sets spec.template.metadata.name.
	function := func(name, templateName string, traffic ...meshv1alpha1.TrafficTarget) *unstructured.Unstructured {
		tmpl := map[string]any{"spec": map[string]any{"containers": []any{map[string]any{"name": "fn", "image": "weft.dev/examples/echo:v1"}}}}
		if templateName != "" {
			tmpl["metadata"] = map[string]any{"name": templateName}
		}
		spec := map[string]any{"template": tmpl}
		if len(traffic) > 0 {
			raw, err := json.Marshal(traffic)
			if err != nil {
				t.Fatal(err)
			}
			var ts []any
			if err := json.Unmarshal(raw, &ts); err != nil {
				t.Fatal(err)
			}
			spec["traffic"] = ts
		}
		u := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
		u.SetGroupVersionKind(meshv1alpha1.GroupVersion.WithKind("MeshFunction"))
		u.SetNamespace("fns")
		u.SetName(name)
		return u
	}
	to := func(rev string, percent int64) meshv1alpha1.TrafficTarget {
		return meshv1alpha1.TrafficTarget{RevisionName: rev, Percent: ptr.To(percent)}
	}
	latest := func(percent int64) meshv1alpha1.TrafficTarget {
		return meshv1alpha1.TrafficTarget{LatestRevision: ptr.To(true), Percent: ptr.To(percent)}
	}
	refused := func(err error, wants ...string) {
		t.Helper()
		if err == nil {
			t.Fatalf("admitted; want refused with %q", wants)
		}
		if !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) {
			t.Fatalf("refused with %v; want the validator's denial", err)
		}
		t.Logf("refused: %v", err)
		for _, w := range wants {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("refusal %q does not say %q", err, w)
			}
		}
	}

	// The first create races the keeper's first caBundle write (with failurePolicy Ignore a
	// request the API server cannot make is admitted), so wait until a bad one is refused.
	deadline := time.Now().Add(60 * time.Second)
	for {
		err := c.Create(ctx, function("probe", "", to("probe-00007", 100)), client.DryRunAll)
		if err != nil && strings.Contains(err.Error(), "has no revision") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the validator never refused an unknown revision (last answer %v)", err)
		}
		time.Sleep(300 * time.Millisecond)
	}

	// Create: only the revision this create makes exists.
	refused(c.Create(ctx, function("hello", "", to("hello-00002", 100))),
		`spec.traffic[0].revisionName: MeshFunction fns/hello has no revision "hello-00002"`, "it has no revisions yet", "this change creates hello-00001")
	refused(c.Create(ctx, function("hello", "", latest(90), to("hello-blue", 10))), `spec.traffic[1].revisionName`, `"hello-blue"`)
	if err := c.Create(ctx, function("hello", "", to("hello-00001", 100))); err != nil {
		t.Fatalf("the revision the create itself makes was refused: %v", err)
	}
	if err := c.Create(ctx, function("named", "named-blue", to("named-blue", 100))); err != nil {
		t.Fatalf("spec.template.metadata.name and traffic to it in one apply (as in Knative) was refused: %v", err)
	}
	calls := validator.calls.Load()
	if err := c.Create(ctx, function("plain", "")); err != nil {
		t.Fatal(err)
	}
	if got := validator.calls.Load(); got != calls {
		t.Errorf("a MeshFunction without spec.traffic reached the validator (%d calls, want %d): the matchCondition should keep it away", got, calls)
	}

	// The reconciler's record of revision 1: its Deployment, controlled by the function.
	hello := &meshv1alpha1.MeshFunction{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: "fns", Name: "hello"}, hello); err != nil {
		t.Fatal(err)
	}
	dep, err := revisionDeployment(hello, "hello-00001", 1, TemplateHash(hello), 0, workload.DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if err := ctrl.SetControllerReference(hello, dep, scheme); err != nil {
		t.Fatal(err)
	}
	if err := c.Create(ctx, dep); err != nil {
		t.Fatal(err)
	}
	// A Deployment named like a revision but not the function's does not make one.
	foreign := dep.DeepCopy()
	foreign.ObjectMeta = metav1.ObjectMeta{Namespace: "fns", Name: "hello-00042", Labels: dep.Labels}
	if err := c.Create(ctx, foreign); err != nil {
		t.Fatal(err)
	}

	// Update: a new template (creates hello-00002) with 10 % to it is admitted; an unknown
	// name is refused with the list of revisions.
	hello.Spec.Template.Spec.Containers[0].Image = "weft.dev/examples/echo:v2"
	hello.Spec.Traffic = []meshv1alpha1.TrafficTarget{to("hello-00001", 90), to("hello-00002", 10)}
	if err := c.Update(ctx, hello); err != nil {
		t.Fatalf("a split between an existing revision and the one this change creates was refused: %v", err)
	}
	bad := hello.DeepCopy()
	bad.Spec.Traffic = []meshv1alpha1.TrafficTarget{to("hello-00001", 50), to("hello-00042", 50)}
	refused(c.Update(ctx, bad), `has no revision "hello-00042"`, "its revisions are hello-00001", "latestRevision: true")
	refused(c.Update(ctx, bad, client.DryRunAll), `has no revision "hello-00042"`) // kubectl apply --dry-run=server too

	// A changed template may not take an existing revision's name.
	reuse := hello.DeepCopy()
	reuse.Spec.Template.Name = "hello-00001"
	reuse.Spec.Template.Spec.Containers[0].Image = "weft.dev/examples/echo:v3"
	refused(c.Update(ctx, reuse), `spec.template.metadata.name: "hello-00001" is already a revision`, "revisions are immutable")

	// A revision deleted by hand that the function already routes to does not block other
	// edits (status reports it; the split served before is kept).
	if err := c.Delete(ctx, dep); err != nil {
		t.Fatal(err)
	}
	if err := c.Get(ctx, client.ObjectKeyFromObject(hello), hello); err != nil {
		t.Fatal(err)
	}
	hello.Spec.Scale.Max = 7
	if err := c.Update(ctx, hello); err != nil {
		t.Fatalf("an edit that keeps the traffic it already had was refused: %v", err)
	}

	// With the webhook down (a manager restarting), applies go through: failurePolicy
	// Ignore; the MeshFunction's status reports the unknown revision instead.
	stopServer()
	<-served
	if err := c.Create(ctx, function("late", "", to("late-00009", 100))); err != nil {
		t.Fatalf("with the validator unreachable the apply was refused (%v); failurePolicy should be Ignore", err)
	}
}
