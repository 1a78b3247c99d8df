package controllers

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"google.golang.org/grpc"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/yaml"

	"github.com/weftmesh/weft/internal/workload"
)

var regexpDocs = regexp.MustCompile(`(?m)^---\s*$`)

var updateStatus = flag.Bool("update-status", false, "write the live objects of the status specs to testdata/status for the Argo CD health test")

// startWorkloadManager runs the MeshFunction and RedisProxy controllers, with event
// recorders, on the namespaces the suite's snapshot reconciler watches.
func startWorkloadManager() context.CancelFunc {
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:     k8sClient.Scheme(),
		Metrics:    metricsserver.Options{BindAddress: "0"},
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
		Cache:      cache.Options{DefaultNamespaces: map[string]cache.Config{xdsNamespace: {}, xdsOtherNamespace: {}}},
	})
	Expect(err).NotTo(HaveOccurred())
	fr := &MeshFunctionReconciler{Client: mgr.GetClient(), Options: workload.DefaultOptions(), Recorder: mgr.GetEventRecorder("weft-meshfunction")}
	Expect(fr.SetupWithManager(mgr)).To(Succeed())
	Expect((&RedisProxyReconciler{Client: mgr.GetClient(), Options: workload.DefaultOptions()}).SetupWithManager(mgr)).To(Succeed())
	mctx, stop := context.WithCancel(ctx)
	go func() {
		defer GinkgoRecover()
		Expect(mgr.Start(mctx)).To(Succeed())
	}()
	return stop
}

// live reads an object as kstatus and Argo CD see it: unstructured, straight from the API.
func live(g Gomega, kind, name string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion("mesh.weft.dev/v1alpha1")
	u.SetKind(kind)
	g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: xdsNamespace, Name: name}, u)).To(Succeed())
	return u
}

// apply creates the objects of a multi-document manifest in xdsNamespace (unless a document
// names another).
func apply(manifest string) {
	for _, doc := range splitDocs(manifest) {
		u := objectFromYAML(doc)
		if u.GetNamespace() == "" {
			u.SetNamespace(xdsNamespace)
		}
		Expect(k8sClient.Create(ctx, u)).To(Succeed(), doc)
		created = append(created, u)
	}
}

// created is what the status specs made, deleted after them: every sidecar of the suite
// shares the routes of every namespace, and other specs expect exactly their own.
var created []client.Object

// cleanUp deletes what the status specs created, including the workloads Weft rendered
// (envtest runs no garbage collector), and waits until the snapshot no longer has them.
func cleanUp() {
	for _, o := range created {
		Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, o))).To(Succeed())
	}
	created = nil
	managed := client.MatchingLabels{workload.LabelManagedBy: workload.ManagedBy}
	for _, ns := range []string{xdsNamespace, xdsOtherNamespace} {
		Expect(k8sClient.DeleteAllOf(ctx, &appsv1.Deployment{}, client.InNamespace(ns), managed)).To(Succeed())
		var svcs corev1.ServiceList
		Expect(k8sClient.List(ctx, &svcs, client.InNamespace(ns), managed)).To(Succeed())
		for i := range svcs.Items {
			Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, &svcs.Items[i]))).To(Succeed())
		}
	}
	Eventually(func(g Gomega) {
		for _, kind := range []string{"MeshRouteList", "MeshFunctionList", "RedisProxyList"} {
			l := &unstructured.UnstructuredList{}
			l.SetAPIVersion("mesh.weft.dev/v1alpha1")
			l.SetKind(kind)
			g.Expect(k8sClient.List(ctx, l, client.InNamespace(xdsNamespace))).To(Succeed())
			for _, o := range l.Items {
				g.Expect(o.GetName()).NotTo(HavePrefix("st-"), "%s %s not gone yet", kind, o.GetName())
				g.Expect(o.GetName()).NotTo(BeElementOf("payments", "ledger"))
			}
		}
	}).WithTimeout(20 * time.Second).Should(Succeed())
}

