package inject

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/capture"
	"github.com/weftmesh/weft/sidecar/admin"
)

// probePod is a pod named web in namespace probes with one container "app" serving HTTP on
// 8080 (named "http") and gRPC on 9090, and iptables interception.
func probePod(opts ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "probes", Labels: map[string]string{"app": "web"},
			Annotations: map[string]string{capture.AnnotationInterception: string(capture.InterceptionIPTables)}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "app", Image: "example/web:v1",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "grpc-health", ContainerPort: 9090}},
		}}},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func annotate(k, v string) func(*corev1.Pod) {
	return func(p *corev1.Pod) { p.Annotations[k] = v }
}

func withProbes(readiness, liveness, startup *corev1.Probe) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		c := &p.Spec.Containers[0]
		c.ReadinessProbe, c.LivenessProbe, c.StartupProbe = readiness, liveness, startup
	}
}

func httpProbe(path string, port intstr.IntOrString) *corev1.Probe {
	return &corev1.Probe{
		ProbeHandler:        corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: port}},
		InitialDelaySeconds: 3, PeriodSeconds: 7, TimeoutSeconds: 2, SuccessThreshold: 1, FailureThreshold: 5,
	}
}

func tcpProbe(port int32) *corev1.Probe {
	return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(port)}}, PeriodSeconds: 4}
}

func grpcProbe(port int32, service string) *corev1.Probe {
	return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: port, Service: &service}}, FailureThreshold: 30}
}

// appHealth is orig as the injector should rewrite it for path.
func appHealth(orig *corev1.Probe, path string) *corev1.Probe {
	p := orig.DeepCopy()
	p.ProbeHandler = corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(contract.MetricsPort), Scheme: corev1.URISchemeHTTP}}
	return p
}

// injectedProbes injects pod and returns it with the sidecar's record of the probes (nil
// when it has none), checking the record is one the sidecar accepts.
func injectedProbes(t *testing.T, pod *corev1.Pod) (*corev1.Pod, contract.AppProbes) {
	t.Helper()
	if _, err := Inject(pod, pod.Namespace, testConfig); err != nil {
		t.Fatalf("Inject: %v", err)
	}
	sc := pod.Spec.Containers[slices.IndexFunc(pod.Spec.Containers, func(c corev1.Container) bool { return c.Name == ContainerName })]
	i := slices.IndexFunc(sc.Env, func(e corev1.EnvVar) bool { return e.Name == contract.AppProbesEnv })
	if i < 0 {
		return pod, nil
	}
	got, err := admin.ParseAppProbes(sc.Env[i].Value)
	if err != nil {
		t.Fatalf("the sidecar refuses the injector's %s: %v\n%s", contract.AppProbesEnv, err, sc.Env[i].Value)
	}
	return pod, got
}

