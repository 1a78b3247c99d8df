package inject

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite testdata/*.out.yaml from the current output")

type goldenIn struct {
	NamespaceLabels map[string]string `json:"namespaceLabels"`
	Pod             corev1.Pod        `json:"pod"`
}

type goldenOut struct {
	Wanted  bool        `json:"wanted"`
	Changed bool        `json:"changed"`
	Error   string      `json:"error,omitempty"`
	Pod     *corev1.Pod `json:"pod,omitempty"`
}

var testConfig = Config{Image: "ghcr.io/weftmesh/weft-sidecar:test", XDSAddress: "weft-manager.weft-system.svc:18000", DrainSeconds: 5}

func TestInjectGolden(t *testing.T) {
	ins, _ := filepath.Glob("testdata/*.in.yaml")
	if len(ins) == 0 {
		t.Fatal("no golden cases in testdata/")
	}
	for _, in := range ins {
		name := strings.TrimSuffix(filepath.Base(in), ".in.yaml")
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			var c goldenIn
			if err := yaml.UnmarshalStrict(raw, &c); err != nil {
				t.Fatalf("%s: %v", in, err)
			}
			out := goldenOut{Wanted: Wanted(c.NamespaceLabels, c.Pod.Labels)}
			if out.Wanted {
				pod := c.Pod.DeepCopy()
				out.Changed, err = Inject(pod, c.Pod.Namespace, testConfig)
				if err != nil {
					out.Error = err.Error()
				} else if out.Changed {
					out.Pod = pod
				}
				// Injecting twice must change nothing: the webhook may be called again.
				if out.Changed {
					again := pod.DeepCopy()
					if changed, err := Inject(again, c.Pod.Namespace, testConfig); changed || err != nil {
						t.Errorf("second Inject changed=%v err=%v, want no change", changed, err)
					}
					if d := cmp.Diff(pod, again); d != "" {
						t.Errorf("second Inject modified the pod (-first +second):\n%s", d)
					}
				}
			}
			got, err := yaml.Marshal(out)
			if err != nil {
				t.Fatal(err)
			}
			golden := strings.TrimSuffix(in, ".in.yaml") + ".out.yaml"
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./internal/inject -update to create it)", err)
			}
			if d := cmp.Diff(string(want), string(got)); d != "" {
				t.Errorf("%s differs (-want +got); if intended, rerun with -update and review:\n%s", golden, d)
			}
		})
	}
}

func TestWanted(t *testing.T) {
	for _, tc := range []struct {
		ns, pod string
		want    bool
	}{
		{"", "", false}, {"enabled", "", true}, {"enabled", "false", false},
		{"", "true", true}, {"disabled", "true", true}, {"", "false", false}, {"enabled", "true", true},
	} {
		ns, pod := map[string]string{}, map[string]string{}
		if tc.ns != "" {
			ns[LabelInject] = tc.ns
		}
		if tc.pod != "" {
			pod[LabelInject] = tc.pod
		}
		if got := Wanted(ns, pod); got != tc.want {
			t.Errorf("Wanted(ns=%q, pod=%q) = %v, want %v", tc.ns, tc.pod, got, tc.want)
		}
	}
}
