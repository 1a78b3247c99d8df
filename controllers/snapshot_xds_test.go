package controllers

import (
	"context"
	"fmt"
	"sort"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/sidecar/xdsclient"
)

const reviewsCluster = "outbound|9080||reviews.xds-test.svc.cluster.local|xds-test/reviews"

func reviewsSlice(ips ...string) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: xdsNamespace, Name: "reviews-1", Labels: map[string]string{discoveryv1.LabelServiceName: "reviews"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080)}},
	}
	for _, ip := range ips {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	return es
}

func meshRoute(name, host, svc string) *meshv1alpha1.MeshRoute {
	return &meshv1alpha1.MeshRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: xdsNamespace, Name: name},
		Spec: meshv1alpha1.MeshRouteSpec{Hosts: []string{host}, HTTP: []meshv1alpha1.HTTPRule{{
			Route: []meshv1alpha1.RouteDestination{{Destination: meshv1alpha1.Destination{Service: svc, Port: 9080}, Weight: 1}}}}},
	}
}

// condition fetches obj and returns its condition of type t (zero value if absent).
func condition(g Gomega, obj client.Object, conds func() []metav1.Condition, t string) metav1.Condition {
	g.Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(obj), obj)).To(Succeed())
	if c := meta.FindStatusCondition(conds(), t); c != nil {
		return *c
	}
	return metav1.Condition{}
}

