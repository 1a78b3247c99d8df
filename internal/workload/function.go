package workload

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/capture"
)

// SidecarContainerName is the name of the sidecar container in every pod Weft renders.
const SidecarContainerName = "weft-sidecar"

// EndpointDrainSeconds is how long a function pod keeps serving after it is told to stop,
// so that callers' sidecars learn it is gone before it stops answering: Istio's
// terminationDrainDuration default (5 s).
const EndpointDrainSeconds = 5

// FunctionDeployment renders the Deployment of a MeshFunction with the given replicas. The
// autoscaler owns the replica count; everything else comes from the spec. The first container
// of the template is the function; the sidecar is appended, takes calls on InboundPort and
// forwards them to spec.port on localhost, so readiness, concurrency limits and stats all
// live in the sidecar.
func FunctionDeployment(fn *meshv1alpha1.MeshFunction, replicas int32, o Options) (*appsv1.Deployment, error) {
	// Fields stored before the CRD could refuse them (issue 13) decode as unreadable
	// instead of failing every list; such a function gets no Deployment until fixed.
	if bad := fn.UnreadableFields(); len(bad) > 0 {
		return nil, fmt.Errorf("MeshFunction %s/%s cannot be read: %s", fn.Namespace, fn.Name, strings.Join(bad, "; "))
	}
	if len(fn.Spec.Template.Spec.Containers) == 0 {
		return nil, fmt.Errorf("MeshFunction %s/%s: spec.template.spec.containers is empty: add the function's container", fn.Namespace, fn.Name)
	}
	for _, c := range slices.Concat(fn.Spec.Template.Spec.Containers, fn.Spec.Template.Spec.InitContainers) {
		if c.Name == SidecarContainerName || c.Name == CaptureInitContainerName {
			return nil, fmt.Errorf("MeshFunction %s/%s: container name %q is reserved for Weft's sidecar: rename the container", fn.Namespace, fn.Name, c.Name)
		}
	}
	mode, capCfg, err := InterceptionFor(fn.Spec.Template.Annotations, o.Interception)
	if err != nil {
		return nil, fmt.Errorf("MeshFunction %s/%s: spec.template.metadata.annotations: %w", fn.Namespace, fn.Name, err)
	}
	selector := map[string]string{LabelFunction: fn.Name}
	tmpl := *fn.Spec.Template.PodTemplateSpec.DeepCopy()
	tmpl.Labels = mergeLabels(tmpl.Labels, map[string]string{
		LabelFunction:  fn.Name,
		LabelManagedBy: ManagedBy,
		LabelInject:    "false",
	})

	app := &tmpl.Spec.Containers[0]
	app.Env = upsertEnv(app.Env, corev1.EnvVar{Name: "PORT", Value: strconv.Itoa(int(fn.Spec.Port))})
	if !hasPort(app.Ports, fn.Spec.Port) {
		app.Ports = append(app.Ports, corev1.ContainerPort{Name: "http-app", ContainerPort: fn.Spec.Port, Protocol: corev1.ProtocolTCP})
	}
	// A pod removed by a scale-down stays in callers' endpoints until the EndpointSlice
	// change has reached their sidecars. The function keeps serving meanwhile: its SIGTERM
	// waits EndpointDrainSeconds in a preStop sleep (Knative's queue-proxy drain, shorter),
	// unless the user set a preStop of their own.
	if app.Lifecycle == nil {
		app.Lifecycle = &corev1.Lifecycle{}
	}
	if app.Lifecycle.PreStop == nil {
		app.Lifecycle.PreStop = &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: EndpointDrainSeconds}}
	}
	// The sidecar is a native sidecar (a restartable init container): it starts, and passes
	// its startup probe (first config applied), before the function starts, and it is stopped
	// only after the function exited. That ordering is what Istio users fight for with
	// holdApplicationUntilProxyStarts and preStop sleeps.
	tmpl.Spec.InitContainers = append([]corev1.Container{sidecarContainer(fn, tmpl.Labels, o)}, tmpl.Spec.InitContainers...)
	// A function calls other functions and Services like any app (issue 15 item 5): with
	// iptables interception its outbound TCP is captured too, the rules installed before the
	// sidecar (and so before the function) starts.
	if mode == capture.InterceptionIPTables {
		tmpl.Spec.InitContainers = InsertCaptureInit(tmpl.Spec.InitContainers, CaptureInitContainer(o.SidecarImage, capCfg), SidecarContainerName)
	}
	if err := rewriteFunctionProbes(&tmpl, mode, capCfg); err != nil { // probes.go
		return nil, fmt.Errorf("MeshFunction %s/%s: %w", fn.Namespace, fn.Name, err)
	}

	// The pod must outlive the sidecar's drain: Kubernetes' 30s default is kept unless the
	// drain needs longer.
	grace := int64(o.DrainTimeout.Seconds()) + 10
	if tmpl.Spec.TerminationGracePeriodSeconds == nil || *tmpl.Spec.TerminationGracePeriodSeconds < grace {
		tmpl.Spec.TerminationGracePeriodSeconds = ptr.To(grace)
	}

	AddXDSCredentials(&tmpl.ObjectMeta, &tmpl.Spec, SidecarContainerName, o.XDSCA)
	hash, err := templateHash(&tmpl)
	if err != nil {
		return nil, fmt.Errorf("MeshFunction %s/%s: hashing pod template: %w", fn.Namespace, fn.Name, err)
	}
	tmpl.Annotations = mergeLabels(tmpl.Annotations, map[string]string{AnnotationTemplateHash: hash})

	return &appsv1.Deployment{
		TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{
			Name:      fn.Name,
			Namespace: fn.Namespace,
			Labels:    map[string]string{LabelFunction: fn.Name, LabelManagedBy: ManagedBy},
		},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: selector},
			Template: tmpl,
			Strategy: appsv1.DeploymentStrategy{
				Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{
					// Never drop below the current capacity during a rollout: a function
					// at one pod must not flap through zero.
					MaxUnavailable: ptr.To(intstr.FromInt32(0)),
					MaxSurge:       ptr.To(intstr.FromString("25%")),
				},
			},
			RevisionHistoryLimit: ptr.To[int32](3),
		},
	}, nil
}