func TestRewriteAppProbes(t *testing.T) {
	ready := httpProbe("/healthz?full=1", intstr.FromInt32(8080))
	ready.HTTPGet.Scheme = corev1.URISchemeHTTPS
	ready.HTTPGet.HTTPHeaders = []corev1.HTTPHeader{{Name: "X-Probe", Value: "kubelet"}, {Name: "Host", Value: "web.local"}}
	named := httpProbe("/live", intstr.FromString("http"))
	svc := "weft.Health"
	for _, tc := range []struct {
		name       string
		pod        *corev1.Pod
		wantProbes [3]*corev1.Probe // readiness, liveness, startup of container app after injection
		want       contract.AppProbes
	}{{
		name:       "httpGet on the app port, https with headers",
		pod:        probePod(withProbes(ready, nil, nil)),
		wantProbes: [3]*corev1.Probe{appHealth(ready, "/app-health/app/readyz")},
		want: contract.AppProbes{"/app-health/app/readyz": {TimeoutSeconds: 2, HTTPGet: &contract.AppProbeHTTPGet{
			Path: "/healthz?full=1", Port: 8080, Scheme: "HTTPS",
			HTTPHeaders: []contract.AppProbeHeader{{Name: "X-Probe", Value: "kubelet"}, {Name: "Host", Value: "web.local"}}}}},
	}, {
		name:       "named port resolved against the container's ports",
		pod:        probePod(withProbes(nil, named, nil)),
		wantProbes: [3]*corev1.Probe{nil, appHealth(named, "/app-health/app/livez")},
		want:       contract.AppProbes{"/app-health/app/livez": {TimeoutSeconds: 2, HTTPGet: &contract.AppProbeHTTPGet{Path: "/live", Port: 8080}}},
	}, {
		name:       "tcpSocket and grpc on captured ports become httpGet",
		pod:        probePod(withProbes(nil, tcpProbe(8080), grpcProbe(9090, svc))),
		wantProbes: [3]*corev1.Probe{nil, appHealth(tcpProbe(8080), "/app-health/app/livez"), appHealth(grpcProbe(9090, svc), "/app-health/app/startupz")},
		want: contract.AppProbes{
			"/app-health/app/livez":    {TCPSocket: &contract.AppProbePort{Port: 8080}},
			"/app-health/app/startupz": {GRPC: &contract.AppProbeGRPC{Port: 9090, Service: &svc}},
		},
	}, {
		name:       "excludeInboundPorts: that port's probe stays, the other is rewritten",
		pod:        probePod(withProbes(httpProbe("/", intstr.FromInt32(8080)), tcpProbe(9090), nil), annotate(capture.AnnotationExcludeInboundPorts, "8080")),
		wantProbes: [3]*corev1.Probe{httpProbe("/", intstr.FromInt32(8080)), appHealth(tcpProbe(9090), "/app-health/app/livez")},
		want:       contract.AppProbes{"/app-health/app/livez": {TCPSocket: &contract.AppProbePort{Port: 9090}}},
	}, {
		name:       "includeInboundPorts names 8080 only: 9090 is not captured",
		pod:        probePod(withProbes(httpProbe("/", intstr.FromInt32(8080)), tcpProbe(9090), nil), annotate(capture.AnnotationIncludeInboundPorts, "8080")),
		wantProbes: [3]*corev1.Probe{appHealth(httpProbe("/", intstr.FromInt32(8080)), "/app-health/app/readyz"), tcpProbe(9090)},
		want:       contract.AppProbes{"/app-health/app/readyz": {TimeoutSeconds: 2, HTTPGet: &contract.AppProbeHTTPGet{Path: "/", Port: 8080}}},
	}, {
		name:       "proxy-env pod: no inbound capture, probes as written",
		pod:        probePod(withProbes(ready, tcpProbe(8080), nil), annotate(capture.AnnotationInterception, string(capture.InterceptionProxyEnv))),
		wantProbes: [3]*corev1.Probe{ready, tcpProbe(8080)},
	}, {
		name:       "opt-out annotation",
		pod:        probePod(withProbes(ready, tcpProbe(8080), nil), annotate(contract.AnnotationRewriteAppProbes, "false")),
		wantProbes: [3]*corev1.Probe{ready, tcpProbe(8080)},
	}, {
		name: "exec, a host of its own, an unknown port name, the sidecar's own port: untouched",
		pod: probePod(withProbes(
			&corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}},
			&corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Host: "10.0.0.9", Port: intstr.FromInt32(8080)}}},
			httpProbe("/", intstr.FromString("metrics")))),
		wantProbes: [3]*corev1.Probe{
			{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}},
			{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Host: "10.0.0.9", Port: intstr.FromInt32(8080)}}},
			httpProbe("/", intstr.FromString("metrics"))},
	}, {
		name:       "a probe on a sidecar port (15000-15021) is never captured",
		pod:        probePod(withProbes(tcpProbe(15021), nil, nil)),
		wantProbes: [3]*corev1.Probe{tcpProbe(15021)},
	}, {
		// Its inbound is captured too (mutual TLS for TCP-only pods), so the probe would
		// reach the sidecar, not the app: rewritten like any other.
		name: "TCP-only pod: no app port, inbound still captured",
		pod: probePod(withProbes(nil, tcpProbe(6379), nil), func(p *corev1.Pod) {
			p.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "redis", ContainerPort: 6379}}
		}),
		wantProbes: [3]*corev1.Probe{nil, appHealth(tcpProbe(6379), "/app-health/app/livez")},
		want:       contract.AppProbes{"/app-health/app/livez": {TCPSocket: &contract.AppProbePort{Port: 6379}}},
	}, {
		name: "TCP-only pod with nothing captured inbound: untouched",
		pod: probePod(withProbes(nil, tcpProbe(6379), nil), func(p *corev1.Pod) {
			p.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "redis", ContainerPort: 6379}}
		}, annotate(capture.AnnotationIncludeInboundPorts, "")),
		wantProbes: [3]*corev1.Probe{nil, tcpProbe(6379)},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			pod, got := injectedProbes(t, tc.pod)
			c := pod.Spec.Containers[0]
			if d := cmp.Diff(tc.wantProbes, [3]*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe}); d != "" {
				t.Errorf("probes of container app (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("the sidecar's %s (-want +got):\n%s", contract.AppProbesEnv, d)
			}
		})
	}
}

