//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/weftmesh/weft/internal/sandbox"
)

// installNS is where TestInstallManifest deploys its workloads; labelled for injection, so
// the in-cluster manager's webhook gives its pods their sidecars.
const installNS = "install-e2e"

// installVersion tags the images TestInstallManifest pushes. It must not be "dev": the
// host manager's ghcr.io/weftmesh/weft-sidecar:dev would map to the registry's copy.
const installVersion = "install-e2e"

// installRelease builds the release's images and install.yaml (hack/images -release, as
// `make release`), stops the host manager and applies install.yaml, so the manager runs as
// Pods of the local mesh; cleanups delete the install (but its CRDs and namespace) and
// start the host manager again. It returns the mesh's state directory and image repository.
func installRelease(t *testing.T) (state, repo string) {
	state = filepath.Dir(kubeconfig)
	b, err := os.ReadFile(sandbox.RegistryFile(state))
	if err != nil {
		t.Fatalf("the mesh serves no registry (TestMain's Options.Registry): %v", err)
	}
	repo = strings.TrimSpace(string(b)) + "/weftmesh"
	out := t.TempDir()
	start := time.Now()
	build := exec.Command("go", "run", "./hack/images", "-release", "-only", "weft-manager,weft-sidecar",
		"-platforms", "linux/"+runtime.GOARCH, "-version", installVersion, "-registry", repo, "-out", out)
	build.Dir = root
	if o, err := build.CombinedOutput(); err != nil {
		t.Fatalf("hack/images -release: %v\n%s", err, o)
	}
	t.Logf("images built and pushed, install.yaml written in %s", time.Since(start).Round(time.Second))
	install := filepath.Join(out, "install.yaml")
	manifest, err := os.ReadFile(install)
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range []string{"weft-manager", "weft-sidecar"} {
		if !bytes.Contains(manifest, []byte(repo+"/"+img+"@sha256:")) {
			t.Fatalf("install.yaml does not pin %s/%s by digest", repo, img)
		}
	}

	if err := managerSwitch.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := managerSwitch.Start(cctx); err != nil {
			t.Errorf("starting the host manager again (later tests need it): %v", err)
		}
	})
	removable := filepath.Join(out, "install-removable.yaml")
	if err := os.WriteFile(removable, withoutKinds(t, manifest, "CustomResourceDefinition", "Namespace"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if o, err := kubectl("delete", "-f", removable, "--ignore-not-found", "--wait=true", "--timeout=2m"); err != nil {
			t.Errorf("deleting the install: %v\n%s", err, o)
		}
	})
	if o, err := kubectl("apply", "--server-side", "--force-conflicts", "-f", install); err != nil {
		t.Fatalf("kubectl apply -f install.yaml: %v\n%s", err, o)
	}

	return state, repo
}

