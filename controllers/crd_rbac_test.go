package controllers

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// managerNamespace is where config/default installs the manager.
const managerNamespace = "weft-system"

// renderedRBAC returns the Roles and ClusterRoles a user installs: `kubectl kustomize
// config/default` when kubectl is on PATH, else the config/rbac files as they are.
func renderedRBAC(t *testing.T) (roles []rbacv1.Role, clusterRoles []rbacv1.ClusterRole, ns string) {
	t.Helper()
	var docs [][]byte
	ns = managerNamespace
	if kubectl, err := exec.LookPath("kubectl"); err == nil {
		out, err := exec.Command(kubectl, "kustomize", filepath.Join("..", "config", "default")).Output()
		if err != nil {
			t.Fatalf("kubectl kustomize config/default: %v", err)
		}
		docs = append(docs, out)
	} else {
		t.Log("kubectl is not on PATH: checking config/rbac as written")
		ns = "system"
		files, _ := filepath.Glob(filepath.Join("..", "config", "rbac", "*.yaml"))
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			docs = append(docs, b)
		}
	}
	for _, d := range docs {
		r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(d)))
		for {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			var meta struct{ Kind string }
			if err := yaml.Unmarshal(doc, &meta); err != nil {
				t.Fatal(err)
			}
			switch meta.Kind {
			case "Role":
				var r rbacv1.Role
				if err := yaml.UnmarshalStrict(doc, &r); err != nil {
					t.Fatal(err)
				}
				roles = append(roles, r)
			case "ClusterRole":
				var r rbacv1.ClusterRole
				if err := yaml.UnmarshalStrict(doc, &r); err != nil {
					t.Fatal(err)
				}
				clusterRoles = append(clusterRoles, r)
			}
		}
	}
	return roles, clusterRoles, ns
}

var writeVerbs = []string{"create", "update", "patch", "delete", "deletecollection", "*"}

func writes(r rbacv1.PolicyRule) bool {
	return slices.ContainsFunc(r.Verbs, func(v string) bool { return slices.Contains(writeVerbs, v) })
}

func coversSecrets(r rbacv1.PolicyRule) bool {
	return (slices.Contains(r.APIGroups, "") || slices.Contains(r.APIGroups, "*")) &&
		(slices.Contains(r.Resources, "secrets") || slices.Contains(r.Resources, "*"))
}

// TestRBACLeastPrivilege pins issue 13's RBAC findings: no wildcard anywhere, no
// cluster-wide write to Secrets (only a Role in the manager's namespace), the webhook
// configuration writable by name only, and no rule for things the code never calls.
func TestRBACLeastPrivilege(t *testing.T) {
	roles, clusterRoles, ns := renderedRBAC(t)
	if len(clusterRoles) == 0 {
		t.Fatal("no ClusterRole rendered")
	}
	check := func(kind, name string, rules []rbacv1.PolicyRule, clusterWide bool) {
		for _, r := range rules {
			for _, list := range [][]string{r.APIGroups, r.Resources, r.Verbs, r.ResourceNames, r.NonResourceURLs} {
				if slices.Contains(list, "*") {
					t.Errorf("%s %s has a wildcard: %+v", kind, name, r)
				}
			}
			if clusterWide && coversSecrets(r) && writes(r) {
				t.Errorf("%s %s writes Secrets cluster-wide (%v): use the Role in the manager's namespace", kind, name, r.Verbs)
			}
			if slices.Contains(r.Resources, "deployments/scale") {
				t.Errorf("%s %s grants deployments/scale, which the manager never calls", kind, name)
			}
			// The leader-election Role keeps the scaffold's core events for the lock's own
			// events; the manager's roles grant exactly what its recorder uses.
			if strings.Contains(name, "manager-role") && slices.Contains(r.Resources, "events") && (!slices.Equal(r.APIGroups, []string{"events.k8s.io"}) || !slices.Equal(r.Verbs, []string{"create", "patch"})) {
				t.Errorf("%s %s: events must be events.k8s.io create and patch only (the events/v1 recorder), got %+v", kind, name, r)
			}
			if slices.Contains(r.Resources, "mutatingwebhookconfigurations") && writes(r) &&
				!slices.Equal(r.ResourceNames, []string{"weft-sidecar-injector"}) {
				t.Errorf("%s %s may write every MutatingWebhookConfiguration: restrict it to resourceNames [weft-sidecar-injector]", kind, name)
			}
		}
	}
	for _, cr := range clusterRoles {
		check("ClusterRole", cr.Name, cr.Rules, true)
	}
	secretWriter := false
	for _, r := range roles {
		check("Role", r.Namespace+"/"+r.Name, r.Rules, false)
		for _, rule := range r.Rules {
			if coversSecrets(rule) && writes(rule) {
				if r.Namespace != ns {
					t.Errorf("Role %s/%s writes Secrets outside the manager's namespace %s", r.Namespace, r.Name, ns)
				}
				secretWriter = true
			}
		}
	}
	if !secretWriter {
		t.Errorf("no Role lets the manager write its own Secrets (webhook certificate, NATS token) in %s", ns)
	}
}
