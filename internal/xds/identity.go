package xds

import (
	"maps"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	corev1 "k8s.io/api/core/v1"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/snapshot"
	"github.com/weftmesh/weft/internal/workload"
)

// viewOfPod derives a sidecar's view from its pod as the API server has it: the namespace
// and labels are the pod's, the function and standalone Redis proxy come from the labels
// Weft's renderers and webhook set (weft.dev/function, weft.dev/redisproxy), and the app
// port from the --app-port argument of the pod's own sidecar container, the ServiceAccount
// (the workload identity MeshPolicies on RedisProxy pools judge) from the pod's spec. A pod's creator
// can set these, but only within its namespace, which the view is scoped to anyway.
// The gateway (snapshot/gateway.go) is recognized by its ServiceAccount alone,
// weft-system/weft-gateway: only who may run pods in weft-system can take that view.
func viewOfPod(pod *corev1.Pod) snapshot.View {
	if pod.Namespace == snapshot.GatewayNamespace && serviceAccountOf(pod) == snapshot.GatewayServiceAccount {
		return snapshot.GatewayView()
	}
	v := snapshot.View{Namespace: pod.Namespace, ServiceAccount: serviceAccountOf(pod)}
	if len(pod.Labels) > 0 {
		v.Labels = maps.Clone(pod.Labels)
	}
	if fn := pod.Labels[workload.LabelFunction]; fn != "" {
		v.Function = pod.Namespace + "/" + fn
	}
	if rp := pod.Labels[workload.LabelRedisProxy]; rp != "" {
		v.RedisProxy = pod.Namespace + "/" + rp
	}
	v.AppPort, v.InboundCapture = sidecarArgsOfPod(pod)
	return v
}

// sidecarArgsOfPod reads --app-port=N and --inbound-capture of the pod's sidecar container
// (a native sidecar among the init containers, or an injected one among the containers):
// 0 and false when there are none. Container args cannot change once the pod exists, so a
// pod injected before --inbound-capture existed keeps its view.
func sidecarArgsOfPod(pod *corev1.Pod) (appPort uint32, inboundCapture bool) {
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			if c.Name != workload.SidecarContainerName {
				continue
			}
			for _, a := range c.Args {
				if v, ok := strings.CutPrefix(a, "--app-port="); ok {
					if p, err := strconv.ParseUint(v, 10, 16); err == nil && p > 0 && appPort == 0 {
						appPort = uint32(p)
					}
				}
				switch a {
				case "--" + contract.FlagInboundCapture, "--" + contract.FlagInboundCapture + "=true":
					inboundCapture = true
				}
			}
		}
	}
	return appPort, inboundCapture
}

// verifiedNode is the node the cache sees for an authenticated stream: the identity's node
// ID and metadata written from its view, replacing whatever the sidecar sent.
func verifiedNode(id *Identity) *corev3.Node {
	return &corev3.Node{Id: id.NodeID(), Metadata: snapshot.NodeMetadata(id.View)}
}
