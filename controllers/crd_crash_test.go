package controllers

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/workload"
)

// crashNamespace holds the objects that crashed the manager in issue 13.
const crashNamespace = "crash"

// The four manifests of issue 13 that stopped the manager. The CRDs now refuse them at
// apply (testdata/adversarial 001-004); these specs store them anyway, as they would be in
// a cluster that had them before the CRDs were upgraded, and show the manager survives.
var crashingManifests = map[string]string{
	"function-template-wrong-type": `
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {name: bad-template}
spec: {template: {spec: {containers: "echo"}}}`,
	"route-timeout-overflow": `
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshRoute
metadata: {name: bad-timeout}
spec:
  hosts: [bad-timeout]
  http:
  - timeout: 9999999999h
    route: [{service: reviews, port: 9080, weight: 1}]`,
	"route-baseinterval-overflow": `
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshRoute
metadata: {name: bad-interval}
spec:
  hosts: [bad-interval]
  http:
  - retries: {attempts: 2, baseInterval: 9999999999h}
    route: [{service: reviews, port: 9080, weight: 1}]`,
	"redis-optimeout-overflow": `
apiVersion: mesh.weft.dev/v1alpha1
kind: RedisProxy
metadata: {name: bad-optimeout}
spec:
  opTimeout: 9999999999h
  servers: [{name: a, address: "redis-0:6379", weight: 1}]`,
}

const crashGoodFunction = `
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {name: NAME, namespace: crash}
spec:
  template:
    spec:
      containers: [{name: fn, image: ghcr.io/example/echo}]`

// withLaxCRDs replaces the spec schema of every Weft CRD with one that takes anything, runs
// f, and puts the generated CRDs back.
func withLaxCRDs(f func()) {
	names := []string{"meshroutes.mesh.weft.dev", "meshfunctions.mesh.weft.dev", "redisproxies.mesh.weft.dev"}
	saved := map[string]apiextensionsv1.CustomResourceValidation{}
	setSchema := func(name string, schema func(*apiextensionsv1.CustomResourceValidation)) {
		Eventually(func() error {
			crd := &apiextensionsv1.CustomResourceDefinition{}
			if err := k8sClient.Get(ctx, client.ObjectKey{Name: name}, crd); err != nil {
				return err
			}
			v := crd.Spec.Versions[0].Schema
			if _, ok := saved[name]; !ok {
				saved[name] = *v.DeepCopy()
			}
			schema(v)
			return k8sClient.Update(ctx, crd)
		}).WithTimeout(10 * time.Second).Should(Succeed())
	}
	for _, n := range names {
		setSchema(n, func(v *apiextensionsv1.CustomResourceValidation) {
			v.OpenAPIV3Schema.Properties["spec"] = apiextensionsv1.JSONSchemaProps{Type: "object", XPreserveUnknownFields: ptr.To(true)}
		})
	}
	defer func() {
		for _, n := range names {
			setSchema(n, func(v *apiextensionsv1.CustomResourceValidation) { *v = saved[n] })
		}
	}()
	f()
}

// freePort finds a loopback port for the health probe server.
func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	Expect(err).NotTo(HaveOccurred())
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

