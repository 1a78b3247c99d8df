package sandbox

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftmesh/weft/internal/workload"
	"github.com/weftmesh/weft/testenv"
)

// A projected volume is bind-mounted read-only at the container's mountPath inside the
// process's own mount namespace: the process reads the pod's token there, cannot write it,
// and the host (and so every other pod) sees nothing at that path. Needs root and iproute2.
func TestProjectedVolumeIsMountedForThePodOnly(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root for ip netns and mount")
	}
	const netns = "auth-vol"
	if out, err := exec.Command("ip", "netns", "add", netns).CombinedOutput(); err != nil {
		testenv.Missing(t, "ip netns add: "+string(out))
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", netns).Run() })

	mountPath := filepath.Join(t.TempDir(), "secrets", "tokens") // not created on the host
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p"}}
	workload.AddXDSCredentials(&pod.ObjectMeta, &pod.Spec, "sidecar", []byte("ca"))
	pod.Spec.Containers = []corev1.Container{{Name: "sidecar", VolumeMounts: []corev1.VolumeMount{{Name: pod.Spec.Volumes[0].Name, MountPath: mountPath, ReadOnly: true}}}}
	// An unsupported volume (a configMap) is neither written nor mounted.
	pod.Spec.Volumes = append(pod.Spec.Volumes, corev1.Volume{Name: "cm", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{}}})
	pod.Spec.Containers[0].VolumeMounts = append(pod.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: "cm", MountPath: "/nonexistent/cm"})
	r := &podRuntime{a: &Agent{opts: AgentOptions{StateDir: t.TempDir()}}, pod: pod}
	if err := writeAtomic(filepath.Join(r.projectedDir(pod.Spec.Volumes[0].Name), "weft-token"), []byte("tok-of-p")); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		cmd := append([]string{"netns", "exec", netns}, r.mountPrefix(&pod.Spec.Containers[0])...)
		out, err := exec.Command("ip", append(cmd, args...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := run("cat", filepath.Join(mountPath, "weft-token")); err != nil || out != "tok-of-p" {
		t.Fatalf("the container read %q (%v), want the pod's token", out, err)
	}
	if _, err := run("sh", "-c", "echo x > "+filepath.Join(mountPath, "weft-token")); err == nil {
		t.Error("the container could write its token volume")
	}
	if entries, _ := os.ReadDir(mountPath); len(entries) != 0 {
		t.Errorf("the host sees %d files at the mount path", len(entries))
	}
	if got := r.mountPrefix(&corev1.Container{Name: "app"}); got != nil {
		t.Errorf("a container without mounts got a mount prefix %q", got)
	}
}
