package inject

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/capture"
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

// TestInterceptionDefault: the manager's default decides for pods without the annotation,
// and the annotation wins either way.
func TestInterceptionDefault(t *testing.T) {
	app := func(ann map[string]string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "p", Annotations: ann},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "a", Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}}},
		}
	}
	for _, tc := range []struct {
		def      capture.Interception
		ann      string
		captured bool
	}{
		{"", "", false},
		{capture.InterceptionProxyEnv, "", false},
		{capture.InterceptionIPTables, "", true},
		{capture.InterceptionIPTables, "proxy-env", false},
		{capture.InterceptionProxyEnv, "iptables", true},
	} {
		var ann map[string]string
		if tc.ann != "" {
			ann = map[string]string{capture.AnnotationInterception: tc.ann}
		}
		pod := app(ann)
		cfg := testConfig
		cfg.Interception = tc.def
		if _, err := Inject(pod, "default", cfg); err != nil {
			t.Fatal(err)
		}
		hasInit := slices.ContainsFunc(pod.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == "weft-init" })
		hasProxy := slices.ContainsFunc(pod.Spec.Containers[0].Env, func(e corev1.EnvVar) bool { return e.Name == "HTTP_PROXY" })
		if hasInit != tc.captured || hasProxy == tc.captured {
			t.Errorf("default %q annotation %q: weft-init %v, HTTP_PROXY %v; want captured=%v (and proxy env exactly when not)", tc.def, tc.ann, hasInit, hasProxy, tc.captured)
		}
		if tc.captured && pod.Spec.Containers[len(pod.Spec.Containers)-1].Name != ContainerName {
			t.Errorf("the sidecar is not the last container: %+v", pod.Spec.Containers)
		}
	}
}