var _ = Describe("objects that crashed the manager (issue 13)", Ordered, func() {
	var (
		stop context.CancelFunc
		done <-chan error
	)

	BeforeAll(func() {
		createNamespace(crashNamespace)
		withLaxCRDs(func() {
			for name, m := range crashingManifests {
				u := objectFromYAML(m)
				u.SetNamespace(crashNamespace)
				// The schema change reaches the API server's handlers shortly after the update.
				Eventually(func() error { return k8sClient.Create(ctx, u.DeepCopy()) }).
					WithTimeout(10*time.Second).Should(Succeed(), name)
			}
		})
		// The generated schema is back: the same manifests are refused again.
		for name, m := range crashingManifests {
			u := objectFromYAML(m)
			u.SetNamespace(crashNamespace)
			u.SetName(u.GetName() + "-again")
			Eventually(func() error { return k8sClient.Create(ctx, u, client.DryRunAll) }).
				WithTimeout(10*time.Second).Should(HaveOccurred(), name)
		}
		stop, done, _ = startBatteryManager([]string{crashNamespace})
	})
	AfterAll(func() {
		if stop != nil {
			stop()
		}
		for _, m := range crashingManifests {
			u := objectFromYAML(m)
			u.SetNamespace(crashNamespace)
			Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, u))).To(Succeed())
		}
	})

	It("keeps reconciling other objects: a new route is accepted, a new function gets its Deployment", func() {
		expectReconciling(crashNamespace, "good-route")
		fn := objectFromYAML(strings.ReplaceAll(crashGoodFunction, "NAME", "good-fn"))
		Expect(k8sClient.Create(ctx, fn)).To(Succeed())
		Eventually(func() error {
			return k8sClient.Get(ctx, client.ObjectKey{Namespace: crashNamespace, Name: "good-fn"}, &appsv1.Deployment{})
		}).WithTimeout(conditionTimeout).Should(Succeed())
		Consistently(done).ShouldNot(Receive(), "the manager stopped")
	})

	DescribeTable("flags the unreadable object in its own status, naming the field",
		func(kind, name, condType, wantMessage string) {
			Eventually(func(g Gomega) {
				u := &unstructured.Unstructured{}
				u.SetAPIVersion(meshv1alpha1.GroupVersion.String())
				u.SetKind(kind)
				g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: crashNamespace, Name: name}, u)).To(Succeed())
				s, r, msg, ok := conditionOf(u, condType)
				g.Expect(ok).To(BeTrue(), "no %s condition yet", condType)
				g.Expect([]string{s, r}).To(Equal([]string{"False", meshv1alpha1.ReasonInvalid}))
				g.Expect(msg).To(ContainSubstring(wantMessage))
			}).WithTimeout(conditionTimeout).Should(Succeed())
		},
		Entry("MeshFunction template", "MeshFunction", "bad-template", meshv1alpha1.ConditionReady, "spec.template is not a pod template"),
		Entry("MeshRoute timeout", "MeshRoute", "bad-timeout", meshv1alpha1.ConditionAccepted, `spec.http[0].timeout: "9999999999h" is not a duration Go can read`),
		Entry("MeshRoute retries.baseInterval", "MeshRoute", "bad-interval", meshv1alpha1.ConditionAccepted, `spec.http[0].retries.baseInterval: "9999999999h"`),
		Entry("RedisProxy opTimeout", "RedisProxy", "bad-optimeout", meshv1alpha1.ConditionAccepted, `spec.opTimeout: "9999999999h"`),
	)

	It("restarts cleanly: a fresh manager's caches sync and /readyz is ok", func() {
		stop()
		Eventually(done).WithTimeout(30*time.Second).Should(Receive(BeNil()), "the manager did not stop cleanly")
		stop = nil

		port := freePort()
		mgr, err := ctrl.NewManager(cfg, ctrl.Options{
			Scheme:                 k8sClient.Scheme(),
			Metrics:                metricsserver.Options{BindAddress: "0"},
			HealthProbeBindAddress: fmt.Sprintf("127.0.0.1:%d", port),
			Cache:                  cache.Options{DefaultNamespaces: map[string]cache.Config{crashNamespace: {}}},
		})
		Expect(err).NotTo(HaveOccurred())
		Expect(mgr.AddReadyzCheck("caches", CachesSynced(mgr.GetCache()))).To(Succeed())
		Expect((&MeshFunctionReconciler{Client: mgr.GetClient(), Options: workload.DefaultOptions()}).SetupWithManager(mgr)).To(Succeed())
		Expect((&RedisProxyReconciler{Client: mgr.GetClient(), Options: workload.DefaultOptions()}).SetupWithManager(mgr)).To(Succeed())
		mctx, mstop := context.WithCancel(ctx)
		defer mstop()
		exited := make(chan error, 1)
		go func() { exited <- mgr.Start(mctx) }()

		// Before issue 13's fix the informers' lists failed on every retry and never synced.
		syncCtx, cancelSync := context.WithTimeout(ctx, 30*time.Second)
		defer cancelSync()
		Expect(mgr.GetCache().WaitForCacheSync(syncCtx)).To(BeTrue(), "the caches did not sync")
		for _, list := range []client.ObjectList{&meshv1alpha1.MeshRouteList{}, &meshv1alpha1.MeshFunctionList{}, &meshv1alpha1.RedisProxyList{}} {
			Expect(mgr.GetClient().List(ctx, list, client.InNamespace(crashNamespace))).To(Succeed())
		}
		Eventually(func(g Gomega) {
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", port))
			g.Expect(err).NotTo(HaveOccurred())
			defer resp.Body.Close()
			g.Expect(resp.StatusCode).To(Equal(http.StatusOK))
		}).WithTimeout(10 * time.Second).Should(Succeed())
		Consistently(exited, 2*time.Second).ShouldNot(Receive(), "the fresh manager exited")
	})
})