var _ = Describe("xDS snapshots served over ADS", Ordered, func() {
	const timeout = "20s"
	var (
		sidecar *xdsclient.Client
		route   *meshv1alpha1.MeshRoute
		cancel  context.CancelFunc
	)
	routeCond := func(g Gomega, r *meshv1alpha1.MeshRoute, t string) metav1.Condition {
		return condition(g, r, func() []metav1.Condition { return r.Status.Conditions }, t)
	}

	BeforeAll(func() {
		Expect(k8sClient.Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: xdsNamespace, Name: "reviews"},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 9080, TargetPort: intstr.FromInt32(8080)}}}})).To(Succeed())
		Expect(k8sClient.Create(ctx, reviewsSlice("10.0.0.1"))).To(Succeed())
		route = meshRoute("reviews", "reviews", "reviews")
		Expect(k8sClient.Create(ctx, route)).To(Succeed())

		var cctx context.Context
		cctx, cancel = context.WithCancel(ctx)
		dial, node := testSidecar(xdsNamespace, "productpage-1", map[string]string{"app": "productpage"}, 9080)
		sidecar = xdsclient.New(xdsclient.Options{Address: xdsServer.Addr().String(), Node: node, DialOptions: dial})
		go func() { _ = sidecar.Run(cctx) }()
	})
	AfterAll(func() { cancel() })

	It("sends a connecting sidecar exactly the listeners, routes and clusters of its view", func() {
		Eventually(func(g Gomega) {
			cfg := sidecar.Current()
			g.Expect(cfg).NotTo(BeNil())
			var clusters, listeners, vhosts []string
			for n := range cfg.Clusters {
				clusters = append(clusters, n)
			}
			for _, l := range cfg.HTTPListeners {
				if l.Address == "" {
					continue // a capture chain's unbound listener
				}
				listeners = append(listeners, l.Name+"@"+l.Address)
				if l.Name == "outbound_http" {
					// Every Service is in the mesh (issue 15): the MeshRoute's host replaces
					// reviews' default virtual host in route configuration "9080".
					for _, vh := range l.RoutesFor("reviews:9080").VirtualHosts {
						vhosts = append(vhosts, vh.Name)
					}
				}
			}
			sort.Strings(clusters)
			g.Expect(clusters).To(Equal([]string{"BlackHoleCluster", "InboundPassthroughCluster", "PassthroughCluster",
				"inbound|9080", "outbound|9080||reviews.xds-test.svc.cluster.local", reviewsCluster}))
			g.Expect(listeners).To(ConsistOf("outbound_http@127.0.0.1:15001", "inbound_http@0.0.0.0:15006"))
			g.Expect(vhosts).To(Equal([]string{"xds-test/reviews|reviews", "allow_any"}))
			g.Expect(cfg.Clusters[reviewsCluster].Endpoints).To(HaveLen(1))
			g.Expect(cfg.Clusters[reviewsCluster].Endpoints[0].Address).To(Equal("10.0.0.1:8080"))
		}, timeout).Should(Succeed())
	})

	It("pushes a new EDS version, and only that, when the EndpointSlice changes", func() {
		before := sidecar.Status().Versions
		es := &discoveryv1.EndpointSlice{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: xdsNamespace, Name: "reviews-1"}, es)).To(Succeed())
		es.Endpoints = reviewsSlice("10.0.0.1", "10.0.0.2").Endpoints
		Expect(k8sClient.Update(ctx, es)).To(Succeed())
		Eventually(func(g Gomega) {
			cfg := sidecar.Current()
			g.Expect(cfg.Clusters[reviewsCluster].Endpoints).To(HaveLen(2))
			after := sidecar.Status().Versions
			g.Expect(after[resourcev3.EndpointType]).NotTo(Equal(before[resourcev3.EndpointType]))
			g.Expect(after[resourcev3.ClusterType]).To(Equal(before[resourcev3.ClusterType]))
			g.Expect(after[resourcev3.RouteType]).To(Equal(before[resourcev3.RouteType]))
		}, timeout).Should(Succeed())
	})

	// A cold start's middle leg: an EndpointSlice write (a pod became ready) until a sidecar
	// has applied the new endpoints. Reported, not asserted (timings are for BENCHMARKS.md):
	// go test ./controllers -ginkgo.focus "EndpointSlice write" -ginkgo.v
	It("measures the time from an EndpointSlice write to the sidecar applying it", func() {
		var took []time.Duration
		for i := 0; i < 20; i++ {
			ip := fmt.Sprintf("10.0.1.%d", i+1)
			es := &discoveryv1.EndpointSlice{}
			Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: xdsNamespace, Name: "reviews-1"}, es)).To(Succeed())
			es.Endpoints = reviewsSlice("10.0.0.1", ip).Endpoints
			start := time.Now()
			Expect(k8sClient.Update(ctx, es)).To(Succeed())
			Eventually(func() string {
				eps := sidecar.Current().Clusters[reviewsCluster].Endpoints
				if len(eps) != 2 {
					return ""
				}
				return eps[0].Address + " " + eps[1].Address
			}, timeout, time.Millisecond).Should(ContainSubstring(ip + ":8080"))
			took = append(took, time.Since(start))
		}
		sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
		AddReportEntry("EndpointSlice write → sidecar applied", fmt.Sprintf("p50 %v, p90 %v, max %v over %d writes",
			took[len(took)/2], took[len(took)*9/10], took[len(took)-1], len(took)))
		fmt.Fprintf(GinkgoWriter, "EndpointSlice write → sidecar applied: p50 %v p90 %v max %v\n",
			took[len(took)/2], took[len(took)*9/10], took[len(took)-1])
	})

	It("reports Accepted, ResolvedRefs and Programmed with the synced sidecar count", func() {
		Eventually(func(g Gomega) {
			g.Expect(routeCond(g, route, meshv1alpha1.ConditionAccepted).Status).To(Equal(metav1.ConditionTrue))
			g.Expect(routeCond(g, route, meshv1alpha1.ConditionResolvedRefs).Status).To(Equal(metav1.ConditionTrue))
			p := routeCond(g, route, meshv1alpha1.ConditionProgrammed)
			g.Expect(p.Status).To(Equal(metav1.ConditionTrue), p.Message)
			g.Expect(p.ObservedGeneration).To(Equal(route.Generation))
			g.Expect(route.Status.SyncedSidecars).To(Equal(int32(1)))
			g.Expect(route.Status.ObservedGeneration).To(Equal(route.Generation))
		}, timeout).Should(Succeed())
	})

	It("shows a sidecar's NACK in the status, and clears it when that sidecar leaves", func() {
		dial, n := testSidecar(xdsNamespace, "old-sidecar", map[string]string{"app": "productpage"}, 0)
		conn, err := grpc.NewClient(xdsServer.Addr().String(), dial...)
		Expect(err).NotTo(HaveOccurred())
		defer conn.Close()
		sctx, stop := context.WithCancel(ctx)
		defer stop()
		st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(st.Send(&discoveryv3.DiscoveryRequest{Node: n, TypeUrl: resourcev3.ClusterType})).To(Succeed())
		resp, err := st.Recv()
		Expect(err).NotTo(HaveOccurred())
		Expect(st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: resp.GetNonce(),
			ErrorDetail: &rpcstatus.Status{Code: 3, Message: "cluster " + reviewsCluster + ": field lb_policy is not supported"}})).To(Succeed())

		Eventually(func(g Gomega) {
			p := routeCond(g, route, meshv1alpha1.ConditionProgrammed)
			g.Expect(p.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(p.Reason).To(Equal(meshv1alpha1.ReasonRejected))
			g.Expect(p.Message).To(ContainSubstring("1 of 2 sidecars rejected"))
			g.Expect(route.Status.RejectedSidecars).To(Equal(int32(1)))
			g.Expect(route.Status.SyncedSidecars).To(Equal(int32(1)))
			g.Expect(route.Status.LastRejection).To(Equal("old-sidecar.xds-test: cluster " + reviewsCluster + ": field lb_policy is not supported"))
		}, timeout).Should(Succeed())

		stop()
		Eventually(func(g Gomega) {
			g.Expect(routeCond(g, route, meshv1alpha1.ConditionProgrammed).Status).To(Equal(metav1.ConditionTrue))
			g.Expect(route.Status.RejectedSidecars).To(BeZero())
			g.Expect(route.Status.LastRejection).To(BeEmpty())
		}, timeout).Should(Succeed())
	})

	It("lets the older route keep a contested host and reports the conflict and a missing Service on the newer", func() {
		newer := meshRoute("reviews-copy", "reviews", "nothere")
		newer.Spec.Hosts = append(newer.Spec.Hosts, "reviews-copy")
		Expect(k8sClient.Create(ctx, newer)).To(Succeed())
		Eventually(func(g Gomega) {
			a := routeCond(g, newer, meshv1alpha1.ConditionAccepted)
			g.Expect(a.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(a.Reason).To(Equal(meshv1alpha1.ReasonHostConflict))
			g.Expect(a.Message).To(ContainSubstring("host reviews is already claimed by MeshRoute xds-test/reviews"))
			r := routeCond(g, newer, meshv1alpha1.ConditionResolvedRefs)
			g.Expect(r.Reason).To(Equal(meshv1alpha1.ReasonBackendNotFound))
			g.Expect(r.Message).To(ContainSubstring("Service xds-test/nothere not found"))
			g.Expect(routeCond(g, route, meshv1alpha1.ConditionAccepted).Status).To(Equal(metav1.ConditionTrue))
		}, timeout).Should(Succeed())
		Eventually(func(g Gomega) {
			var names []string
			for _, vh := range sidecar.Current().HTTPListeners {
				if vh.Name == "outbound_http" {
					// One route configuration per port: reviews (a Service on 9080) is in
					// "9080", reviews-copy (no Service) in "80".
					for _, rt := range vh.RoutesByPort {
						for _, v := range rt.VirtualHosts {
							if v.Name != "allow_any" {
								names = append(names, v.Name)
							}
						}
					}
				}
			}
			g.Expect(names).To(ConsistOf("xds-test/reviews|reviews", "xds-test/reviews-copy|reviews-copy"))
		}, timeout).Should(Succeed())
	})

	It("reports a RedisProxy's missing Secret and picks the Secret up when it is created", func() {
		rp := &meshv1alpha1.RedisProxy{
			ObjectMeta: metav1.ObjectMeta{Namespace: xdsNamespace, Name: "cache"},
			Spec: meshv1alpha1.RedisProxySpec{
				WorkloadSelector: &meshv1alpha1.WorkloadSelector{Labels: map[string]string{"app": "productpage"}},
				Servers:          []meshv1alpha1.RedisServer{{Name: "s1", Address: "10.0.0.9:6379", Weight: 1}},
				Sharding:         meshv1alpha1.Sharding{Distribution: meshv1alpha1.DistributionKetama, Hash: "fnv1a_64", HashTag: "{}"},
				Auth: &meshv1alpha1.RedisAuth{Downstream: &meshv1alpha1.RedisCredentials{
					PasswordSecretRef: meshv1alpha1.SecretKeyRef{Name: "cache-auth", Key: "password"}}},
			},
		}
		Expect(k8sClient.Create(ctx, rp)).To(Succeed())
		rpCond := func(g Gomega, t string) metav1.Condition {
			return condition(g, rp, func() []metav1.Condition { return rp.Status.Conditions }, t)
		}
		Eventually(func(g Gomega) {
			c := rpCond(g, meshv1alpha1.ConditionResolvedRefs)
			g.Expect(c.Reason).To(Equal(meshv1alpha1.ReasonSecretNotFound))
			g.Expect(c.Message).To(ContainSubstring("Secret xds-test/cache-auth not found"))
		}, timeout).Should(Succeed())
		Expect(sidecar.Current().RedisListeners).To(BeEmpty(), "a pool whose password is missing must not be served")

		Expect(k8sClient.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: xdsNamespace, Name: "cache-auth"},
			Data: map[string][]byte{"password": []byte("s3cret")}})).To(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(rpCond(g, meshv1alpha1.ConditionResolvedRefs).Status).To(Equal(metav1.ConditionTrue))
			g.Expect(sidecar.Current().RedisListeners).To(HaveLen(1))
			g.Expect(rpCond(g, meshv1alpha1.ConditionProgrammed).Status).To(Equal(metav1.ConditionTrue))
			g.Expect(rp.Status.SyncedSidecars).To(Equal(int32(1)))
		}, timeout).Should(Succeed())
	})
})
