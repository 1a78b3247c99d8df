package images

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/weftmesh/weft/internal/image"
	"github.com/weftmesh/weft/testenv"
)

// TestReleaseManifests runs `make release`'s program (linux/amd64 only, to keep it short)
// and checks dist/install.yaml: it parses, it holds what an install needs, every container
// image and the manager's --sidecar-image are pinned to the digests just built, and a real
// kube-apiserver accepts it with `kubectl apply --dry-run=server` — and refuses a broken copy,
// so the check is not vacuous.
func TestReleaseManifests(t *testing.T) {
	if _, err := exec.LookPath("kubectl"); err != nil {
		testenv.Missing(t, "kubectl is not on PATH: the release renders config/default with kubectl kustomize")
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		testenv.Missing(t, "KUBEBUILDER_ASSETS is not set: run `make test`, or export KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh | tail -n1)")
	}
	out := filepath.Join(t.TempDir(), "dist")
	buildImages(t, out, nil, "-release", "-version", "v0.0.0-release", "-platforms", "linux/amd64")
	built := images(t, out)
	pinned := map[string]string{} // image name → repo@digest
	for ref, d := range built {
		repo, _, _ := strings.Cut(ref, ":v0.0.0-release")
		pinned[filepath.Base(repo)] = repo + "@" + d
	}
	for _, n := range []string{"weft-manager", "weft-sidecar", "weft", "weft-example-echo"} {
		if pinned[n] == "" {
			t.Fatalf("images.txt lacks %s: %v", n, built)
		}
	}

	install, err := os.ReadFile(filepath.Join(out, "install.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if bad := image.Unpinned(install, "ghcr.io/weftmesh"); len(bad) > 0 {
		t.Errorf("install.yaml names images without a digest: %v", bad)
	}
	objs := decodeAll(t, install)
	kinds := map[string]int{}
	var images []string
	var managerArgs []string
	for _, o := range objs {
		kinds[o.GetKind()]++
		for _, field := range []string{"containers", "initContainers"} {
			cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", field)
			for _, c := range cs {
				cm, _ := c.(map[string]any)
				img, _ := cm["image"].(string)
				images = append(images, img)
				if o.GetKind() == "Deployment" && o.GetName() == "weft-manager" && cm["name"] == "manager" {
					args, _, _ := unstructured.NestedStringSlice(cm, "args")
					managerArgs = args
				}
			}
		}
	}
	for kind, min := range map[string]int{"CustomResourceDefinition": 3, "Namespace": 1, "Deployment": 1, "ServiceAccount": 1,
		"ClusterRole": 1, "ClusterRoleBinding": 1, "Service": 2, "MutatingWebhookConfiguration": 1, "ValidatingWebhookConfiguration": 1} {
		if kinds[kind] < min {
			t.Errorf("install.yaml holds %d %s, want at least %d (all: %v)", kinds[kind], kind, min, kinds)
		}
	}
	if len(images) != 1 || images[0] != pinned["weft-manager"] {
		t.Errorf("container images %q, want exactly the manager pinned: %s", images, pinned["weft-manager"])
	}
	wantFlag := "--sidecar-image=" + pinned["weft-sidecar"]
	found := false
	for _, a := range managerArgs {
		found = found || a == wantFlag
	}
	if !found {
		t.Errorf("manager args %q lack %s", managerArgs, wantFlag)
	}

	kubeconfig := startAPIServer(t)
	kubectl(t, kubeconfig, nil, "create", "namespace", "weft-system")
	dry := kubectl(t, kubeconfig, nil, "apply", "--dry-run=server", "-f", filepath.Join(out, "install.yaml"))
	if !strings.Contains(dry, "deployment.apps/weft-manager created (server dry run)") {
		t.Errorf("kubectl apply --dry-run=server did not report the manager:\n%s", dry)
	}
	if n := strings.Count(dry, "(server dry run)"); n != len(objs) {
		t.Errorf("kubectl reported %d objects, install.yaml holds %d:\n%s", n, len(objs), dry)
	}

	// A copy with an impossible value must be refused by the same check.
	loc := regexp.MustCompile(`(?m)^  replicas: [0-9]+$`).FindIndex(install)
	if loc == nil {
		t.Fatal("install.yaml has no 'replicas: N' to break")
	}
	broken := append(append(append([]byte(nil), install[:loc[0]]...), "  replicas: -1"...), install[loc[1]:]...)
	brokenPath := filepath.Join(out, "broken.yaml")
	if err := os.WriteFile(brokenPath, broken, 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command("kubectl", "--kubeconfig", kubeconfig, "apply", "--dry-run=server", "-f", brokenPath)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err == nil || !strings.Contains(stderr.String(), "replicas") {
		t.Errorf("the API server accepted replicas: -1 (err %v): %s", err, stderr.String())
	}
}

// decodeAll reads every document of a multi-document YAML stream.
func decodeAll(t *testing.T, b []byte) []*unstructured.Unstructured {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	var out []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		err := dec.Decode(&u.Object)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("install.yaml document %d does not parse: %v", len(out)+1, err)
		}
		if len(u.Object) == 0 {
			continue
		}
		if u.GetAPIVersion() == "" || u.GetKind() == "" || u.GetName() == "" {
			t.Fatalf("install.yaml document %d lacks apiVersion, kind or name: %v", len(out)+1, u.Object)
		}
		out = append(out, u)
	}
	if len(out) == 0 {
		t.Fatal("install.yaml holds no objects")
	}
	return out
}

// startAPIServer starts envtest's kube-apiserver and etcd (no CRDs: the release installs
// them) and returns an admin kubeconfig file.
func startAPIServer(t *testing.T) string {
	t.Helper()
	logf.SetLogger(logr.Discard())
	env := &envtest.Environment{}
	if _, err := env.Start(); err != nil {
		t.Fatalf("starting envtest: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stopping envtest: %v", err)
		}
	})
	admin, err := env.ControlPlane.AddUser(envtest.User{Name: "weft-release-test", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := admin.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func kubectl(t *testing.T, kubeconfig string, stdin []byte, args ...string) string {
	t.Helper()
	cmd := exec.Command("kubectl", append([]string{"--kubeconfig", kubeconfig}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}
