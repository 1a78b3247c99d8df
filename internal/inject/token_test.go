package inject

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftmesh/weft/contract"
)

// The injected sidecar, and only it, mounts the projected token and CA bundle it
// authenticates to the control plane with; the CA rides on the pod annotation.
func TestInjectMountsXDSCredentials(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "a"}}}}
	cfg := testConfig
	cfg.XDSCA = []byte("ca-pem")
	if _, err := Inject(pod, "default", cfg); err != nil {
		t.Fatal(err)
	}
	if pod.Annotations[contract.AnnotationXDSCA] != "ca-pem" {
		t.Errorf("CA annotation = %q", pod.Annotations[contract.AnnotationXDSCA])
	}
	if len(pod.Spec.Volumes) != 1 || pod.Spec.Volumes[0].Name != contract.TokenVolumeName ||
		pod.Spec.Volumes[0].Projected.Sources[0].ServiceAccountToken.Audience != contract.TokenAudience {
		t.Fatalf("volumes = %+v", pod.Spec.Volumes)
	}
	for _, c := range pod.Spec.Containers {
		has := len(c.VolumeMounts) == 1 && c.VolumeMounts[0].MountPath == contract.TokenDir && c.VolumeMounts[0].ReadOnly
		if has != (c.Name == ContainerName) {
			t.Errorf("container %s: token mounted %v", c.Name, has)
		}
	}
}
