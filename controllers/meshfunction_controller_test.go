package controllers

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/autoscale"
	"github.com/weftmesh/weft/internal/workload"
)

// recordingScaler remembers what the controller told the autoscaler.
type recordingScaler struct {
	mu      sync.Mutex
	specs   map[autoscale.FunctionKey]autoscale.Spec
	ready   map[autoscale.FunctionKey]int
	removed map[autoscale.FunctionKey]bool
	aliases map[autoscale.FunctionKey]autoscale.FunctionKey
}

func newRecordingScaler() *recordingScaler {
	return &recordingScaler{specs: map[autoscale.FunctionKey]autoscale.Spec{}, ready: map[autoscale.FunctionKey]int{}, removed: map[autoscale.FunctionKey]bool{},
		aliases: map[autoscale.FunctionKey]autoscale.FunctionKey{}}
}
func (s *recordingScaler) SetSpec(fn autoscale.FunctionKey, spec autoscale.Spec) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.specs[fn] = spec
}
func (s *recordingScaler) SetReady(fn autoscale.FunctionKey, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ready[fn] = n
}
func (s *recordingScaler) Remove(fn autoscale.FunctionKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removed[fn] = true
}
func (s *recordingScaler) SetAlias(fn, target autoscale.FunctionKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if target == (autoscale.FunctionKey{}) {
		delete(s.aliases, fn)
		return
	}
	s.aliases[fn] = target
}
func (s *recordingScaler) alias(fn autoscale.FunctionKey) autoscale.FunctionKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.aliases[fn]
}
func (s *recordingScaler) spec(fn autoscale.FunctionKey) (autoscale.Spec, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sp, ok := s.specs[fn]
	return sp, ok
}
func (s *recordingScaler) wasRemoved(fn autoscale.FunctionKey) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.removed[fn]
}

