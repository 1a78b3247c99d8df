package inject

import (
	corev1 "k8s.io/api/core/v1"

	"github.com/weftmesh/weft/internal/workload"
)

// addXDSCredentials mounts into the injected sidecar the projected ServiceAccount token
// (audience weft) and the control plane's CA bundle it authenticates with
// (workload.AddXDSCredentials; docs/zero-trust.md). Without a CA in cfg (a manager run
// with --xds-insecure) the pod is left as it was.
func addXDSCredentials(pod *corev1.Pod, cfg Config) {
	workload.AddXDSCredentials(&pod.ObjectMeta, &pod.Spec, ContainerName, cfg.XDSCA)
}
