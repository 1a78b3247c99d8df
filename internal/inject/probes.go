package inject

import (
	corev1 "k8s.io/api/core/v1"

	"github.com/weftmesh/weft/internal/capture"
	"github.com/weftmesh/weft/internal/workload"
)

// rewriteAppProbes hands the app containers' probes that inbound capture takes (with mode
// and cfg as Inject settled them) to
// the sidecar sc, which runs them against the app on the loopback (docs/probes.md): in
// mutual TLS strict mode the sidecar's inbound listener would refuse the kubelet, which
// brings no mesh certificate. The rewrite itself is workload.RewriteAppProbes, shared with
// function pods.
func rewriteAppProbes(pod *corev1.Pod, sc *corev1.Container, mode capture.Interception, cfg capture.Config) error {
	env, err := workload.RewriteAppProbes(&pod.Spec, pod.Annotations, mode, cfg, ContainerName)
	if err != nil || env == nil {
		return err
	}
	sc.Env = append(sc.Env, *env)
	return nil
}
