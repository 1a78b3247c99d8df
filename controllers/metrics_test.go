package controllers

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/scheme"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/autoscale"
	"github.com/weftmesh/weft/internal/xds"
	"github.com/weftmesh/weft/sidecar/xdsclient"
)

// sample finds name{labels} in gathered families: a counter's or gauge's value, or a
// histogram's sample count and sum. ok is false without such a series.
func sample(fams map[string]*dto.MetricFamily, name string, labels ...string) (v, sum float64, ok bool) {
	f := fams[name]
	if f == nil {
		return 0, 0, false
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), 0, true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), 0, true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), m.GetHistogram().GetSampleSum(), true
		}
	}
	return 0, 0, false
}

func gathered(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	fams, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

// Decisions count a change of desired replicas by direction, ignore repeats, and drop a
// deleted function's series.
func TestScaleDecisionsCountedByDirection(t *testing.T) {
	d := NewDecisions()
	fn := autoscale.FunctionKey{Namespace: "metrics-unit", Name: "scaled"}
	for _, n := range []int32{1, 3, 3, 5, 2, 0} {
		d.SetDesired(fn, autoscale.Decision{Desired: n, WantsZero: n == 0})
	}
	fams := gathered(t)
	up, _, _ := sample(fams, "weft_autoscaler_scale_decisions_total", "namespace", fn.Namespace, "name", fn.Name, "direction", "up")
	down, _, _ := sample(fams, "weft_autoscaler_scale_decisions_total", "namespace", fn.Namespace, "name", fn.Name, "direction", "down")
	// 1 is the first decision (no direction); 1→3, 3→5 up; 5→2, 2→0 down; 3→3 unchanged.
	if up != 2 || down != 2 {
		t.Errorf("up %v down %v, want 2 and 2", up, down)
	}
	d.Forget(fn)
	if _, _, ok := sample(gathered(t), "weft_autoscaler_scale_decisions_total", "namespace", fn.Namespace, "name", fn.Name); ok {
		t.Error("a forgotten function keeps its scale-decision series")
	}
}

// The hand-off to zero is timed on the controller's clock and labelled with how it ended.
func TestHandoffDurationByOutcome(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC))
	var drained atomic.Bool
	decisions := NewDecisions()
	r := &MeshFunctionReconciler{Decisions: decisions, Clock: clk, HandoffTimeout: time.Minute,
		Handoff: HandoffFunc(func(types.NamespacedName) bool { return drained.Load() }), zeroSince: map[types.NamespacedName]time.Time{}}
	fn := &meshv1alpha1.MeshFunction{ObjectMeta: metav1.ObjectMeta{Namespace: "metrics-unit", Name: "handoff"}}
	dep := &appsv1.Deployment{Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](2)}}
	decisions.SetDesired(keyOf(types.NamespacedName{Namespace: fn.Namespace, Name: fn.Name}), autoscale.Decision{WantsZero: true})

	read := func(outcome string) (n, sum float64) {
		n, sum, _ = sample(gathered(t), "weft_handoff_duration_seconds", "outcome", outcome)
		return n, sum
	}
	acked0, ackedSum0 := read("acked")
	timeout0, timeoutSum0 := read("timeout")

	if n, _, _ := r.replicas(fn, dep, true, &meshv1alpha1.MeshFunctionStatus{}); n != 2 {
		t.Fatalf("replicas = %d before the hand-off, want 2 kept", n)
	}
	clk.Step(3 * time.Second)
	drained.Store(true)
	if n, _, ok := r.replicas(fn, dep, true, &meshv1alpha1.MeshFunctionStatus{}); n != 0 || !ok {
		t.Fatalf("replicas = %d drained %v after the ACKs, want 0 true", n, ok)
	}
	if n, sum := read("acked"); n != acked0+1 || sum-ackedSum0 != 3 {
		t.Errorf("acked hand-offs +%v taking %vs, want +1 taking 3s", n-acked0, sum-ackedSum0)
	}

	drained.Store(false)
	r.replicas(fn, dep, true, &meshv1alpha1.MeshFunctionStatus{})
	clk.Step(2 * time.Minute)
	if n, _, ok := r.replicas(fn, dep, true, &meshv1alpha1.MeshFunctionStatus{}); n != 0 || ok {
		t.Fatalf("replicas = %d drained %v past the timeout, want 0 false", n, ok)
	}
	if n, sum := read("timeout"); n != timeout0+1 || sum-timeoutSum0 != 120 {
		t.Errorf("timed-out hand-offs +%v taking %vs, want +1 taking 120s", n-timeout0, sum-timeoutSum0)
	}
	if n, _ := read("acked"); n != acked0+1 {
		t.Errorf("a timeout was counted as acked")
	}
}