// TestRewriteAppProbesContainers: every container but the sidecar, native sidecars among
// the init containers included, gets its own paths.
func TestRewriteAppProbesContainers(t *testing.T) {
	pod := probePod(withProbes(httpProbe("/ready", intstr.FromInt32(8080)), nil, nil), func(p *corev1.Pod) {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "admin", Image: "example/admin:v1",
			Ports:          []corev1.ContainerPort{{Name: "http-admin", ContainerPort: 8081}},
			ReadinessProbe: httpProbe("/ok", intstr.FromString("http-admin")), LivenessProbe: tcpProbe(8081)})
		p.Spec.InitContainers = []corev1.Container{{Name: "log-shipper", Image: "example/ship:v1",
			RestartPolicy: ptr(corev1.ContainerRestartPolicyAlways), StartupProbe: tcpProbe(7000)}}
	})
	pod, got := injectedProbes(t, pod)
	wantPaths := []string{"/app-health/admin/livez", "/app-health/admin/readyz", "/app-health/app/readyz", "/app-health/log-shipper/startupz"}
	var paths []string
	for p := range got {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	if d := cmp.Diff(wantPaths, paths); d != "" {
		t.Errorf("recorded paths (-want +got):\n%s", d)
	}
	if g := got["/app-health/admin/readyz"].HTTPGet; g == nil || g.Port != 8081 {
		t.Errorf("admin's readiness record %+v, want port 8081 (named http-admin)", g)
	}
	for _, c := range slices.Concat(pod.Spec.InitContainers, pod.Spec.Containers) {
		for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe, c.StartupProbe} {
			if p == nil || c.Name == ContainerName {
				continue
			}
			if p.HTTPGet == nil || p.HTTPGet.Port.IntVal != contract.MetricsPort || !strings.HasPrefix(p.HTTPGet.Path, "/app-health/"+c.Name+"/") {
				t.Errorf("container %s kept a probe %+v, want it on :%d/app-health/%s/...", c.Name, p.ProbeHandler, contract.MetricsPort, c.Name)
			}
		}
	}
	sc := pod.Spec.Containers[len(pod.Spec.Containers)-1]
	if sc.ReadinessProbe.HTTPGet.Path != "/ready" {
		t.Errorf("the sidecar's own probe became %+v", sc.ReadinessProbe.HTTPGet)
	}
}

// TestRewriteAppProbesIdempotent: a second pass over a rewritten pod finds nothing to do,
// and the webhook called again (reinvocation) changes nothing.
func TestRewriteAppProbesIdempotent(t *testing.T) {
	pod, first := injectedProbes(t, probePod(withProbes(httpProbe("/", intstr.FromInt32(8080)), tcpProbe(9090), nil)))
	if len(first) != 2 {
		t.Fatalf("first injection recorded %d probes, want 2", len(first))
	}
	again := pod.DeepCopy()
	var sc corev1.Container
	if err := rewriteAppProbes(again, &sc, capture.InterceptionIPTables, capture.Default()); err != nil || len(sc.Env) != 0 {
		t.Errorf("rewriting a rewritten pod: err %v, env %v; want nothing", err, sc.Env)
	}
	if d := cmp.Diff(pod, again); d != "" {
		t.Errorf("rewriting a rewritten pod changed it (-first +second):\n%s", d)
	}
	if changed, err := Inject(again, again.Namespace, testConfig); changed || err != nil {
		t.Errorf("second Inject: changed %v err %v", changed, err)
	}
}

func TestRewriteAppProbesRefusals(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		pod        *corev1.Pod
	}{{
		name: "annotation not a boolean",
		pod:  probePod(withProbes(tcpProbe(8080), nil, nil), annotate(contract.AnnotationRewriteAppProbes, "nope")),
		want: `annotation weft.dev/rewrite-app-probes="nope" is not a boolean`,
	}, {
		name: "record past the bound",
		pod: probePod(withProbes(httpProbe("/", intstr.FromInt32(8080)), nil, nil), func(p *corev1.Pod) {
			p.Spec.Containers[0].ReadinessProbe.HTTPGet.HTTPHeaders = []corev1.HTTPHeader{{Name: "X-Big", Value: strings.Repeat("a", contract.MaxAppProbesBytes)}}
		}),
		want: "more than 65536",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Inject(tc.pod, tc.pod.Namespace, testConfig)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Inject error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestRewrittenProbeReachesTheApp: the kubelet's rewritten probe, asked of the sidecar's
// metrics handler built from the injector's record, runs the original against a real app
// on the loopback.
func TestRewrittenProbeReachesTheApp(t *testing.T) {
	var unhealthy atomic.Bool
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" || r.Header.Get("X-Probe") != "kubelet" || unhealthy.Load() {
			http.Error(w, "no", http.StatusInternalServerError)
		}
	}))
	defer app.Close()
	_, portStr, _ := net.SplitHostPort(app.Listener.Addr().String())
	port, _ := strconv.Atoi(portStr)
	probe := httpProbe("/healthz", intstr.FromInt(port))
	probe.HTTPGet.HTTPHeaders = []corev1.HTTPHeader{{Name: "X-Probe", Value: "kubelet"}}
	pod, rec := injectedProbes(t, probePod(withProbes(probe, nil, nil), annotate(AnnotationAppPort, portStr)))
	sidecar := httptest.NewServer(admin.New(admin.Options{AppProbes: rec}).MetricsHandler())
	defer sidecar.Close()
	kubelet := func() (int, string) {
		rp := pod.Spec.Containers[0].ReadinessProbe.HTTPGet
		resp, err := http.Get(sidecar.URL + rp.Path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := kubelet(); code != 200 {
		t.Errorf("healthy app: %d %s", code, body)
	}
	unhealthy.Store(true)
	if code, body := kubelet(); code != 503 || !strings.Contains(body, "HTTP 500") {
		t.Errorf("unhealthy app: %d %s, want 503 naming HTTP 500", code, body)
	}
	raw, _ := json.Marshal(rec)
	t.Logf("%s=%s", contract.AppProbesEnv, raw)
}
