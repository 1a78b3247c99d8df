package sandbox

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/weftmesh/weft/internal/inject"
)

// TestWebhookNeverCoversClusterOrManagerNamespaces pins issue 12 item 8: with
// failurePolicy Fail for whole namespaces, a manager that was down stopped every Pod in
// them from being created. The policy stays Fail, but kube-system and the manager's own
// namespace (and the other kube-* ones) are never sent to the webhook, whatever their
// labels, in the shipped manifest and in the local mesh alike.
func TestWebhookNeverCoversClusterOrManagerNamespaces(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "config", "webhook", "manifests.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var shipped admissionregistrationv1.MutatingWebhookConfiguration
	if err := yaml.Unmarshal(raw, &shipped); err != nil {
		t.Fatalf("config/webhook/manifests.yaml: %v", err)
	}
	local := webhookConfiguration("https://127.0.0.1:9443/inject-pod")
	for _, cfg := range []struct {
		name string
		mwc  *admissionregistrationv1.MutatingWebhookConfiguration
	}{{"config/webhook/manifests.yaml", &shipped}, {"weft dev", local}} {
		if len(cfg.mwc.Webhooks) != 2 {
			t.Fatalf("%s: %d webhooks, want 2", cfg.name, len(cfg.mwc.Webhooks))
		}
		for _, wh := range cfg.mwc.Webhooks {
			if wh.FailurePolicy == nil || *wh.FailurePolicy != admissionregistrationv1.Fail {
				t.Errorf("%s %s: failurePolicy %v, want Fail", cfg.name, wh.Name, wh.FailurePolicy)
			}
			sel, err := metav1.LabelSelectorAsSelector(wh.NamespaceSelector)
			if err != nil {
				t.Fatalf("%s %s: %v", cfg.name, wh.Name, err)
			}
			for _, ns := range []string{"kube-system", "kube-public", "kube-node-lease", "weft-system"} {
				for _, inject := range []string{"enabled", "disabled", ""} {
					l := labels.Set{corev1.LabelMetadataName: ns}
					if inject != "" {
						l["weft.dev/inject"] = inject
					}
					if sel.Matches(l) {
						t.Errorf("%s %s: namespace %s with labels %v is sent to the webhook", cfg.name, wh.Name, ns, l)
					}
				}
			}
			meshed := labels.Set{corev1.LabelMetadataName: "shop", "weft.dev/inject": "enabled"}
			plain := labels.Set{corev1.LabelMetadataName: "shop"}
			if want := wh.Name == "namespace.inject.weft.dev"; sel.Matches(meshed) != want || sel.Matches(plain) == want {
				t.Errorf("%s %s: selector %s picks the wrong user namespaces", cfg.name, wh.Name, sel)
			}
		}
	}
	// The local mesh runs what the manifest ships, bar the address.
	for i := range shipped.Webhooks {
		a, b := shipped.Webhooks[i], local.Webhooks[i]
		a.ClientConfig, b.ClientConfig = admissionregistrationv1.WebhookClientConfig{}, admissionregistrationv1.WebhookClientConfig{}
		for _, s := range []*metav1.LabelSelector{a.NamespaceSelector, b.NamespaceSelector, a.ObjectSelector, b.ObjectSelector} {
			slices.SortFunc(s.MatchExpressions, func(x, y metav1.LabelSelectorRequirement) int {
				return strings.Compare(x.Key, y.Key)
			})
		}
		if d := cmp.Diff(a, b); d != "" {
			t.Errorf("webhook %s differs between config/webhook/manifests.yaml and weft dev (-shipped +local):\n%s", a.Name, d)
		}
	}
}

// TestValidatingWebhookMatchesShipped: the local mesh registers the MeshFunction validator
// exactly as config/webhook ships it (failurePolicy Ignore, the matchCondition), bar the
// address and the name's prefix.
func TestValidatingWebhookMatchesShipped(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "config", "webhook", "manifests.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var shipped *admissionregistrationv1.ValidatingWebhookConfiguration
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		var v admissionregistrationv1.ValidatingWebhookConfiguration
		if err := yaml.Unmarshal([]byte(doc), &v); err != nil {
			t.Fatalf("config/webhook/manifests.yaml: %v", err)
		}
		if v.Kind == "ValidatingWebhookConfiguration" {
			shipped = &v
		}
	}
	if shipped == nil || len(shipped.Webhooks) != 1 {
		t.Fatalf("config/webhook/manifests.yaml has no ValidatingWebhookConfiguration with one webhook: %+v", shipped)
	}
	if "weft-"+shipped.Name != inject.ValidatingWebhookConfigName {
		t.Errorf("shipped name %q becomes weft-%s, but the manager keeps the caBundle of %q", shipped.Name, shipped.Name, inject.ValidatingWebhookConfigName)
	}
	if p := shipped.Webhooks[0].ClientConfig.Service; p == nil || p.Path == nil || *p.Path != inject.MeshFunctionValidatePath {
		t.Errorf("shipped webhook calls %+v, want path %s", p, inject.MeshFunctionValidatePath)
	}
	local := validatingConfiguration("https://127.0.0.1:9443" + inject.MeshFunctionValidatePath)
	a, b := shipped.Webhooks[0], local.Webhooks[0]
	a.ClientConfig, b.ClientConfig = admissionregistrationv1.WebhookClientConfig{}, admissionregistrationv1.WebhookClientConfig{}
	if d := cmp.Diff(a, b); d != "" {
		t.Errorf("the validator differs between config/webhook/manifests.yaml and weft dev (-shipped +local):\n%s", d)
	}
}
