package controllers

import (
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
)

// policy returns a MeshPolicy manifest with the given spec body.
func policy(spec string) string {
	return `
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshPolicy
metadata: {namespace: default}
spec:` + spec
}

var _ = Describe("MeshPolicy", func() {
	DescribeTable("refuses invalid policies at apply with a message that says what to fix",
		func(manifest, wantMessage string) {
			u := objectFromYAML(manifest)
			u.SetGenerateName("invalid-")
			// kubectl's default (server-side strict field validation): unknown fields are errors.
			err := k8sClient.Create(ctx, u, client.FieldValidation(metav1.FieldValidationStrict))
			Expect(err).To(HaveOccurred(), "the API server accepted an invalid MeshPolicy")
			Expect(err.Error()).To(ContainSubstring(wantMessage))
		},
		Entry("an unknown field (Istio's nesting)", policy(`
  rules:
  - from:
    - source: {principals: [default/web]}`), `unknown field "spec.rules[0].from[0].source"`),
		Entry("an unknown top-level field", policy(`
  rules: [{}]
  selectr: {labels: {app: x}}`), `unknown field "spec.selectr"`),
		Entry("a principal that is no identity", policy(`
  rules:
  - from:
    - principals: [web]`), "each principal must be spiffe://<trust domain>/ns/<namespace>/sa/<service account>, <namespace>/<service account>"),
		Entry("a SPIFFE ID of another shape", policy(`
  rules:
  - from:
    - principals: ["spiffe://cluster.local/sa/web"]`), "each principal must be spiffe://"),
		Entry("a principal with a wildcard inside", policy(`
  rules:
  - from:
    - principals: ["default/*"]`), "each principal must be"),
		Entry("an empty from entry", policy(`
  rules:
  - from: [{}]`), "a from entry needs principals or namespaces"),
		Entry("an empty to entry", policy(`
  rules:
  - to: [{}]`), "a to entry needs hosts, paths or methods"),
		Entry("a namespace that is no name", policy(`
  rules:
  - from:
    - namespaces: [Default_NS]`), "spec.rules[0].from[0].namespaces[0] in body should match"),
		Entry("a relative path", policy(`
  rules:
  - to:
    - paths: [api/*]`), "each path must start with / and may end in *"),
		Entry("a wildcard inside a path", policy(`
  rules:
  - to:
    - paths: ["/api/*/items"]`), "each path must start with / and may end in *"),
		Entry("a path with a query", policy(`
  rules:
  - to:
    - paths: ["/api?x=1"]`), "no ? or #"),
		Entry("a lower-case method", policy(`
  rules:
  - to:
    - methods: [get]`), "spec.rules[0].to[0].methods[0] in body should match"),
		Entry("an unknown action", policy(`
  action: AUDIT`), `spec.action: Unsupported value: "AUDIT"`),
		Entry("a DENY policy without rules", policy(`
  action: DENY`), "a DENY policy needs at least one rule"),
		Entry("a host with a path", policy(`
  rules:
  - to:
    - hosts: [reviews/api]`), "spec.rules[0].to[0].hosts[0] in body should match"),
		Entry("selector and targetRefs together", policy(`
  selector: {labels: {app: web}}
  targetRefs: [{group: mesh.weft.dev, kind: RedisProxy, name: sessions}]`), "selector and targetRefs cannot both be set"),
		Entry("a RedisProxy target with a to entry", policy(`
  targetRefs: [{group: mesh.weft.dev, kind: RedisProxy, name: sessions}]
  rules:
  - from: [{principals: [default/web]}]
    to: [{methods: [GET]}]`), "Redis has no hosts, paths or methods, so leave to out of its rules"),
		Entry("a target of another kind", policy(`
  targetRefs: [{group: mesh.weft.dev, kind: MeshFunction, name: hello}]`), `spec.targetRefs[0].kind: Unsupported value: "MeshFunction"`),
		Entry("a target of another group", policy(`
  targetRefs: [{group: weft.dev, kind: RedisProxy, name: sessions}]`), `spec.targetRefs[0].group: Unsupported value: "weft.dev"`),
		Entry("a target without a name", policy(`
  targetRefs: [{group: mesh.weft.dev, kind: RedisProxy}]`), `spec.targetRefs[0].name: Required value`),
		Entry("an empty targetRefs list", policy(`
  targetRefs: []`), "spec.targetRefs: Invalid value"),
		Entry("too many rules", policy(`
  rules: [{}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}]`), "must have at most 16 items"),
	)

	It("accepts every principal form and an allow-nothing policy", func() {
		for _, m := range []string{policy(`
  selector: {labels: {app: reviews}}
  rules:
  - from:
    - principals: ["spiffe://cluster.local/ns/default/sa/productpage", default/web, "*"]
      namespaces: [ops]
    to:
    - hosts: [reviews, "*.example.com", "reviews.default.svc.cluster.local:9080"]
      paths: [/api/*, /healthz, "*"]
      methods: [GET, POST]`), policy(` {}`), policy(`
  targetRefs: [{group: mesh.weft.dev, kind: RedisProxy, name: sessions}]
  rules:
  - from:
    - principals: [default/web, "spiffe://cluster.local/ns/default/sa/api"]
    - namespaces: [ops]`), policy(`
  targetRefs: [{group: mesh.weft.dev, kind: RedisProxy, name: sessions}]
  action: DENY
  rules: [{from: [{namespaces: [ops]}]}]`)} {
			u := objectFromYAML(m)
			u.SetGenerateName("valid-")
			Expect(k8sClient.Create(ctx, u, client.FieldValidation(metav1.FieldValidationStrict))).To(Succeed())
			DeferCleanup(func() { _ = k8sClient.Delete(ctx, u) })
		}
	})

	It("flags a to.hosts entry no route serves in status, and programs a good policy", func() {
		good := objectFromYAML(`
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshPolicy
metadata: {name: good, namespace: ` + xdsNamespace + `}
spec:
  rules:
  - from:
    - principals: [` + xdsNamespace + `/web]`)
		typo := objectFromYAML(`
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshPolicy
metadata: {name: typo, namespace: ` + xdsNamespace + `}
spec:
  action: DENY
  rules:
  - to:
    - hosts: [reveiws.example.internal]`)
		for _, u := range []client.Object{good, typo} {
			Expect(k8sClient.Create(ctx, u)).To(Succeed())
			DeferCleanup(func() { _ = k8sClient.Delete(ctx, u) })
		}
		Eventually(func(g Gomega) {
			var mp meshv1alpha1.MeshPolicy
			g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: xdsNamespace, Name: "typo"}, &mp)).To(Succeed())
			g.Expect(mp.Status.ObservedGeneration).To(Equal(mp.Generation))
			rr := meta.FindStatusCondition(mp.Status.Conditions, meshv1alpha1.ConditionResolvedRefs)
			g.Expect(rr).NotTo(BeNil())
			g.Expect(rr.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(rr.Reason).To(Equal(meshv1alpha1.ReasonHostNotFound))
			g.Expect(rr.Message).To(ContainSubstring(`serves "reveiws.example.internal"`))
			g.Expect(rr.Message).To(ContainSubstring("name a Service"))
			g.Expect(meta.IsStatusConditionTrue(mp.Status.Conditions, meshv1alpha1.ConditionStalled)).To(BeTrue())
			g.Expect(meta.IsStatusConditionTrue(mp.Status.Conditions, meshv1alpha1.ConditionReady)).To(BeFalse())

			g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: xdsNamespace, Name: "good"}, &mp)).To(Succeed())
			g.Expect(mp.Status.ObservedGeneration).To(Equal(mp.Generation))
			for _, typ := range []string{meshv1alpha1.ConditionAccepted, meshv1alpha1.ConditionResolvedRefs, meshv1alpha1.ConditionProgrammed, meshv1alpha1.ConditionReady} {
				c := meta.FindStatusCondition(mp.Status.Conditions, typ)
				g.Expect(c).NotTo(BeNil(), typ)
				g.Expect(c.Status).To(Equal(metav1.ConditionTrue), "%s: %s", typ, c.Message)
				g.Expect(c.ObservedGeneration).To(Equal(mp.Generation))
			}
		}, 20*time.Second, 100*time.Millisecond).Should(Succeed())
	})
	It("flags a targetRefs entry naming no RedisProxy in status", func() {
		u := objectFromYAML(`
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshPolicy
metadata: {name: sessions-typo, namespace: ` + xdsNamespace + `}
spec:
  targetRefs: [{group: mesh.weft.dev, kind: RedisProxy, name: sesions}]
  rules:
  - from:
    - principals: [` + xdsNamespace + `/web]`)
		Expect(k8sClient.Create(ctx, u)).To(Succeed())
		DeferCleanup(func() { _ = k8sClient.Delete(ctx, u) })
		Eventually(func(g Gomega) {
			var mp meshv1alpha1.MeshPolicy
			g.Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: xdsNamespace, Name: "sessions-typo"}, &mp)).To(Succeed())
			g.Expect(mp.Status.ObservedGeneration).To(Equal(mp.Generation))
			rr := meta.FindStatusCondition(mp.Status.Conditions, meshv1alpha1.ConditionResolvedRefs)
			g.Expect(rr).NotTo(BeNil())
			g.Expect(rr.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(rr.Reason).To(Equal(meshv1alpha1.ReasonTargetNotFound))
			g.Expect(rr.Message).To(ContainSubstring("targetRefs[0]: RedisProxy " + xdsNamespace + "/sesions does not exist"))
			g.Expect(meta.IsStatusConditionTrue(mp.Status.Conditions, meshv1alpha1.ConditionStalled)).To(BeTrue())
		}, 20*time.Second, 100*time.Millisecond).Should(Succeed())
	})
})
