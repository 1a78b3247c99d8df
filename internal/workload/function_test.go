package workload

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// testOptions are fixed so golden files do not depend on defaults changing.
var testOptions = Options{
	SidecarImage:  "ghcr.io/weftmesh/weft-sidecar:test",
	XDSAddress:    "weft-manager.weft-system.svc:18000",
	DrainTimeout:  20 * time.Second,
	ClusterDomain: "cluster.local",
}

// TestFunctionGolden renders testdata/function-*.in.yaml (a MeshFunction as the API server
// returns it, defaults applied) and compares with the .out.yaml next to it.
func TestFunctionGolden(t *testing.T) {
	ins, err := filepath.Glob("testdata/function-*.in.yaml")
	if err != nil || len(ins) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	for _, in := range ins {
		name := strings.TrimSuffix(filepath.Base(in), ".in.yaml")
		t.Run(name, func(t *testing.T) {
			var fn meshv1alpha1.MeshFunction
			readYAML(t, in, &fn)
			dep, err := FunctionDeployment(&fn, 3, testOptions)
			if err != nil {
				t.Fatalf("FunctionDeployment: %v", err)
			}
			got := marshalAll(t, dep, FunctionService(&fn))
			golden(t, strings.TrimSuffix(in, ".in.yaml")+".out.yaml", got)
		})
	}
}

func TestFunctionDeploymentRefusesBadTemplates(t *testing.T) {
	cases := map[string]struct {
		fn   meshv1alpha1.MeshFunction
		want string
	}{
		"no containers": {want: "spec.template.spec.containers is empty"},
		"reserved name": {want: `container name "weft-sidecar" is reserved`},
	}
	tc := cases["reserved name"]
	readYAML(t, "testdata/function-minimal.in.yaml", &tc.fn)
	tc.fn.Spec.Template.Spec.Containers[0].Name = SidecarContainerName
	cases["reserved name"] = tc
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			tc.fn.Namespace, tc.fn.Name = "default", "f"
			_, err := FunctionDeployment(&tc.fn, 1, testOptions)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestFunctionDeploymentIsDeterministicAndHashTracksSpec(t *testing.T) {
	var fn meshv1alpha1.MeshFunction
	readYAML(t, "testdata/function-minimal.in.yaml", &fn)
	a, _ := FunctionDeployment(&fn, 1, testOptions)
	b, _ := FunctionDeployment(&fn, 5, testOptions)
	if diff := cmp.Diff(a.Spec.Template, b.Spec.Template); diff != "" {
		t.Fatalf("same spec rendered different templates (-a +b):\n%s", diff)
	}
	fn.Spec.Template.Spec.Containers[0].Image = "example/other:v2"
	c, _ := FunctionDeployment(&fn, 1, testOptions)
	if a.Spec.Template.Annotations[AnnotationTemplateHash] == c.Spec.Template.Annotations[AnnotationTemplateHash] {
		t.Fatal("changing the image did not change the template hash")
	}
}

func readYAML(t *testing.T, path string, into any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, into); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func marshalAll(t *testing.T, objs ...any) []byte {
	t.Helper()
	var parts []string
	for _, o := range objs {
		b, err := yaml.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, string(b))
	}
	return []byte(strings.Join(parts, "---\n"))
}

// golden compares got with the file at path, or rewrites it with -update.
func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/workload -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Fatalf("%s differs (-want +got); if intended, rerun with -update:\n%s", path, diff)
	}
}

// TestRedisProxyGolden renders testdata/redisproxy-*.in.yaml.
func TestRedisProxyGolden(t *testing.T) {
	ins, _ := filepath.Glob("testdata/redisproxy-*.in.yaml")
	if len(ins) == 0 {
		t.Fatal("no golden inputs")
	}
	for _, in := range ins {
		name := strings.TrimSuffix(filepath.Base(in), ".in.yaml")
		t.Run(name, func(t *testing.T) {
			var rp meshv1alpha1.RedisProxy
			readYAML(t, in, &rp)
			var objs []any
			if d := RedisProxyDeployment(&rp, testOptions); d != nil {
				objs = append(objs, d, RedisProxyService(&rp))
			}
			golden(t, strings.TrimSuffix(in, ".in.yaml")+".out.yaml", marshalAll(t, objs...))
		})
	}
}

// A function pod keeps serving for EndpointDrainSeconds after it is told to stop (a preStop
// sleep on the function container), so a scale-down does not fail calls from sidecars that
// have not yet seen the pod leave; a preStop the user wrote is kept as it is.
func TestFunctionContainerDrainsBeforeStopping(t *testing.T) {
	var fn meshv1alpha1.MeshFunction
	readYAML(t, "testdata/function-minimal.in.yaml", &fn)
	dep, err := FunctionDeployment(&fn, 1, testOptions)
	if err != nil {
		t.Fatal(err)
	}
	pre := dep.Spec.Template.Spec.Containers[0].Lifecycle.PreStop
	if pre == nil || pre.Sleep == nil || pre.Sleep.Seconds != EndpointDrainSeconds {
		t.Fatalf("function container preStop %+v, want a %d s sleep", pre, EndpointDrainSeconds)
	}

	own := &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"/bin/flush"}}}
	fn.Spec.Template.Spec.Containers[0].Lifecycle = &corev1.Lifecycle{PreStop: own}
	dep, err = FunctionDeployment(&fn, 1, testOptions)
	if err != nil {
		t.Fatal(err)
	}
	if got := dep.Spec.Template.Spec.Containers[0].Lifecycle.PreStop; !cmp.Equal(got, own) {
		t.Fatalf("the user's preStop became %+v", got)
	}
	if fn.Spec.Template.Spec.Containers[0].Lifecycle.PreStop != own {
		t.Fatal("rendering changed the MeshFunction's own template")
	}
}