// TestAppPortOf pins how the app port is chosen (issue 15: the first container port was
// taken, so a pod whose first port was Redis or a metrics port had its RESP or its HTTP
// sent to the wrong place).
func TestAppPortOf(t *testing.T) {
	type port struct {
		name  string
		num   int32
		proto corev1.Protocol
	}
	for _, tc := range []struct {
		name       string
		annotation string
		containers [][]port
		want       int32
		wantErr    bool
	}{
		{name: "no ports", containers: [][]port{{}}, want: 0},
		{name: "one unnamed port", containers: [][]port{{{"", 8080, ""}}}, want: 8080},
		{name: "annotation wins over a named port", annotation: "9000", containers: [][]port{{{"http", 8080, "TCP"}}}, want: 9000},
		{name: "annotation out of range", annotation: "65536", wantErr: true},
		{name: "annotation not a number", annotation: "http", wantErr: true},
		{name: "annotation zero", annotation: "0", wantErr: true},
		{name: "named http after a metrics port", containers: [][]port{{{"metrics", 9090, "TCP"}, {"http-web", 8080, "TCP"}}}, want: 8080},
		{name: "named grpc in the second container", containers: [][]port{{{"", 8080, "TCP"}}, {{"grpc", 9000, "TCP"}}}, want: 9000},
		{name: "h2c and upper case", containers: [][]port{{{"admin", 1, "TCP"}, {"H2C", 8443, "TCP"}}}, want: 8443},
		{name: "grpc-web", containers: [][]port{{{"x", 1, "TCP"}, {"grpc-web", 8081, "TCP"}}}, want: 8081},
		{name: "unnamed redis port skipped", containers: [][]port{{{"", 6379, "TCP"}}, {{"", 8080, "TCP"}}}, want: 8080},
		{name: "declared tcp ports skipped", containers: [][]port{{{"redis", 7000, "TCP"}, {"tcp-db", 7001, "TCP"}, {"https", 7002, "TCP"}, {"", 7003, "TCP"}}}, want: 7003},
		{name: "only TCP: no app port", containers: [][]port{{{"", 5432, "TCP"}, {"mysql", 3307, "TCP"}}}, want: 0},
		{name: "a named TCP port keeps its name even on an HTTP-ish number", containers: [][]port{{{"tcp", 8080, "TCP"}}}, want: 0},
		{name: "UDP and SCTP never", containers: [][]port{{{"http", 8080, "UDP"}, {"", 9000, "SCTP"}, {"", 9001, "TCP"}}}, want: 9001},
		{name: "httpbin is not an http name but still a plain port", containers: [][]port{{{"httpbin", 8000, "TCP"}}}, want: 8000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{}
			if tc.annotation != "" {
				pod.Annotations = map[string]string{AnnotationAppPort: tc.annotation}
			}
			for i, c := range tc.containers {
				ctr := corev1.Container{Name: "c" + string(rune('0'+i))}
				for _, p := range c {
					ctr.Ports = append(ctr.Ports, corev1.ContainerPort{Name: p.name, ContainerPort: p.num, Protocol: p.proto})
				}
				pod.Spec.Containers = append(pod.Spec.Containers, ctr)
			}
			got, err := appPortOf(pod)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("appPortOf = %d, %v; want %d (error: %v)", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// The sidecar's preStop sleep must be shorter than the pod's grace period, or the API server
// refuses the pod after injection (and its ReplicaSet says nothing of Weft): a pod that asks
// to stop within a few seconds gets a shorter drain, or none at all.
func TestDrainFitsTheGracePeriod(t *testing.T) {
	for _, tc := range []struct {
		grace *int64
		want  int64 // 0: no preStop
	}{
		{nil, 5},
		{ptr(int64(30)), 5},
		{ptr(int64(6)), 5},
		{ptr(int64(5)), 4},
		{ptr(int64(2)), 1},
		{ptr(int64(1)), 0},
		{ptr(int64(0)), 0},
	} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: tc.grace,
			Containers:                    []corev1.Container{{Name: "app", Image: "a"}}}}
		if _, err := Inject(pod, "default", testConfig); err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(pod.Spec.Containers, func(c corev1.Container) bool { return c.Name == ContainerName })
		if i < 0 {
			t.Fatal("no sidecar injected")
		}
		var got int64
		if lc := pod.Spec.Containers[i].Lifecycle; lc != nil && lc.PreStop != nil && lc.PreStop.Sleep != nil {
			got = lc.PreStop.Sleep.Seconds
		}
		if got != tc.want {
			t.Errorf("grace %v: preStop sleep %d s, want %d", tc.grace, got, tc.want)
		}
	}
}

// A pod that serves only TCP (no app port) with iptables interception gets its inbound
// captured, --inbound-capture on its sidecar and a weft.dev/inbound-tls label naming
// exactly the ports its capture takes (issue 16 point 4: a plain Redis behind a strict
// sidecar); with proxy-env, or with no inbound port captured, it gets neither.
func TestTCPOnlyPodInboundCapture(t *testing.T) {
	for _, tc := range []struct {
		name        string
		ann         map[string]string
		wantCapture bool
		captured    []uint16 // ports the label must name
		direct      []uint16 // ports it must not
	}{
		{name: "iptables, default", ann: map[string]string{capture.AnnotationInterception: "iptables"},
			wantCapture: true, captured: []uint16{6379, 16379, 1}, direct: []uint16{15006, 15020, 15090}},
		{name: "iptables, one port excluded", ann: map[string]string{capture.AnnotationInterception: "iptables", capture.AnnotationExcludeInboundPorts: "16379"},
			wantCapture: true, captured: []uint16{6379}, direct: []uint16{16379, 15020}},
		{name: "iptables, a list", ann: map[string]string{capture.AnnotationInterception: "iptables", capture.AnnotationIncludeInboundPorts: "6379"},
			wantCapture: true, captured: []uint16{6379}, direct: []uint16{16379}},
		{name: "iptables, a list less its exclusion", ann: map[string]string{capture.AnnotationInterception: "iptables",
			capture.AnnotationIncludeInboundPorts: "6379,16379", capture.AnnotationExcludeInboundPorts: "6379"},
			wantCapture: true, captured: []uint16{16379}, direct: []uint16{6379}},
		{name: "iptables, nothing inbound", ann: map[string]string{capture.AnnotationInterception: "iptables", capture.AnnotationIncludeInboundPorts: ""}},
		{name: "iptables, only the sidecar's own port listed", ann: map[string]string{capture.AnnotationInterception: "iptables", capture.AnnotationIncludeInboundPorts: "15020"}},
		{name: "proxy-env", ann: map[string]string{capture.AnnotationInterception: "proxy-env"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "redis-0", Annotations: tc.ann},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "redis", Image: "redis:7",
					Ports: []corev1.ContainerPort{{ContainerPort: 6379}, {Name: "tcp-bus", ContainerPort: 16379}}}}}}
			if _, err := Inject(pod, "default", testConfig); err != nil {
				t.Fatal(err)
			}
			sc := pod.Spec.Containers[len(pod.Spec.Containers)-1]
			if slices.ContainsFunc(sc.Args, func(a string) bool { return strings.HasPrefix(a, "--app-port") }) {
				t.Fatalf("a TCP-only pod got an app port: %v", sc.Args)
			}
			if got := slices.Contains(sc.Args, "--"+contract.FlagInboundCapture); got != tc.wantCapture {
				t.Errorf("--inbound-capture %v, want %v (args %v)", got, tc.wantCapture, sc.Args)
			}
			label, labelled := pod.Labels[contract.LabelInboundTLS]
			if labelled != tc.wantCapture {
				t.Fatalf("label %s=%q present %v, want %v", contract.LabelInboundTLS, label, labelled, tc.wantCapture)
			}
			if _, ok := pod.Labels[contract.LabelInboundTLSPort]; ok {
				t.Errorf("a pod without an app port got %s", contract.LabelInboundTLSPort)
			}
			ports, ok := contract.ParseInboundTLSPorts(label)
			if labelled && !ok {
				t.Fatalf("label %q does not parse", label)
			}
			for _, p := range tc.captured {
				if !ports.Has(p) {
					t.Errorf("label %q does not name captured port %d", label, p)
				}
			}
			for _, p := range tc.direct {
				if ports.Has(p) {
					t.Errorf("label %q names port %d, which capture does not take", label, p)
				}
			}
			// The label and weft-init's flags agree: each port the label names is one the
			// init container's rules redirect.
			var initArgs []string
			for _, c := range pod.Spec.InitContainers {
				if c.Name == "weft-init" {
					initArgs = c.Args
				}
			}
			if (tc.ann[capture.AnnotationInterception] == "iptables") != (initArgs != nil) {
				t.Errorf("weft-init args %v for interception %q", initArgs, tc.ann[capture.AnnotationInterception])
			}
		})
	}
}