// sidecarContainer renders the sidecar for a function pod.
func sidecarContainer(fn *meshv1alpha1.MeshFunction, labels map[string]string, o Options) corev1.Container {
	c := baseSidecar(o, labels, "--app-port="+strconv.Itoa(int(fn.Spec.Port)), "--function="+fn.Namespace+"/"+fn.Name)
	c.Ports = []corev1.ContainerPort{
		{Name: "http-inbound", ContainerPort: contract.InboundPort, Protocol: corev1.ProtocolTCP},
		{Name: "http-metrics", ContainerPort: contract.MetricsPort, Protocol: corev1.ProtocolTCP},
	}
	c.RestartPolicy = ptr.To(corev1.ContainerRestartPolicyAlways)
	c.StartupProbe = &corev1.Probe{ProbeHandler: readyProbe(), PeriodSeconds: 1, FailureThreshold: 120}
	// No readiness probe: a container without one is ready once started, and for a native
	// sidecar that means once its startup probe passed. A readiness probe could only begin
	// after that, adding up to a probe period to every cold start. A request that reaches
	// the pod before the function listens is held by the sidecar's inbound listener.
	return c
}

// baseSidecar is what every rendered sidecar shares: identity from the downward API, the pod's
// labels (node metadata for workload selectors), the control-plane address and drain time,
// and a locked-down security context. extraArgs come after the common flags.
func baseSidecar(o Options, labels map[string]string, extraArgs ...string) corev1.Container {
	args := append([]string{"--xds-address=" + o.XDSAddress}, extraArgs...)
	return corev1.Container{
		Name:  SidecarContainerName,
		Image: o.SidecarImage,
		Args:  append(args, "--drain-timeout="+o.DrainTimeout.String()),
		Env: []corev1.EnvVar{
			fieldEnv("POD_NAME", "metadata.name"),
			fieldEnv("POD_NAMESPACE", "metadata.namespace"),
			fieldEnv("POD_IP", "status.podIP"),
			{Name: "POD_LABELS", Value: labelString(labels)},
		},
		Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{}},
		SecurityContext: &corev1.SecurityContext{
			AllowPrivilegeEscalation: ptr.To(false),
			RunAsNonRoot:             ptr.To(true),
			RunAsUser:                ptr.To[int64](contract.ProxyUID),
			RunAsGroup:               ptr.To[int64](contract.ProxyGID),
			ReadOnlyRootFilesystem:   ptr.To(true),
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
	}
}

// FunctionService renders the Service callers' sidecars resolve a function's endpoints from:
// port 80 to each pod's sidecar inbound port.
func FunctionService(fn *meshv1alpha1.MeshFunction) *corev1.Service {
	return &corev1.Service{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{
			Name:      fn.Name,
			Namespace: fn.Namespace,
			Labels:    map[string]string{LabelFunction: fn.Name, LabelManagedBy: ManagedBy},
		},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{LabelFunction: fn.Name},
			Ports: []corev1.ServicePort{{
				Name:        "http",
				Port:        ServicePort,
				TargetPort:  intstr.FromInt32(contract.InboundPort),
				Protocol:    corev1.ProtocolTCP,
				AppProtocol: ptr.To("http"),
			}},
			// Only ready pods are published: a caller's sidecar holds requests until the
			// function pod's sidecar has its config (startup probe) and the function runs.
			PublishNotReadyAddresses: false,
		},
	}
}

// readyProbe asks the sidecar whether it has a complete config and can serve.
func readyProbe() corev1.ProbeHandler {
	return corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(contract.MetricsPort)}}
}

func fieldEnv(name, path string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
}

func hasPort(ports []corev1.ContainerPort, port int32) bool {
	for _, p := range ports {
		if p.ContainerPort == port {
			return true
		}
	}
	return false
}

// upsertEnv sets name=value unless the user set it already (the user's value wins).
func upsertEnv(env []corev1.EnvVar, v corev1.EnvVar) []corev1.EnvVar {
	for _, e := range env {
		if e.Name == v.Name {
			return env
		}
	}
	return append(env, v)
}

func mergeLabels(base, add map[string]string) map[string]string {
	out := make(map[string]string, len(base)+len(add))
	for k, v := range base {
		out[k] = v
	}
	for k, v := range add {
		out[k] = v
	}
	return out
}

// labelString renders labels as sorted k=v pairs, the form cmd/sidecar's POD_LABELS takes.
func labelString(labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+labels[k])
	}
	return strings.Join(parts, ",")
}

// templateHash is a short content hash of a pod template. encoding/json sorts map keys, so the
// hash is deterministic.
func templateHash(t *corev1.PodTemplateSpec) (string, error) {
	b, err := json.Marshal(t)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8]), nil
}
