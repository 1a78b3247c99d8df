package workload

import (
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
)

// LabelRedisProxy marks the pods of a standalone Redis proxy with the RedisProxy's name. The
// sidecar passes it to the control plane as node metadata `redisProxy`, which makes the
// translator bind the pool's listener on all addresses instead of spec.listener.address, so
// clients outside the mesh can reach it through the Service.
const LabelRedisProxy = "weft.dev/redisproxy"

// RedisProxyName is the name of a standalone proxy's Deployment and Service.
func RedisProxyName(rp *meshv1alpha1.RedisProxy) string { return rp.Name + "-redis-proxy" }

// RedisProxyDeployment renders the standalone proxy of a RedisProxy with spec.replicas set:
// pods that run only the Weft sidecar, which serves the pool like any meshed pod's sidecar.
// It returns nil when spec.replicas is unset.
func RedisProxyDeployment(rp *meshv1alpha1.RedisProxy, o Options) *appsv1.Deployment {
	if rp.Spec.Replicas == nil {
		return nil
	}
	labels := map[string]string{LabelRedisProxy: rp.Name, LabelManagedBy: ManagedBy, LabelInject: "false"}
	port := redisPort(rp)
	sidecar := baseSidecar(o, labels, "--redis-proxy="+rp.Namespace+"/"+rp.Name)
	sidecar.Ports = []corev1.ContainerPort{
		{Name: "redis", ContainerPort: port, Protocol: corev1.ProtocolTCP},
		{Name: "http-metrics", ContainerPort: contract.MetricsPort, Protocol: corev1.ProtocolTCP},
	}
	sidecar.ReadinessProbe = &corev1.Probe{ProbeHandler: readyProbe(), PeriodSeconds: 2, FailureThreshold: 3}
	sidecar.LivenessProbe = &corev1.Probe{
		ProbeHandler:     corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(port)}},
		PeriodSeconds:    10,
		FailureThreshold: 3,
	}
	d := &appsv1.Deployment{
		TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{
			Name:      RedisProxyName(rp),
			Namespace: rp.Namespace,
			Labels:    map[string]string{LabelRedisProxy: rp.Name, LabelManagedBy: ManagedBy},
		},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(*rp.Spec.Replicas),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{LabelRedisProxy: rp.Name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers:                    []corev1.Container{sidecar},
					TerminationGracePeriodSeconds: ptr.To(int64(o.DrainTimeout.Seconds()) + 10),
				},
			},
			RevisionHistoryLimit: ptr.To[int32](3),
		},
	}
	AddXDSCredentials(&d.Spec.Template.ObjectMeta, &d.Spec.Template.Spec, SidecarContainerName, o.XDSCA)
	return d
}

// RedisProxyService renders the Service in front of a standalone proxy, or nil without one.
func RedisProxyService(rp *meshv1alpha1.RedisProxy) *corev1.Service {
	if rp.Spec.Replicas == nil {
		return nil
	}
	port := redisPort(rp)
	return &corev1.Service{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{
			Name:      RedisProxyName(rp),
			Namespace: rp.Namespace,
			Labels:    map[string]string{LabelRedisProxy: rp.Name, LabelManagedBy: ManagedBy},
		},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{LabelRedisProxy: rp.Name},
			Ports: []corev1.ServicePort{{
				Name: "redis", Port: port, TargetPort: intstr.FromInt32(port), Protocol: corev1.ProtocolTCP,
				AppProtocol: ptr.To("redis"),
			}},
		},
	}
}

func redisPort(rp *meshv1alpha1.RedisProxy) int32 {
	if rp.Spec.Listener.Port != 0 {
		return rp.Spec.Listener.Port
	}
	return 6379
}
