//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftmesh/weft/internal/sandbox"
)

// TestImagesRunInTheMesh builds the sidecar and echo images with hack/images (what `make
// images` runs), pushes them to the registry the local mesh serves (TestMain starts it with
// Registry), and deploys an echo Service whose pods name the echo image by digest. The
// injected sidecar is the manager's ghcr.io/weftmesh/weft-sidecar:dev, which the node agent
// now pulls from the registry's mirror of ghcr.io/weftmesh. Both containers must run from
// their image roots, and the caller's calls through its sidecar and the MeshRoute must reach
// the echo through the image-run sidecar. At the end the sidecar tag is deleted, so pods the
// later tests create map to bin/sidecar again.
//
// TestInstallManifest (release_test.go) goes further: the manager from install.yaml, as a pod.
func TestImagesRunInTheMesh(t *testing.T) {
	state := filepath.Dir(kubeconfig)
	b, err := os.ReadFile(sandbox.RegistryFile(state))
	if err != nil {
		t.Fatalf("the mesh serves no registry (TestMain's Options.Registry): %v", err)
	}
	addr := strings.TrimSpace(string(b))
	repo := addr + "/weftmesh"

	out := t.TempDir()
	start := time.Now()
	build := exec.Command("go", "run", "./hack/images", "-only", "weft-sidecar,weft-example-echo",
		"-platforms", "linux/"+runtime.GOARCH, "-version", "dev", "-registry", repo, "-out", out)
	build.Dir = root
	if o, err := build.CombinedOutput(); err != nil {
		t.Fatalf("hack/images: %v\n%s", err, o)
	} else {
		t.Logf("built and pushed in %s:\n%s", time.Since(start).Round(time.Second), o)
	}
	sidecarTag, err := name.ParseReference(repo + "/weft-sidecar:dev")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := remote.Delete(sidecarTag); err != nil {
			t.Errorf("deleting %s (later tests' pods would run it): %v", sidecarTag, err)
		}
	})
	echo := builtRef(t, filepath.Join(out, "images.txt"), repo+"/weft-example-echo:dev")

	manifest := fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: imgecho, namespace: default}
spec:
  selector: {app: imgecho}
  ports: [{name: http, port: 9080, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: imgecho, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: imgecho}}
  template:
    metadata: {labels: {app: imgecho}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: echo
        image: %s
        env: [{name: VERSION, value: from-image}]
        ports: [{containerPort: 8080}]
        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
        securityContext: {readOnlyRootFilesystem: true, runAsNonRoot: true}
---
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshRoute
metadata: {name: imgecho, namespace: default}
spec:
  hosts: [imgecho]
  http:
  - name: all
    route: [{service: imgecho, port: 9080}]
`, echo)
	path := filepath.Join(t.TempDir(), "imgecho.yaml")
	if err := os.WriteFile(path, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if o, err := kubectl("apply", "-f", path); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, o)
	}
	t.Cleanup(func() { _, _ = kubectl("delete", "-f", path, "--wait=false") })

	var podName string
	eventually(t, 4*time.Minute, "the imgecho pod running and ready", func() error {
		ps := pods(t, "app=imgecho")
		if len(ps) != 1 || !readyRunning(ps[0]) {
			if len(ps) > 0 {
				return fmt.Errorf("pod %s: %s %+v %+v", ps[0].Name, ps[0].Status.Phase, ps[0].Status.InitContainerStatuses, ps[0].Status.ContainerStatuses)
			}
			return fmt.Errorf("%d imgecho pods", len(ps))
		}
		podName = ps[0].Name
		return nil
	})
	// Each container ran from a root the agent assembled from its image (rootfs.go).
	roots := filepath.Join(state, "pods", "default_"+podName, "roots")
	for _, c := range []string{"weft-sidecar", "echo"} {
		for _, f := range []string{"etc/passwd", map[string]string{"weft-sidecar": "sidecar", "echo": "echo"}[c]} {
			if _, err := os.Stat(filepath.Join(roots, c, f)); err != nil {
				t.Errorf("container %s did not run from its image: %v", c, err)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(roots, "weft-sidecar", "weft-init")); err != nil {
		t.Errorf("the sidecar image lacks weft-init: %v", err)
	}

	routed(t, "http://imgecho:9080/", func(g tally) bool { return g.ByVersion["from-image"] == 20 })
	got, err := call(t, "http://imgecho:9080/", 200)
	if err != nil {
		t.Fatal(err)
	}
	if got.ByStatus["200"] != 200 || got.ByVersion["from-image"] != 200 {
		t.Errorf("200 calls through the image-run sidecar: %+v", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if p, err := cs.CoreV1().Pods("default").Get(ctx, podName, metav1.GetOptions{}); err == nil {
		var imgs []string
		for _, c := range append(p.Spec.InitContainers, p.Spec.Containers...) {
			imgs = append(imgs, c.Name+"="+c.Image)
		}
		t.Logf("pod %s runs %s from %s", podName, strings.Join(imgs, ", "), roots)
	}
}

// builtRef finds the digest hack/images wrote for ref in images.txt and returns ref@digest
// without the tag (repository@sha256:...).
func builtRef(t *testing.T, list, ref string) string {
	t.Helper()
	f, err := os.Open(list)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 2 && fields[0] == ref {
			return strings.TrimSuffix(ref, ":dev") + "@" + fields[1]
		}
	}
	t.Fatalf("%s lacks %s", list, ref)
	return ""
}
