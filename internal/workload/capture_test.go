package workload

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/capture"
)

func names(cs []corev1.Container) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Name
	}
	return out
}

// TestFunctionPodsAreCapturedWithIptables: with the manager's default set to iptables a
// function pod gets weft-init as its first init container, before the native sidecar, and
// an annotation can opt one function out again.
func TestFunctionPodsAreCapturedWithIptables(t *testing.T) {
	var fn meshv1alpha1.MeshFunction
	readYAML(t, "testdata/function-minimal.in.yaml", &fn)
	o := testOptions
	o.Interception = capture.InterceptionIPTables
	dep, err := FunctionDeployment(&fn, 1, o)
	if err != nil {
		t.Fatal(err)
	}
	spec := dep.Spec.Template.Spec
	if got := names(spec.InitContainers); !slices.Equal(got, []string{CaptureInitContainerName, SidecarContainerName}) {
		t.Fatalf("init containers %v, want weft-init then the sidecar", got)
	}
	init := spec.InitContainers[0]
	if init.Image != o.SidecarImage || !slices.Equal(init.Command, []string{"weft-init"}) || init.RestartPolicy != nil {
		t.Errorf("weft-init: image %s command %v restartPolicy %v; want the sidecar image, weft-init, run to completion", init.Image, init.Command, init.RestartPolicy)
	}
	if caps := init.SecurityContext.Capabilities.Add; !slices.Equal(caps, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) || *init.SecurityContext.RunAsUser != 0 {
		t.Errorf("weft-init security context %+v: want root with NET_ADMIN and NET_RAW", init.SecurityContext)
	}
	for _, c := range spec.Containers {
		if slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "HTTP_PROXY" }) {
			t.Errorf("container %s has HTTP_PROXY; captured pods must not", c.Name)
		}
	}

	fn.Spec.Template.Annotations = map[string]string{capture.AnnotationInterception: "proxy-env"}
	dep, err = FunctionDeployment(&fn, 1, o)
	if err != nil {
		t.Fatal(err)
	}
	if got := names(dep.Spec.Template.Spec.InitContainers); !slices.Equal(got, []string{SidecarContainerName}) {
		t.Errorf("with weft.dev/interception: proxy-env init containers are %v, want only the sidecar", got)
	}
}

func TestFunctionDeploymentRefusesBadCaptureAnnotations(t *testing.T) {
	for ann, want := range map[string]string{
		capture.AnnotationInterception:            `annotation weft.dev/interception="ebpf"`,
		capture.AnnotationExcludeOutboundIPRanges: `annotation traffic.weft.dev/excludeOutboundIPRanges="ebpf": "ebpf" is not a CIDR`,
		capture.AnnotationIncludeInboundPorts:     `annotation traffic.weft.dev/includeInboundPorts="ebpf": "ebpf" is not a port number`,
	} {
		var fn meshv1alpha1.MeshFunction
		readYAML(t, "testdata/function-minimal.in.yaml", &fn)
		fn.Spec.Template.Annotations = map[string]string{ann: "ebpf"}
		_, err := FunctionDeployment(&fn, 1, testOptions) // refused even while the default is proxy-env
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "MeshFunction default/hello") {
			t.Errorf("%s: error %v, want it to name the function and contain %q", ann, err, want)
		}
	}
	var fn meshv1alpha1.MeshFunction
	readYAML(t, "testdata/function-minimal.in.yaml", &fn)
	fn.Spec.Template.Spec.InitContainers = []corev1.Container{{Name: CaptureInitContainerName, Image: "x"}}
	if _, err := FunctionDeployment(&fn, 1, testOptions); err == nil || !strings.Contains(err.Error(), `"weft-init" is reserved`) {
		t.Errorf("a user container named weft-init: error %v, want it refused", err)
	}
}

func TestInsertCaptureInit(t *testing.T) {
	init := corev1.Container{Name: CaptureInitContainerName}
	for _, tc := range []struct{ in, want []string }{
		{nil, []string{"weft-init"}},
		{[]string{"migrate"}, []string{"migrate", "weft-init"}},
		{[]string{"weft-sidecar", "migrate"}, []string{"weft-init", "weft-sidecar", "migrate"}},
		{[]string{"migrate", "weft-sidecar"}, []string{"migrate", "weft-init", "weft-sidecar"}},
	} {
		var in []corev1.Container
		for _, n := range tc.in {
			in = append(in, corev1.Container{Name: n})
		}
		if got := names(InsertCaptureInit(in, init, SidecarContainerName)); !slices.Equal(got, tc.want) {
			t.Errorf("InsertCaptureInit(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
