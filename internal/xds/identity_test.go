package xds

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftmesh/weft/internal/workload"
)

// The view of a verified pod comes from its sidecar container's arguments, which cannot
// change once the pod exists: --inbound-capture (a pod that serves only TCP, injected with
// its inbound captured) gives the TCP-only inbound listener; a pod injected before the flag
// existed, or an argument that only looks like it, does not.
func TestViewOfPodInboundCapture(t *testing.T) {
	pod := func(args ...string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "redis-0", Labels: map[string]string{"app": "redis"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "redis", Args: []string{"--inbound-capture"}},
				{Name: workload.SidecarContainerName, Args: args}}}}
	}
	for _, tc := range []struct {
		name    string
		args    []string
		appPort uint32
		capture bool
	}{
		{"TCP-only pod", []string{"--xds-address=x:18000", "--inbound-capture"}, 0, true},
		{"explicit true", []string{"--inbound-capture=true"}, 0, true},
		{"injected before the flag", []string{"--xds-address=x:18000"}, 0, false},
		{"false", []string{"--inbound-capture=false"}, 0, false},
		{"lookalike", []string{"--inbound-capture-all"}, 0, false},
		{"with an app port", []string{"--app-port=8080", "--inbound-capture"}, 8080, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The app container's own --inbound-capture (first) is not the sidecar's.
			v := viewOfPod(pod(tc.args...))
			if v.AppPort != tc.appPort || v.InboundCapture != tc.capture || v.Namespace != "shop" {
				t.Errorf("viewOfPod = %+v, want appPort %d inboundCapture %v", v, tc.appPort, tc.capture)
			}
		})
	}
}