var _ = Describe("MeshFunction controller", Ordered, func() {
	var (
		scaler    *recordingScaler
		decisions *Decisions
		drained   atomic.Bool
		clk       *clocktesting.FakeClock
		stop      context.CancelFunc
		cached    client.Client
		nn        = types.NamespacedName{Namespace: "default", Name: "orders"}
		key       = autoscale.FunctionKey{Namespace: "default", Name: "orders"}
	)

	BeforeAll(func() {
		scaler, decisions = newRecordingScaler(), NewDecisions()
		clk = clocktesting.NewFakeClock(time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC))
		stop, cached = startManager(func(mgr ctrl.Manager) error {
			r := &MeshFunctionReconciler{
				Client: mgr.GetClient(), Options: workload.DefaultOptions(), Scaler: scaler, Decisions: decisions,
				Handoff: HandoffFunc(func(types.NamespacedName) bool { return drained.Load() }),
				Clock:   clk, HandoffTimeout: time.Minute, Recorder: mgr.GetEventRecorder("weft-meshfunction"),
			}
			return r.SetupWithManager(mgr)
		})
	})
	AfterAll(func() { stop() })

	deployment := func(g Gomega) *appsv1.Deployment {
		d := &appsv1.Deployment{}
		g.Expect(k8sClient.Get(ctx, nn, d)).To(Succeed())
		return d
	}
	function := func(g Gomega) *meshv1alpha1.MeshFunction {
		f := &meshv1alpha1.MeshFunction{}
		g.Expect(k8sClient.Get(ctx, nn, f)).To(Succeed())
		return f
	}

	It("renders a Deployment at the initial scale and a Service, owned by the function", func() {
		u := objectFromYAML(`
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {name: orders, namespace: default}
spec:
  port: 9000
  template:
    spec:
      containers:
      - {name: fn, image: example/orders:v1}
  concurrency: {containerConcurrency: 10}
  scale: {initial: 2, max: 5, stableWindow: 30s}
`)
		Expect(k8sClient.Create(ctx, u)).To(Succeed())
		Eventually(func(g Gomega) {
			d := deployment(g)
			g.Expect(*d.Spec.Replicas).To(Equal(int32(2)))
			g.Expect(d.OwnerReferences).To(ContainElement(HaveField("Name", "orders")))
			g.Expect(d.Spec.Template.Spec.InitContainers).To(ContainElement(HaveField("Name", workload.SidecarContainerName)))
			svc := &corev1.Service{}
			g.Expect(k8sClient.Get(ctx, nn, svc)).To(Succeed())
			g.Expect(svc.Spec.Ports[0].TargetPort.IntValue()).To(Equal(contract.InboundPort))
			f := function(g)
			g.Expect(f.Status.URL).To(Equal("http://orders.default.svc.cluster.local"))
			g.Expect(f.Status.DesiredReplicas).To(Equal(int32(2)))
			g.Expect(f.Status.ObservedGeneration).To(Equal(f.Generation))
			ready := meta.FindStatusCondition(f.Status.Conditions, meshv1alpha1.ConditionAvailable)
			g.Expect(ready).NotTo(BeNil())
			g.Expect(ready.Reason).To(Equal(meshv1alpha1.ReasonDeploying))
		}).WithTimeout(60 * time.Second).Should(Succeed())

		By("handing the autoscaler the function's settings in Knative's terms")
		Eventually(func(g Gomega) {
			s, ok := scaler.spec(key)
			g.Expect(ok).To(BeTrue())
			g.Expect(s.ContainerConcurrency).To(Equal(10))
			g.Expect(s.TargetValue()).To(BeNumerically("~", 7.0, 1e-9)) // 10 × 70 %
			g.Expect(s.StableWindow).To(Equal(30 * time.Second))
			g.Expect(s.MaxScale).To(Equal(int32(5)))
		}).WithTimeout(10 * time.Second).Should(Succeed())
	})

	It("applies the autoscaler's decisions, clamped to max scale", func() {
		decisions.SetDesired(key, autoscale.Decision{Desired: 4})
		Eventually(func(g Gomega) {
			g.Expect(*deployment(g).Spec.Replicas).To(Equal(int32(4)))
			f := function(g)
			g.Expect(f.Status.DesiredReplicas).To(Equal(int32(4)))
			g.Expect(f.Status.LastScaleTime).NotTo(BeNil())
		}).WithTimeout(60 * time.Second).Should(Succeed())

		decisions.SetDesired(key, autoscale.Decision{Desired: 50})
		Eventually(func(g Gomega) {
			g.Expect(*deployment(g).Spec.Replicas).To(Equal(int32(5)))
		}).WithTimeout(60 * time.Second).Should(Succeed())
	})

	It("reports Available from the Deployment's ready replicas", func() {
		Eventually(func(g Gomega) {
			d := deployment(g)
			d.Status.Replicas, d.Status.ReadyReplicas = 5, 3
			g.Expect(k8sClient.Status().Update(ctx, d)).To(Succeed())
		}).WithTimeout(10 * time.Second).Should(Succeed())
		Eventually(func(g Gomega) {
			f := function(g)
			g.Expect(f.Status.ReadyReplicas).To(Equal(int32(3)))
			g.Expect(meta.IsStatusConditionTrue(f.Status.Conditions, meshv1alpha1.ConditionAvailable)).To(BeTrue())
		}).WithTimeout(60 * time.Second).Should(Succeed())
	})

	It("removes the last pod only after the hand-off, and then reports scaled to zero", func() {
		decisions.SetDesired(key, autoscale.Decision{Desired: 0, WantsZero: true})
		By("announcing zero in status while the pods stay")
		Eventually(func(g Gomega) {
			g.Expect(function(g).Status.DesiredReplicas).To(BeZero())
		}).WithTimeout(60 * time.Second).Should(Succeed())
		Consistently(func(g Gomega) {
			g.Expect(*deployment(g).Spec.Replicas).To(Equal(int32(5)))
		}).WithTimeout(2 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())

		By("scaling to zero once every caller ACKed the drained snapshot")
		drained.Store(true)
		Eventually(func(g Gomega) {
			g.Expect(*deployment(g).Spec.Replicas).To(BeZero())
		}).WithTimeout(60 * time.Second).Should(Succeed())
		Eventually(func(g Gomega) {
			d := deployment(g)
			d.Status.Replicas, d.Status.ReadyReplicas = 0, 0
			g.Expect(k8sClient.Status().Update(ctx, d)).To(Succeed())
		}).WithTimeout(10 * time.Second).Should(Succeed())
		Eventually(func(g Gomega) {
			ready := meta.FindStatusCondition(function(g).Status.Conditions, meshv1alpha1.ConditionAvailable)
			g.Expect(ready).NotTo(BeNil())
			g.Expect(ready.Status).To(Equal(metav1.ConditionTrue))
			g.Expect(ready.Reason).To(Equal(meshv1alpha1.ReasonScaledToZero))
		}).WithTimeout(60 * time.Second).Should(Succeed())

		By("recording the hand-off as one events.k8s.io/v1 Event")
		Eventually(func(g Gomega) {
			g.Expect(functionEvents(g, nn, meshv1alpha1.ReasonScaledToZero)).To(HaveLen(1))
			evs := functionEvents(g, nn, eventHandoff)
			g.Expect(evs).To(HaveLen(1))
			g.Expect(evs[0].Note).To(ContainSubstring("after every caller's sidecar ACKed"))
			g.Expect(evs[0].Type).To(Equal(corev1.EventTypeNormal))
		}).WithTimeout(20 * time.Second).Should(Succeed())
	})

	It("does not wait for the hand-off past its timeout", func() {
		drained.Store(false)
		decisions.SetDesired(key, autoscale.Decision{Desired: 2})
		Eventually(func(g Gomega) { g.Expect(*deployment(g).Spec.Replicas).To(Equal(int32(2))) }).WithTimeout(60 * time.Second).Should(Succeed())
		// The controller reads through the manager's cache: let it see the 2 replicas and the
		// status that announced them before asking for zero, so this spec tests the hand-off
		// timeout and not how fast the informers catch up.
		Eventually(func(g Gomega) {
			d, f := &appsv1.Deployment{}, &meshv1alpha1.MeshFunction{}
			g.Expect(cached.Get(ctx, nn, d)).To(Succeed())
			g.Expect(cached.Get(ctx, nn, f)).To(Succeed())
			g.Expect(*d.Spec.Replicas).To(Equal(int32(2)))
			g.Expect(f.Status.DesiredReplicas).To(Equal(int32(2)))
		}).WithTimeout(60 * time.Second).Should(Succeed())
		decisions.SetDesired(key, autoscale.Decision{Desired: 0, WantsZero: true})
		Eventually(func(g Gomega) { g.Expect(function(g).Status.DesiredReplicas).To(BeZero()) }).WithTimeout(60 * time.Second).Should(Succeed())
		Expect(*deployment(Default).Spec.Replicas).To(Equal(int32(2)))
		clk.Step(2 * time.Minute) // past HandoffTimeout; the 500 ms requeue notices
		Eventually(func(g Gomega) { g.Expect(*deployment(g).Spec.Replicas).To(BeZero()) }).WithTimeout(60 * time.Second).Should(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(functionEvents(g, nn, eventScaledFromZero)).To(HaveLen(1))
			evs := functionEvents(g, nn, eventHandoffTimeout)
			g.Expect(evs).To(HaveLen(1))
			g.Expect(evs[0].Type).To(Equal(corev1.EventTypeWarning))
		}).WithTimeout(20 * time.Second).Should(Succeed())
	})

	It("forgets a deleted function in the autoscaler", func() {
		Expect(k8sClient.Delete(ctx, &meshv1alpha1.MeshFunction{ObjectMeta: metav1.ObjectMeta{Name: nn.Name, Namespace: nn.Namespace}})).To(Succeed())
		Eventually(func() bool { return scaler.wasRemoved(key) }).WithTimeout(60 * time.Second).Should(BeTrue())
		Expect(k8sClient.Get(ctx, nn, &meshv1alpha1.MeshFunction{})).To(MatchError(ContainSubstring("not found")))
	})
})

// functionEvents lists the events.k8s.io/v1 Events about MeshFunction nn with reason.
func functionEvents(g Gomega, nn types.NamespacedName, reason string) []eventsv1.Event {
	var l eventsv1.EventList
	g.Expect(k8sClient.List(ctx, &l, client.InNamespace(nn.Namespace))).To(Succeed())
	var out []eventsv1.Event
	for _, e := range l.Items {
		if e.Regarding.Kind == "MeshFunction" && e.Regarding.Name == nn.Name && e.Reason == reason {
			out = append(out, e)
		}
	}
	return out
}