// The manager's /metrics endpoint — served by a real manager on envtest, read over HTTP and
// parsed as Prometheus text — carries Weft's xDS metrics next to controller-runtime's own
// once a real sidecar has connected and a route has been translated.
var _ = Describe("manager metrics endpoint", Ordered, func() {
	const ns = "metrics-test"
	var (
		url    string
		stop   context.CancelFunc
		client *xdsclient.Client
	)
	BeforeAll(func() {
		Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
		free, err := net.Listen("tcp", "127.0.0.1:0")
		Expect(err).NotTo(HaveOccurred())
		addr := free.Addr().String()
		Expect(free.Close()).To(Succeed())
		url = "http://" + addr + "/metrics"
		mgr, err := ctrl.NewManager(cfg, ctrl.Options{
			Scheme:                 scheme.Scheme,
			Metrics:                metricsserver.Options{BindAddress: addr},
			HealthProbeBindAddress: "0",
			Controller:             config.Controller{SkipNameValidation: ptr.To(true)},
			Cache:                  cache.Options{DefaultNamespaces: map[string]cache.Config{ns: {}}},
		})
		Expect(err).NotTo(HaveOccurred())
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		Expect(err).NotTo(HaveOccurred())
		xc := xds.NewCache()
		r := NewSnapshotReconciler(mgr.GetClient(), mgr.GetAPIReader(), xc, mgr.Elected())
		srv := xds.New(xc, secureXDSOptions(xds.Options{Listener: ln, OnChange: r.Notify, Log: ctrl.Log.WithName("xds-metrics")}))
		r.Nodes = srv
		Expect(r.SetupWithManager(mgr)).To(Succeed())
		Expect(mgr.Add(srv)).To(Succeed())
		var mctx context.Context
		mctx, stop = context.WithCancel(ctx)
		go func() {
			defer GinkgoRecover()
			Expect(mgr.Start(mctx)).To(Succeed())
		}()
		<-srv.Ready()

		Expect(k8sClient.Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "ratings"},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 9080, TargetPort: intstr.FromInt32(8080)}}}})).To(Succeed())
		route := meshRoute("ratings", "ratings", "ratings")
		route.Namespace = ns
		Expect(k8sClient.Create(ctx, route)).To(Succeed())
		dial, node := testSidecar(ns, "web-1", map[string]string{"app": "web"}, 0)
		client = xdsclient.New(xdsclient.Options{Address: srv.Addr().String(), Node: node, DialOptions: dial})
		go func() { _ = client.Run(mctx) }()
	})
	AfterAll(func() { stop() })

	It("serves connected sidecars, pushes, push latency and translation time", func() {
		Eventually(func(g Gomega) {
			resp, err := http.Get(url)
			g.Expect(err).NotTo(HaveOccurred())
			defer resp.Body.Close()
			g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
			p := expfmt.NewTextParser(model.UTF8Validation)
			fams, err := p.TextToMetricFamilies(resp.Body)
			g.Expect(err).NotTo(HaveOccurred())
			get := func(name string, labels ...string) float64 {
				v, _, ok := sample(fams, name, labels...)
				g.Expect(ok).To(BeTrue(), fmt.Sprintf("no series %s%v", name, labels))
				return v
			}
			g.Expect(get("weft_xds_connected_sidecars", "stream", "sotw")).To(BeNumerically(">=", 1))
			g.Expect(get("pilot_xds")).To(BeNumerically(">=", 1))
			g.Expect(get("weft_xds_translation_duration_seconds")).To(BeNumerically(">=", 1))
			for _, ty := range xds.Types {
				if ty == resourcev3.SecretType {
					continue // this mesh has no secret for the sidecar: no SDS push
				}
				g.Expect(get("weft_xds_pushes_total", "type_url", ty)).To(BeNumerically(">=", 1), ty)
				g.Expect(get("weft_xds_push_latency_seconds", "type_url", ty)).To(BeNumerically(">=", 1), ty)
			}
			g.Expect(get("pilot_xds_pushes", "type", "rds")).To(BeNumerically(">=", 1))
			g.Expect(get("pilot_proxy_convergence_time")).To(BeNumerically(">=", 1))
			g.Expect(get("weft_xds_snapshot_versions_total", "type_url", resourcev3.RouteType)).To(BeNumerically(">=", 1))
			// controller-runtime's own metrics come from the same registry.
			g.Expect(get("controller_runtime_reconcile_total", "controller", "snapshot", "result", "success")).To(BeNumerically(">=", 1))
		}).WithTimeout(30 * time.Second).Should(Succeed())
	})
})