func splitDocs(s string) []string {
	var out []string
	for _, d := range regexpDocs.Split(s, -1) {
		if len(d) > 0 && d != "\n" {
			out = append(out, d)
		}
	}
	return out
}

// expectState waits until kstatus and the Argo CD health check both say what the state
// means, then (with -update-status) captures the object for the offline Argo CD test.
func expectState(kind, name string, want status.Status, argo, messagePart, file string) {
	var u *unstructured.Unstructured
	Eventually(func(g Gomega) {
		u = live(g, kind, name)
		res, err := status.Compute(u)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(res.Status).To(Equal(want), "kstatus message: %s; conditions: %v", res.Message, u.Object["status"])
		got, msg := argoHealth(GinkgoT(), u.Object)
		g.Expect(got).To(Equal(argo), msg)
		g.Expect(msg).To(ContainSubstring(messagePart))
	}).WithTimeout(30 * time.Second).WithPolling(100 * time.Millisecond).Should(Succeed())
	if *updateStatus && file != "" {
		capture(u, want, argo, messagePart, file)
	}
}

func capture(u *unstructured.Unstructured, want status.Status, argo, messagePart, file string) {
	obj := u.DeepCopy().Object
	unstructured.RemoveNestedField(obj, "metadata", "managedFields")
	unstructured.RemoveNestedField(obj, "metadata", "uid")
	unstructured.RemoveNestedField(obj, "metadata", "resourceVersion")
	// Times change on every run and decide nothing: pin them so captures diff cleanly.
	const pinned = "2026-01-01T00:00:00Z"
	_ = unstructured.SetNestedField(obj, pinned, "metadata", "creationTimestamp")
	if conds, ok, _ := unstructured.NestedSlice(obj, "status", "conditions"); ok {
		for _, c := range conds {
			c.(map[string]any)["lastTransitionTime"] = pinned
		}
		_ = unstructured.SetNestedSlice(obj, conds, "status", "conditions")
	}
	out, err := yaml.Marshal(capturedStatus{KStatus: string(want), ArgoCD: argo, ArgoCDMessage: messagePart, Object: obj})
	Expect(err).NotTo(HaveOccurred())
	Expect(os.MkdirAll(filepath.Join("testdata", "status"), 0o755)).To(Succeed())
	Expect(os.WriteFile(filepath.Join("testdata", "status", file+".yaml"), out, 0o644)).To(Succeed())
}

// eventsFor lists the events.k8s.io/v1 Events about one object with reason.
func eventsFor(g Gomega, kind, name, reason string) []eventsv1.Event {
	var l eventsv1.EventList
	g.Expect(k8sClient.List(ctx, &l, client.InNamespace(xdsNamespace))).To(Succeed())
	var out []eventsv1.Event
	for _, e := range l.Items {
		if e.Regarding.Kind == kind && e.Regarding.Name == name && e.Reason == reason {
			out = append(out, e)
		}
	}
	return out
}