// TestInstallManifest is the release as a user installs it: hack/images -release (what
// `make release` runs) builds the manager and sidecar images, pushes them to the mesh's
// registry and writes install.yaml with both pinned by digest; the host manager is stopped
// and install.yaml applied, so the manager runs as a Pod of the local mesh from its image,
// reaching the API server through the kubernetes Service with its ServiceAccount's token.
// Then the manager pod must be ready, own the injection webhook (caBundle published, called
// through its Service), inject a sidecar running the pinned image into new pods, and program
// it: calls from a caller to http://echo go to echo-v2 as the MeshRoute says, where kube-proxy
// alone would send them to echo-v1; and a MeshFunction starts from zero for a call.
// Afterwards install.yaml's objects (but its CRDs and namespace, which other tests' objects
// live in) are deleted and the host manager started again.
func TestInstallManifest(t *testing.T) {
	state, repo := installRelease(t)
	ctx := context.Background()
	mgr := waitManagerPod(t, state)
	for _, c := range mgr.Spec.Containers {
		if c.Name == "manager" && !strings.HasPrefix(c.Image, repo+"/weft-manager@sha256:") {
			t.Errorf("the manager pod runs %s, want the pinned image", c.Image)
		}
	}
	if _, err := os.Stat(filepath.Join(state, "pods", "weft-system_"+mgr.Name, "roots", "manager", "manager")); err != nil {
		t.Errorf("the manager did not run from its image: %v", err)
	}
	eventually(t, 2*time.Minute, "the webhook configuration names the in-cluster manager's Service and CA", func() error {
		mwc, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "weft-sidecar-injector", metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, w := range mwc.Webhooks {
			if w.ClientConfig.Service == nil || w.ClientConfig.Service.Name != "weft-webhook-service" || len(w.ClientConfig.CABundle) == 0 {
				return fmt.Errorf("webhook %s: clientConfig %+v", w.Name, w.ClientConfig)
			}
		}
		vwc, err := cs.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, "weft-meshfunction-validator", metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, w := range vwc.Webhooks {
			if w.ClientConfig.Service == nil || w.ClientConfig.Service.Name != "weft-webhook-service" || len(w.ClientConfig.CABundle) == 0 {
				return fmt.Errorf("validating webhook %s: clientConfig %+v", w.Name, w.ClientConfig)
			}
		}
		return nil
	})

	apply(t, installWorkloads)
	t.Cleanup(func() {
		_ = cs.CoreV1().Namespaces().Delete(context.Background(), installNS, metav1.DeleteOptions{})
	})
	caller := installPod(t, "caller")
	// The sidecar and the capture init container both run install.yaml's pinned image (the
	// host manager would inject ghcr.io/weftmesh/weft-sidecar:dev).
	images := map[string]string{}
	for _, c := range append(caller.Spec.InitContainers, caller.Spec.Containers...) {
		images[c.Name] = c.Image
	}
	for _, name := range []string{"weft-sidecar", "weft-init"} {
		if !strings.HasPrefix(images[name], repo+"/weft-sidecar@sha256:") {
			t.Errorf("the caller's %s container runs %q, want install.yaml's pinned %s/weft-sidecar (containers: %v)", name, images[name], repo, images)
		}
	}
	installPod(t, "echo-v1")
	installPod(t, "echo-v2")

	// kube-proxy alone sends http://echo:9080 to echo-v1 (the Service's selector); only the
	// caller's sidecar, configured by the in-cluster manager from the MeshRoute, sends it to v2.
	var (
		got tally
		err error
	)
	eventually(t, 3*time.Minute, "calls to http://echo:9080 routed to echo-v2 by the caller's sidecar", func() error {
		got, err = callFrom(caller, "http://echo:9080/", 20)
		if err != nil {
			return err
		}
		if got.ByVersion["v2"] != 20 {
			return fmt.Errorf("answers %+v", got)
		}
		return nil
	})
	t.Logf("20 calls through the sidecar the in-cluster manager injected and configured: %v", got.ByVersion)

	// A MeshFunction at zero starts for a call the caller's sidecar holds.
	fn, err := cs.AppsV1().Deployments(installNS).Get(ctx, "hello", metav1.GetOptions{})
	if err == nil && fn.Spec.Replicas != nil && *fn.Spec.Replicas != 0 {
		t.Errorf("MeshFunction hello starts at %d replicas, want 0", *fn.Spec.Replicas)
	}
	eventually(t, 3*time.Minute, "a call to the MeshFunction hello, from zero", func() error {
		got, err = callFrom(caller, "http://hello/", 3)
		if err != nil {
			return err
		}
		if got.ByVersion["hello-install"] != 3 {
			return fmt.Errorf("answers %+v", got)
		}
		return nil
	})
	t.Logf("MeshFunction hello answered from zero: %+v", got)
}

// installWorkloads: echo-v1 behind Service echo, echo-v2 behind Service echo-v2, a MeshRoute
// sending http://echo to echo-v2, the caller, and a MeshFunction at zero.
var installWorkloads = `apiVersion: v1
kind: Namespace
metadata:
  name: install-e2e
  labels: {weft.dev/inject: enabled}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: install-e2e}
spec:
  selector: {app: echo-v1}
  ports: [{name: http, port: 9080, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-v2, namespace: install-e2e}
spec:
  selector: {app: echo-v2}
  ports: [{name: http, port: 9080, targetPort: 8080}]
---
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshRoute
metadata: {name: echo, namespace: install-e2e}
spec:
  hosts: [echo]
  http:
  - name: to-v2
    route: [{service: echo-v2, port: 9080}]
---
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {name: hello, namespace: install-e2e}
spec:
  port: 8080
  template:
    spec:
      containers:
      - name: function
        image: weft.dev/examples/echo:latest
        env: [{name: VERSION, value: hello-install}]
  scale: {initial: 0, max: 1, stableWindow: 6s, scaleToZeroGracePeriod: 2s}
  activation: {holdTimeout: 60s, maxPending: 50}
` + installDeployment("echo-v1", "weft.dev/examples/echo:latest", "v1", "/") +
	installDeployment("echo-v2", "weft.dev/examples/echo:latest", "v2", "/") +
	installDeployment("caller", "weft.dev/examples/caller:latest", "", "/healthz")

