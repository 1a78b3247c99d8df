package controllers

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/snapshot"
	"github.com/weftmesh/weft/internal/xds"
)

// edsNamespace is the namespace of the endpoint fast-path tests; their manager watches only it.
const edsNamespace = "eds-test"

// publishedCache is the real xDS cache with every Result the reconciler sets recorded, in
// order, so a test can look at the whole sequence of what sidecars could have been sent.
type publishedCache struct {
	*xds.Cache
	mu  sync.Mutex
	all []*snapshot.Result
}

func (c *publishedCache) SetResult(ctx context.Context, r *snapshot.Result) error {
	c.mu.Lock()
	c.all = append(c.all, r)
	c.mu.Unlock()
	return c.Cache.SetResult(ctx, r)
}

func (c *publishedCache) results() []*snapshot.Result {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*snapshot.Result(nil), c.all...)
}

func (c *publishedCache) last() *snapshot.Result {
	all := c.results()
	if len(all) == 0 {
		return nil
	}
	return all[len(all)-1]
}

func edsCluster(svc string) string {
	return fmt.Sprintf("outbound|9080||%s.%s.svc.cluster.local|%s/%s", svc, edsNamespace, edsNamespace, svc)
}

// addressesOf are the endpoint addresses res sends for cluster name, sorted.
func addressesOf(res *snapshot.Result, name string) []string {
	var out []string
	if res == nil {
		return nil
	}
	for _, cla := range res.Endpoints {
		if cla.GetClusterName() != name {
			continue
		}
		for _, loc := range cla.GetEndpoints() {
			for _, e := range loc.GetLbEndpoints() {
				out = append(out, e.GetEndpoint().GetAddress().GetSocketAddress().GetAddress())
			}
		}
	}
	return out
}

// counterIP encodes n in an address, counterOf decodes it (-1: none or several).
func counterIP(n int) string { return fmt.Sprintf("10.77.%d.%d", n>>8&255, n&255) }

func counterOf(res *snapshot.Result, cluster string) int {
	a := addressesOf(res, cluster)
	if len(a) != 1 {
		return -1
	}
	ip := net.ParseIP(a[0]).To4()
	return int(ip[2])<<8 | int(ip[3])
}

func edsSlice(svc, name string, ips ...string) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: edsNamespace, Name: name, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080)}},
	}
	for _, ip := range ips {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	return es
}

func edsService(name string) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: edsNamespace, Name: name},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 9080, TargetPort: intstr.FromInt32(8080)}}}}
}

func edsRoute(name string) *meshv1alpha1.MeshRoute {
	return &meshv1alpha1.MeshRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: edsNamespace, Name: name},
		Spec: meshv1alpha1.MeshRouteSpec{Hosts: []string{name}, HTTP: []meshv1alpha1.HTTPRule{{
			Route: []meshv1alpha1.RouteDestination{{Destination: meshv1alpha1.Destination{Service: name, Port: 9080}, Weight: 1}}}}},
	}
}

// setSliceIPs replaces the endpoints of slice name (retrying on conflicts).
func setSliceIPs(svc, name string, ips ...string) {
	GinkgoHelper()
	Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var es discoveryv1.EndpointSlice
		if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: edsNamespace, Name: name}, &es); err != nil {
			return err
		}
		es.Endpoints = edsSlice(svc, name, ips...).Endpoints
		return k8sClient.Update(ctx, &es)
	})).To(Succeed())
}