var _ = Describe("Status that kstatus and Argo CD understand (issue 13)", Ordered, func() {
	var stop context.CancelFunc
	BeforeAll(func() { stop = startWorkloadManager() })
	AfterAll(func() {
		cleanUp()
		stop()
	})

	It("routes: Current when accepted, resolved and programmed; Failed on a host conflict", func() {
		apply(`
apiVersion: v1
kind: Service
metadata: {name: st-web}
spec: {ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshRoute
metadata: {name: st-web}
spec:
  hosts: [st-web]
  http: [{route: [{service: st-web, weight: 1}]}]
`)
		expectState("MeshRoute", "st-web", status.CurrentStatus, "Healthy", "Programmed", "meshroute-healthy")
		apply(`
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshRoute
metadata: {name: st-web-late}
spec:
  hosts: [st-web]
  http: [{route: [{service: st-web, weight: 1}]}]
`)
		expectState("MeshRoute", "st-web-late", status.FailedStatus, "Degraded", "already claimed by MeshRoute xds-test/st-web, which wins", "meshroute-degraded-conflict")
		Eventually(func(g Gomega) {
			g.Expect(eventsFor(g, "MeshRoute", "st-web-late", "HostConflict")).To(HaveLen(1))
			g.Expect(eventsFor(g, "MeshRoute", "st-web", "Programmed")).NotTo(BeEmpty())
		}).WithTimeout(20 * time.Second).Should(Succeed())
	})

	It("policies: Current when programmed, Failed for a host nothing serves", func() {
		apply(`
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshPolicy
metadata: {name: st-callers}
spec:
  rules: [{from: [{principals: [xds-test/web]}]}]
---
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshPolicy
metadata: {name: st-typo}
spec:
  action: DENY
  rules: [{to: [{hosts: [st-nowhere.example.internal]}]}]
`)
		expectState("MeshPolicy", "st-callers", status.CurrentStatus, "Healthy", "", "meshpolicy-healthy")
		expectState("MeshPolicy", "st-typo", status.FailedStatus, "Degraded", "HostNotFound", "meshpolicy-degraded-hostnotfound")
	})

	It("routes: hosts of another namespace are refused without a ReferenceGrant (Failed), allowed with one", func() {
		apply(`
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshRoute
metadata: {name: st-hijack}
spec:
  hosts: [kubernetes.default]
  http: [{directResponse: {status: 200}}]
---
apiVersion: v1
kind: Service
metadata: {name: st-remote, namespace: xds-other}
spec: {ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshRoute
metadata: {name: st-reach}
spec:
  hosts: [st-remote.xds-other]
  http: [{route: [{service: st-remote, namespace: xds-other, weight: 1}]}]
`)
		expectState("MeshRoute", "st-hijack", status.FailedStatus, "Degraded", "NotAllowedHosts", "meshroute-degraded-notallowedhosts")
		expectState("MeshRoute", "st-reach", status.FailedStatus, "Degraded", "ReferenceGrant", "meshroute-degraded-refnotpermitted")
		apply(`
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-xds-test, namespace: xds-other}
spec:
  from: [{group: mesh.weft.dev, kind: MeshRoute, namespace: xds-test}]
  to: [{group: "", kind: Service, name: st-remote}]
`)
		expectState("MeshRoute", "st-reach", status.CurrentStatus, "Healthy", "", "meshroute-healthy-granted")
		expectState("MeshRoute", "st-hijack", status.FailedStatus, "Degraded", "kubernetes.default belongs to namespace default", "")
	})

	// The CRD refuses a catch-all rule that is not last; a match after a catch-all match in
	// the last rule (or a route stored before that rule existed) is still shadowed.
	It("routes: a rule shadowed by a catch-all stays Current with Warning=True ShadowedRule and an Event", func() {
		apply(`
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshRoute
metadata: {name: st-shadow}
spec:
  hosts: [st-shadow]
  http:
  - name: api
    match: [{path: {type: Prefix, value: /api}}]
    directResponse: {status: 200}
  - name: rest
    match: [{path: {type: Prefix, value: /}}, {path: {type: Prefix, value: /admin}}]
    directResponse: {status: 404}
`)
		expectState("MeshRoute", "st-shadow", status.CurrentStatus, "Healthy", "Warning ShadowedRule", "meshroute-healthy-warning")
		Eventually(func(g Gomega) {
			g.Expect(eventsFor(g, "MeshRoute", "st-shadow", "ShadowedRule")).To(HaveLen(1))
		}).WithTimeout(20 * time.Second).Should(Succeed())
	})

	It("routes: InProgress while a sidecar has not ACKed the current version", func() {
		dial, node := testSidecar(xdsNamespace, "slow-sidecar", map[string]string{"app": "productpage"}, 0)
		conn, err := grpc.NewClient(xdsServer.Addr().String(), dial...)
		Expect(err).NotTo(HaveOccurred())
		defer conn.Close()
		sctx, hangUp := context.WithCancel(ctx)
		defer hangUp()
		st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
		Expect(err).NotTo(HaveOccurred())
		Expect(st.Send(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: resourcev3.ClusterType})).To(Succeed())
		_, err = st.Recv() // and never ACK it
		Expect(err).NotTo(HaveOccurred())
		expectState("MeshRoute", "st-web", status.InProgressStatus, "Progressing", "Pending", "meshroute-progressing")
		hangUp()
		expectState("MeshRoute", "st-web", status.CurrentStatus, "Healthy", "", "")
	})

	It("reads InProgress before Weft wrote status: the CRD defaults status.observedGeneration", func() {
		// kstatus skips the generation check without status.observedGeneration and calls an
		// object with no conditions Current (cli-utils generic.go); the CRDs default
		// status to {observedGeneration: 0}, so a new object reads InProgress until Weft
		// writes its status. A server-side dry run shows the object as stored, before any
		// controller saw it.
		for _, kind := range []string{"MeshRoute", "MeshFunction", "RedisProxy"} {
			u := objectFromYAML(map[string]string{
				"MeshRoute": `{apiVersion: mesh.weft.dev/v1alpha1, kind: MeshRoute, metadata: {name: st-fresh},
  spec: {hosts: [fresh], http: [{route: [{service: web, port: 80}]}]}}`,
				"MeshFunction": `{apiVersion: mesh.weft.dev/v1alpha1, kind: MeshFunction, metadata: {name: st-fresh},
  spec: {template: {spec: {containers: [{name: fn, image: example/fn}]}}}}`,
				"RedisProxy": `{apiVersion: mesh.weft.dev/v1alpha1, kind: RedisProxy, metadata: {name: st-fresh},
  spec: {servers: [{name: s1, address: "127.0.0.1:7001"}]}}`,
			}[kind])
			u.SetNamespace(xdsNamespace)
			Expect(k8sClient.Create(ctx, u, client.DryRunAll)).To(Succeed(), kind)
			gen, found, _ := unstructured.NestedInt64(u.Object, "status", "observedGeneration")
			Expect(found).To(BeTrue(), "%s: status.observedGeneration is not defaulted", kind)
			Expect(gen).To(BeZero())
			res, err := status.Compute(u)
			Expect(err).NotTo(HaveOccurred())
			Expect(res.Status).To(Equal(status.InProgressStatus), kind)
			got, _ := argoHealth(GinkgoT(), u.Object)
			Expect(got).To(Equal("Progressing"), kind)
		}
	})

	It("functions: Current at zero, InProgress while pods start", func() {
		apply(`
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {name: st-idle}
spec:
  scale: {min: 0, initial: 0}
  template: {spec: {containers: [{name: fn, image: example/fn}]}}
---
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {name: st-starting}
spec:
  scale: {min: 1, initial: 1}
  template: {spec: {containers: [{name: fn, image: example/fn}]}}
`)
		expectState("MeshFunction", "st-idle", status.CurrentStatus, "Healthy", "ScaledToZero", "meshfunction-healthy-zero")
		// envtest runs no Deployment controller: the pod never becomes ready.
		expectState("MeshFunction", "st-starting", status.InProgressStatus, "Progressing", "Deploying", "meshfunction-progressing")
	})

	It("functions: a name taken by a user's Service or Deployment is NameConflict, and the object is left untouched", func() {
		userSvc := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: xdsNamespace, Name: "payments", Labels: map[string]string{"team": "billing"}},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "payments"},
				Ports: []corev1.ServicePort{{Name: "https", Port: 443, TargetPort: intstr.FromInt32(8443)}}},
		}
		Expect(k8sClient.Create(ctx, userSvc)).To(Succeed())
		created = append(created, userSvc)
		userDep := &appsv1.Deployment{
			ObjectMeta: metav1.ObjectMeta{Namespace: xdsNamespace, Name: "ledger", Labels: map[string]string{"team": "billing"}},
			Spec: appsv1.DeploymentSpec{Replicas: ptr.To[int32](3), Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "ledger"}},
				Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "ledger"}},
					Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "example/ledger"}}}}},
		}
		Expect(k8sClient.Create(ctx, userDep)).To(Succeed())
		created = append(created, userDep)
		apply(`
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {name: payments}
spec:
  template: {spec: {containers: [{name: fn, image: example/fn}]}}
---
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {name: ledger}
spec:
  template: {spec: {containers: [{name: fn, image: example/fn}]}}
`)
		expectState("MeshFunction", "payments", status.FailedStatus, "Degraded", "Service xds-test/payments already exists and is not owned by MeshFunction payments", "meshfunction-degraded-nameconflict")
		expectState("MeshFunction", "ledger", status.FailedStatus, "Degraded", "Deployment xds-test/ledger already exists and is not owned by MeshFunction ledger", "")
		Eventually(func(g Gomega) {
			u := live(g, "MeshFunction", "payments")
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			var accepted map[string]any
			for _, c := range conds {
				if m := c.(map[string]any); m["type"] == "Accepted" {
					accepted = m
				}
			}
			g.Expect(accepted).To(HaveKeyWithValue("status", "False"))
			g.Expect(accepted).To(HaveKeyWithValue("reason", "NameConflict"))
			g.Expect(eventsFor(g, "MeshFunction", "payments", "NameConflict")).NotTo(BeEmpty())
		}).WithTimeout(20 * time.Second).Should(Succeed())

		// The user's objects are exactly as they were, and Weft created nothing beside them.
		got := &corev1.Service{}
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(userSvc), got)).To(Succeed())
		Expect(got.Labels).To(Equal(map[string]string{"team": "billing"}))
		Expect(got.Spec.Selector).To(Equal(map[string]string{"app": "payments"}))
		Expect(got.Spec.Ports).To(HaveLen(1))
		Expect(got.Spec.Ports[0].Port).To(Equal(int32(443)))
		Expect(got.OwnerReferences).To(BeEmpty())
		Expect(apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKey{Namespace: xdsNamespace, Name: "payments"}, &appsv1.Deployment{}))).To(BeTrue())
		gotDep := &appsv1.Deployment{}
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(userDep), gotDep)).To(Succeed())
		Expect(*gotDep.Spec.Replicas).To(Equal(int32(3)))
		Expect(gotDep.Labels).To(Equal(map[string]string{"team": "billing"}))
		Expect(gotDep.OwnerReferences).To(BeEmpty())
		Expect(gotDep.Spec.Template.Spec.Containers).To(HaveLen(1))
		Expect(apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKey{Namespace: xdsNamespace, Name: "ledger"}, &corev1.Service{}))).To(BeTrue())

		// Events follow transitions: a new generation that is still in conflict adds none.
		fn := live(Default, "MeshFunction", "payments")
		Expect(unstructured.SetNestedField(fn.Object, "30s", "spec", "timeout")).To(Succeed())
		Expect(k8sClient.Update(ctx, fn)).To(Succeed())
		Eventually(func(g Gomega) {
			u := live(g, "MeshFunction", "payments")
			og, _, _ := unstructured.NestedInt64(u.Object, "status", "observedGeneration")
			g.Expect(og).To(Equal(u.GetGeneration()))
			res, err := status.Compute(u)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(res.Status).To(Equal(status.FailedStatus))
		}).WithTimeout(20 * time.Second).Should(Succeed())
		Consistently(func(g Gomega) {
			for _, e := range eventsFor(g, "MeshFunction", "payments", "NameConflict") {
				g.Expect(e.Series).To(BeNil(), "the NameConflict event repeated: %+v", e.Series)
			}
		}).WithTimeout(2 * time.Second).Should(Succeed())

		// Deleting the function leaves the user's Service; deleting the user's Service lets
		// the next function of that name create its own.
		Expect(k8sClient.Delete(ctx, fn)).To(Succeed())
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(userSvc), got)).To(Succeed())
		Expect(k8sClient.Delete(ctx, got)).To(Succeed())
		apply(`
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {name: payments}
spec:
  template: {spec: {containers: [{name: fn, image: example/fn}]}}
`)
		Eventually(func(g Gomega) {
			s := &corev1.Service{}
			g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: xdsNamespace, Name: "payments"}, s)).To(Succeed())
			g.Expect(s.OwnerReferences).To(ContainElement(HaveField("Name", "payments")))
		}).WithTimeout(20 * time.Second).Should(Succeed())
	})

	It("redis pools: Current when served, InProgress without servers, Failed for a missing Secret or a taken name", func() {
		apply(`
apiVersion: mesh.weft.dev/v1alpha1
kind: RedisProxy
metadata: {name: st-cache}
spec:
  listener: {port: 16379}
  servers: [{name: a, address: "10.0.0.1:6379"}]
---
apiVersion: v1
kind: Service
metadata: {name: st-redis-empty}
spec: {ports: [{name: redis, port: 6379}]}
---
apiVersion: mesh.weft.dev/v1alpha1
kind: RedisProxy
metadata: {name: st-empty}
spec:
  listener: {port: 16380}
  serviceRef: {name: st-redis-empty}
---
apiVersion: mesh.weft.dev/v1alpha1
kind: RedisProxy
metadata: {name: st-locked}
spec:
  listener: {port: 16381}
  servers: [{name: a, address: "10.0.0.1:6379"}]
  auth: {upstream: {passwordSecretRef: {name: st-missing}}}
---
apiVersion: v1
kind: Service
metadata: {name: st-standalone-redis-proxy, labels: {team: cache}}
spec: {ports: [{name: redis, port: 7000}]}
---
apiVersion: mesh.weft.dev/v1alpha1
kind: RedisProxy
metadata: {name: st-standalone}
spec:
  listener: {port: 16382}
  servers: [{name: a, address: "10.0.0.1:6379"}]
  replicas: 1
`)
		expectState("RedisProxy", "st-cache", status.CurrentStatus, "Healthy", "", "redisproxy-healthy")
		expectState("RedisProxy", "st-empty", status.InProgressStatus, "Progressing", "NoServers", "redisproxy-progressing")
		expectState("RedisProxy", "st-locked", status.FailedStatus, "Degraded", "SecretNotFound", "redisproxy-degraded-secret")
		expectState("RedisProxy", "st-standalone", status.FailedStatus, "Degraded", "Service xds-test/st-standalone-redis-proxy already exists and is not owned by RedisProxy st-standalone", "redisproxy-degraded-nameconflict")
		s := &corev1.Service{}
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: xdsNamespace, Name: "st-standalone-redis-proxy"}, s)).To(Succeed())
		Expect(s.Spec.Ports[0].Port).To(Equal(int32(7000)))
		Expect(s.Labels).To(Equal(map[string]string{"team": "cache"}))
		Expect(s.OwnerReferences).To(BeEmpty())
		Consistently(func() bool {
			return apierrors.IsNotFound(k8sClient.Get(ctx, client.ObjectKey{Namespace: xdsNamespace, Name: "st-standalone-redis-proxy"}, &appsv1.Deployment{}))
		}).WithTimeout(2*time.Second).Should(BeTrue(), "a Deployment was created beside a Service Weft does not own")

		// Changing the hash of a pool that serves moves its keys: still Current, with a
		// warning and an Event.
		rp := live(Default, "RedisProxy", "st-cache")
		Expect(unstructured.SetNestedField(rp.Object, "murmur", "spec", "sharding", "hash")).To(Succeed())
		Expect(k8sClient.Update(ctx, rp)).To(Succeed())
		expectState("RedisProxy", "st-cache", status.CurrentStatus, "Healthy", "Warning KeysRehomed", "redisproxy-healthy-warning")
		Eventually(func(g Gomega) {
			g.Expect(eventsFor(g, "RedisProxy", "st-cache", "KeysRehomed")).To(HaveLen(1))
		}).WithTimeout(20 * time.Second).Should(Succeed())
		fmt.Fprintln(GinkgoWriter, "redis states checked")
	})
})