// installDeployment is one pod of app. The caller declares no port, as in examples/demo: its
// sidecar then has no inbound listener and the test reaches its /call directly.
func installDeployment(app, image, version, probe string) string {
	ports := "\n        ports: [{containerPort: 8080}]"
	if app == "caller" {
		ports = ""
	}
	return fmt.Sprintf(`---
apiVersion: apps/v1
kind: Deployment
metadata: {name: %[1]s, namespace: install-e2e}
spec:
  replicas: 1
  selector: {matchLabels: {app: %[1]s}}
  template:
    metadata: {labels: {app: %[1]s}}
    spec:
      # Above install.yaml's --sidecar-drain-seconds=5: the injected sidecar's preStop
      # sleeps that long, and a pod whose grace period is shorter is refused.
      terminationGracePeriodSeconds: 10
      containers:
      - name: %[1]s
        image: %[2]s
        env: [{name: VERSION, value: "%[3]s"}]%[5]s
        readinessProbe: {httpGet: {path: %[4]s, port: 8080}, periodSeconds: 1}
`, app, image, version, probe, ports)
}

func apply(t *testing.T, manifest string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "m.yaml")
	if err := os.WriteFile(path, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if o, err := kubectl("apply", "-f", path); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, o)
	}
}

// waitManagerPod waits for Deployment weft-system/weft-manager to be available and returns
// its pod; on a timeout it quotes the pod's status and the manager's log.
func waitManagerPod(t *testing.T, state string) corev1.Pod {
	t.Helper()
	ctx := context.Background()
	var pod corev1.Pod
	deadline := time.Now().Add(4 * time.Minute)
	for {
		d, err := cs.AppsV1().Deployments("weft-system").Get(ctx, "weft-manager", metav1.GetOptions{})
		l, lerr := cs.CoreV1().Pods("weft-system").List(ctx, metav1.ListOptions{LabelSelector: "control-plane=weft-manager"})
		if err == nil && lerr == nil && available(d) {
			for _, p := range l.Items {
				if readyRunning(p) {
					return p
				}
			}
		}
		if lerr == nil && len(l.Items) > 0 {
			pod = l.Items[0]
		}
		if time.Now().After(deadline) {
			logs, _ := os.ReadFile(filepath.Join(state, "pods", "weft-system_"+pod.Name, "manager.log"))
			t.Fatalf("Deployment weft-system/weft-manager not available after 4 minutes (%v); pod %s: %s %+v\nmanager log (tail):\n%s",
				err, pod.Name, pod.Status.Phase, pod.Status.ContainerStatuses, tailBytes(logs, 3000))
		}
		time.Sleep(2 * time.Second)
	}
}

func available(d *appsv1.Deployment) bool {
	for _, c := range d.Status.Conditions {
		if c.Type == appsv1.DeploymentAvailable && c.Status == corev1.ConditionTrue {
			return d.Status.ReadyReplicas >= 1
		}
	}
	return false
}

func tailBytes(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func installPod(t *testing.T, app string) corev1.Pod {
	t.Helper()
	return readyPod(t, installNS, app, 4*time.Minute)
}

// withoutKinds returns the YAML stream without the documents of the given kinds.
func withoutKinds(t *testing.T, stream []byte, kinds ...string) []byte {
	t.Helper()
	var keep []string
	for _, doc := range strings.Split(string(stream), "\n---\n") {
		var meta struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("install.yaml: %v", err)
		}
		drop := meta.Kind == ""
		for _, k := range kinds {
			drop = drop || meta.Kind == k
		}
		if !drop {
			keep = append(keep, doc)
		}
	}
	return []byte(strings.Join(keep, "\n---\n") + "\n")
}