var _ = Describe("the endpoint-only fast path", Ordered, func() {
	const timeout = "20s"
	var (
		rec  *SnapshotReconciler
		pub  *publishedCache
		stop context.CancelFunc
		view = snapshot.View{Namespace: edsNamespace}
	)
	versionsOf := func(res *snapshot.Result) map[string]string {
		GinkgoHelper()
		snap, err := res.Snapshot(view)
		Expect(err).NotTo(HaveOccurred())
		out := map[string]string{}
		for _, t := range xds.Types {
			out[t] = snap.GetVersion(t)
		}
		return out
	}

	BeforeAll(func() {
		Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: edsNamespace}})).To(Succeed())
		mgr, err := ctrl.NewManager(cfg, ctrl.Options{
			Scheme:                 scheme.Scheme,
			Metrics:                metricsserver.Options{BindAddress: "0"},
			HealthProbeBindAddress: "0",
			Cache:                  cache.Options{DefaultNamespaces: map[string]cache.Config{edsNamespace: {}}},
			// The suite's own manager already runs a controller named "snapshot".
			Controller: config.Controller{SkipNameValidation: ptr.To(true)},
		})
		Expect(err).NotTo(HaveOccurred())
		pub = &publishedCache{Cache: xds.NewCache()}
		rec = NewSnapshotReconciler(mgr.GetClient(), mgr.GetAPIReader(), pub, mgr.Elected())
		Expect(rec.SetupWithManager(mgr)).To(Succeed())
		var mctx context.Context
		mctx, stop = context.WithCancel(ctx)
		go func() {
			defer GinkgoRecover()
			Expect(mgr.Start(mctx)).To(Succeed())
		}()
		for _, svc := range []string{"web", "api"} {
			Expect(k8sClient.Create(ctx, edsService(svc))).To(Succeed())
			Expect(k8sClient.Create(ctx, edsSlice(svc, svc+"-1", "10.1.0.1"))).To(Succeed())
			Expect(k8sClient.Create(ctx, edsRoute(svc))).To(Succeed())
		}
		Eventually(func() []string { return addressesOf(pub.last(), edsCluster("api")) }, timeout).Should(Equal([]string{"10.1.0.1"}))
		Eventually(func() []string { return addressesOf(pub.last(), edsCluster("web")) }, timeout).Should(Equal([]string{"10.1.0.1"}))
	})
	AfterAll(func() {
		if stop != nil {
			stop()
		}
	})

	It("sends a changed EndpointSlice without translating, keeping every other type's version", func() {
		// The first full passes may still be running: a MeshRoute status write that lost a
		// conflict with the suite's own manager (which also writes them) requeues a full
		// pass after the endpoints were published (seen in CI: 4 full passes, not 3). Measure
		// from a quiet second on.
		Eventually(func() bool {
			n := rec.fullPasses.Load()
			time.Sleep(time.Second)
			return rec.fullPasses.Load() == n
		}, timeout).Should(BeTrue(), "the reconciler kept translating after the setup")
		full, eds := rec.fullPasses.Load(), rec.endpointPasses.Load()
		before := versionsOf(pub.last())
		setSliceIPs("web", "web-1", "10.1.0.2", "10.1.0.3")
		Eventually(func() []string { return addressesOf(pub.last(), edsCluster("web")) }, timeout).Should(Equal([]string{"10.1.0.2", "10.1.0.3"}))
		Expect(rec.fullPasses.Load()).To(Equal(full), "an endpoint-only change translated everything")
		Expect(rec.endpointPasses.Load()).To(BeNumerically(">", eds))
		after := versionsOf(pub.last())
		for _, t := range []string{resourcev3.ClusterType, resourcev3.ListenerType, resourcev3.RouteType} {
			Expect(after[t]).To(Equal(before[t]), "%s version changed on an endpoint-only change", t)
		}
		Expect(after[resourcev3.EndpointType]).NotTo(Equal(before[resourcev3.EndpointType]))
		// The other Service's endpoints are untouched.
		Expect(addressesOf(pub.last(), edsCluster("api"))).To(Equal([]string{"10.1.0.1"}))
	})

	It("translates everything when a Service or a MeshRoute changes", func() {
		full := rec.fullPasses.Load()
		Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
			var s corev1.Service
			if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: edsNamespace, Name: "api"}, &s); err != nil {
				return err
			}
			s.Spec.Ports = append(s.Spec.Ports, corev1.ServicePort{Name: "admin", Port: 9090, TargetPort: intstr.FromInt32(9090)})
			return k8sClient.Update(ctx, &s)
		})).To(Succeed())
		Eventually(rec.fullPasses.Load, timeout).Should(BeNumerically(">", full), "a Service change took no full translation")
		Eventually(func() bool {
			for _, c := range pub.last().Clusters {
				if c.GetName() == "outbound|9090||api."+edsNamespace+".svc.cluster.local" {
					return true
				}
			}
			return false
		}, timeout).Should(BeTrue(), "the new Service port has no cluster")

		full = rec.fullPasses.Load()
		before := versionsOf(pub.last())
		Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
			var mr meshv1alpha1.MeshRoute
			if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: edsNamespace, Name: "api"}, &mr); err != nil {
				return err
			}
			mr.Spec.HTTP[0].Timeout = &meshv1alpha1.Duration{Duration: 3 * time.Second}
			return k8sClient.Update(ctx, &mr)
		})).To(Succeed())
		Eventually(rec.fullPasses.Load, timeout).Should(BeNumerically(">", full), "a MeshRoute change took no full translation")
		Eventually(func() string { return versionsOf(pub.last())[resourcev3.RouteType] }, timeout).ShouldNot(Equal(before[resourcev3.RouteType]))
	})

	// Endpoint changes race full translations (a Service and a MeshRoute keep changing):
	// whichever path publishes, the web endpoints sidecars could be sent never go back to an
	// older slice, and the last one published is the slice's final state.
	It("never publishes stale endpoints when endpoint changes race full translations", func() {
		const updates = 60
		start := len(pub.results())
		full, eds := rec.fullPasses.Load(), rec.endpointPasses.Load()
		var wg sync.WaitGroup
		done := make(chan struct{})
		wg.Add(1)
		go func() {
			defer GinkgoRecover()
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
					var s corev1.Service
					if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: edsNamespace, Name: "api"}, &s); err != nil {
						return err
					}
					s.Annotations = map[string]string{"weft.dev/test-churn": fmt.Sprint(i)}
					return k8sClient.Update(ctx, &s)
				})).To(Succeed())
				Expect(retry.RetryOnConflict(retry.DefaultRetry, func() error {
					var mr meshv1alpha1.MeshRoute
					if err := k8sClient.Get(ctx, client.ObjectKey{Namespace: edsNamespace, Name: "api"}, &mr); err != nil {
						return err
					}
					mr.Spec.HTTP[0].Timeout = &meshv1alpha1.Duration{Duration: time.Duration(1+i%50) * time.Second}
					return k8sClient.Update(ctx, &mr)
				})).To(Succeed())
				// Pace the churn so that some passes see only slice changes.
				time.Sleep(150 * time.Millisecond)
			}
		}()
		for n := 1; n <= updates; n++ {
			setSliceIPs("web", "web-1", counterIP(n))
		}
		Eventually(func() int { return counterOf(pub.last(), edsCluster("web")) }, timeout).Should(Equal(updates))
		close(done)
		wg.Wait()
		Eventually(func() int { return counterOf(pub.last(), edsCluster("web")) }, timeout).Should(Equal(updates))
		prev := 0
		for i, res := range pub.results()[start:] {
			n := counterOf(res, edsCluster("web"))
			if n < 0 {
				continue // the slice from before the race (two addresses)
			}
			Expect(n).To(BeNumerically(">=", prev), "published result %d sends web endpoint %d after %d: stale", start+i, n, prev)
			prev = n
		}
		// Which path each pass took depends on timing (a pass with a Service change pending
		// translates everything, slices included); full translations surely ran.
		Expect(rec.fullPasses.Load()).To(BeNumerically(">", full), "no full translation ran during the race")
		GinkgoWriter.Printf("race: %d full translations, %d endpoint-only passes, %d results published\n",
			rec.fullPasses.Load()-full, rec.endpointPasses.Load()-eds, len(pub.results())-start)
	})

	// A flood of slice events for a few Services is coalesced: one pass lists each changed
	// Service once and publishes once, however many events came in.
	It("coalesces a flood of endpoint changes into one pass per reconcile", func() {
		// A reconciler of its own, reading the API server directly and driven by hand, so the
		// count of passes does not depend on timing.
		own := &publishedCache{Cache: xds.NewCache()}
		r := NewSnapshotReconciler(k8sClient, k8sClient, own, nil)
		r.grants = false
		_, err := r.Reconcile(ctx, reconcile.Request{})
		Expect(err).NotTo(HaveOccurred())
		Expect(r.fullPasses.Load()).To(Equal(int64(1)))
		const rounds = 25
		for n := 1; n <= rounds; n++ {
			for _, svc := range []string{"web", "api"} {
				setSliceIPs(svc, svc+"-1", counterIP(1000+n))
				var es discoveryv1.EndpointSlice
				Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: edsNamespace, Name: svc + "-1"}, &es)).To(Succeed())
				Expect(r.sliceChanged(&es)).To(HaveLen(1))
			}
		}
		// An unlabelled slice is nothing translation reads: no pass.
		Expect(r.sliceChanged(&discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: edsNamespace, Name: "stray"}})).To(BeEmpty())
		Expect(r.endpoints).To(HaveLen(2), "the pending set holds one entry per Service")
		_, err = r.Reconcile(ctx, reconcile.Request{})
		Expect(err).NotTo(HaveOccurred())
		Expect(r.fullPasses.Load()).To(Equal(int64(1)))
		Expect(r.endpointPasses.Load()).To(Equal(int64(1)), "%d events took more than one pass", 2*rounds)
		Expect(own.results()).To(HaveLen(2))
		for _, svc := range []string{"web", "api"} {
			Expect(counterOf(own.last(), edsCluster(svc))).To(Equal(1000 + rounds))
		}
		// Nothing pending: a status-only pass publishes nothing.
		_, err = r.Reconcile(ctx, reconcile.Request{})
		Expect(err).NotTo(HaveOccurred())
		Expect(own.results()).To(HaveLen(2))
	})
})
