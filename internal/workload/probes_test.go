package workload

import (
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/admin"
)

// TestFunctionProbesRewritten: a function pod with iptables capture hands its container's
// probes on the function port to its sidecar (a native sidecar among the init containers);
// with proxy-env, or the opt-out annotation, they stay as written.
func TestFunctionProbesRewritten(t *testing.T) {
	ready := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http-app")}},
		PeriodSeconds: 3, TimeoutSeconds: 2, FailureThreshold: 4}
	live := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8080)}}}
	render := func(t *testing.T, file string, annotations map[string]string) (corev1.Container, []corev1.EnvVar) {
		t.Helper()
		var fn meshv1alpha1.MeshFunction
		readYAML(t, file, &fn)
		c := &fn.Spec.Template.Spec.Containers[0]
		c.ReadinessProbe, c.LivenessProbe = ready.DeepCopy(), live.DeepCopy()
		// The rendering adds the http-app port for spec.port; the user may name it so too.
		c.Ports = []corev1.ContainerPort{{Name: "http-app", ContainerPort: fn.Spec.Port}}
		for k, v := range annotations {
			if fn.Spec.Template.Annotations == nil {
				fn.Spec.Template.Annotations = map[string]string{}
			}
			fn.Spec.Template.Annotations[k] = v
		}
		dep, err := FunctionDeployment(&fn, 1, testOptions)
		if err != nil {
			t.Fatalf("FunctionDeployment: %v", err)
		}
		spec := dep.Spec.Template.Spec
		sc := spec.InitContainers[slices.IndexFunc(spec.InitContainers, func(c corev1.Container) bool { return c.Name == SidecarContainerName })]
		return spec.Containers[0], sc.Env
	}

	fn, env := render(t, "testdata/function-iptables.in.yaml", nil)
	metrics := func(p *corev1.Probe, path string) *corev1.Probe {
		p = p.DeepCopy()
		p.ProbeHandler = corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(contract.MetricsPort), Scheme: corev1.URISchemeHTTP}}
		return p
	}
	if d := cmp.Diff([]*corev1.Probe{metrics(ready, "/app-health/fn/readyz"), metrics(live, "/app-health/fn/livez")}, []*corev1.Probe{fn.ReadinessProbe, fn.LivenessProbe}); d != "" {
		t.Errorf("function container probes (-want +got):\n%s", d)
	}
	i := slices.IndexFunc(env, func(e corev1.EnvVar) bool { return e.Name == contract.AppProbesEnv })
	if i < 0 {
		t.Fatalf("the sidecar has no %s: %v", contract.AppProbesEnv, env)
	}
	rec, err := admin.ParseAppProbes(env[i].Value)
	if err != nil {
		t.Fatalf("the sidecar refuses the record: %v", err)
	}
	want := contract.AppProbes{
		"/app-health/fn/readyz": {HTTPGet: &contract.AppProbeHTTPGet{Path: "/healthz", Port: 8080}, TimeoutSeconds: 2},
		"/app-health/fn/livez":  {TCPSocket: &contract.AppProbePort{Port: 8080}},
	}
	if d := cmp.Diff(want, rec); d != "" {
		t.Errorf("record (-want +got):\n%s", d)
	}

	for name, tc := range map[string]struct {
		file        string
		annotations map[string]string
	}{
		"proxy-env":      {"testdata/function-minimal.in.yaml", nil},
		"opted out":      {"testdata/function-iptables.in.yaml", map[string]string{contract.AnnotationRewriteAppProbes: "false"}},
		"port excluded":  {"testdata/function-iptables.in.yaml", map[string]string{"traffic.weft.dev/excludeInboundPorts": "8080"}},
		"include others": {"testdata/function-iptables.in.yaml", map[string]string{"traffic.weft.dev/includeInboundPorts": "9000"}},
	} {
		fn, env := render(t, tc.file, tc.annotations)
		if d := cmp.Diff([]*corev1.Probe{ready, live}, []*corev1.Probe{fn.ReadinessProbe, fn.LivenessProbe}); d != "" {
			t.Errorf("%s: probes changed (-want +got):\n%s", name, d)
		}
		if slices.ContainsFunc(env, func(e corev1.EnvVar) bool { return e.Name == contract.AppProbesEnv }) {
			t.Errorf("%s: the sidecar got %s", name, contract.AppProbesEnv)
		}
	}

	var bad meshv1alpha1.MeshFunction
	readYAML(t, "testdata/function-iptables.in.yaml", &bad)
	bad.Spec.Template.Annotations[contract.AnnotationRewriteAppProbes] = "maybe"
	if _, err := FunctionDeployment(&bad, 1, testOptions); err == nil {
		t.Error("annotation weft.dev/rewrite-app-probes: maybe accepted")
	}
}
