package controllers

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
)

// objectFromYAML decodes one manifest into an unstructured object, so tests send exactly
// what a user would kubectl apply (typed Go structs would hide omitted-vs-zero fields).
func objectFromYAML(doc string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	Expect(yaml.Unmarshal([]byte(doc), &u.Object)).To(Succeed())
	return u
}

// samples reads every object in config/samples.
func samples() []*unstructured.Unstructured {
	files, err := filepath.Glob(filepath.Join("..", "config", "samples", "mesh_*.yaml"))
	Expect(err).NotTo(HaveOccurred())
	Expect(files).NotTo(BeEmpty())
	var out []*unstructured.Unstructured
	for _, f := range files {
		data, err := os.ReadFile(f)
		Expect(err).NotTo(HaveOccurred())
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
		for {
			u := &unstructured.Unstructured{}
			if err := dec.Decode(&u.Object); errors.Is(err, io.EOF) {
				break
			} else {
				Expect(err).NotTo(HaveOccurred(), f)
			}
			if len(u.Object) > 0 {
				out = append(out, u)
			}
		}
	}
	return out
}

const validRoute = `
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshRoute
metadata: {name: NAME, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - {service: reviews, port: 9080}
`

var _ = Describe("CRD validation", func() {
	It("accepts every sample in config/samples", func() {
		objs := samples()
		kinds := map[string]bool{}
		for _, u := range objs {
			u.SetNamespace("samples")
			kinds[u.GetKind()] = true
		}
		Expect(kinds).To(HaveKey("MeshRoute"))
		Expect(kinds).To(HaveKey("MeshFunction"))
		Expect(kinds).To(HaveKey("RedisProxy"))
		ns := objectFromYAML("apiVersion: v1\nkind: Namespace\nmetadata: {name: samples}\n")
		Expect(client.IgnoreAlreadyExists(k8sClient.Create(ctx, ns))).To(Succeed())
		for _, u := range objs {
			Expect(k8sClient.Create(ctx, u)).To(Succeed(), "%s %s", u.GetKind(), u.GetName())
		}
	})

	DescribeTable("refuses invalid objects with a message that says what to fix",
		func(manifest, wantMessage string) {
			u := objectFromYAML(manifest)
			u.SetGenerateName("invalid-")
			err := k8sClient.Create(ctx, u)
			Expect(err).To(HaveOccurred(), "the API server accepted an invalid %s", u.GetKind())
			Expect(apierrors.IsInvalid(err)).To(BeTrue(), "want 422 Invalid, got %v", err)
			Expect(err.Error()).To(ContainSubstring(wantMessage))
		},
		Entry("negative weight", route(`
  http:
  - route:
    - {service: reviews, port: 9080, weight: -5}
    - {service: reviews, port: 9081, weight: 10}`), "spec.http[0].route[0].weight: Invalid value: -5: spec.http[0].route[0].weight in body should be greater than or equal to 0"),
		Entry("all-zero weights", route(`
  http:
  - route:
    - {service: reviews, port: 9080, weight: 0}
    - {service: reviews, port: 9081, weight: 0}`), "at least one destination needs a weight above 0"),
		Entry("route and redirect in one rule", route(`
  http:
  - route:
    - {service: reviews, port: 9080}
    redirect: {host: example.com}`), "a rule needs exactly one of route, redirect or directResponse"),
		Entry("a rule with no action", route(`
  http:
  - name: nothing
    timeout: 1s`), "a rule needs exactly one of route, redirect or directResponse"),
		Entry("empty hosts", `
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshRoute
metadata: {namespace: default}
spec:
  hosts: []
  http:
  - route:
    - {service: reviews, port: 9080}`, "spec.hosts in body should have at least 1 items"),
		Entry("missing hosts", `
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshRoute
metadata: {namespace: default}
spec:
  http:
  - route:
    - {service: reviews, port: 9080}`, "spec.hosts: Required value"),
		Entry("duplicate rule names", route(`
  http:
  - name: a
    route:
    - {service: reviews, port: 9080}
  - name: a
    route:
    - {service: reviews, port: 9081}`), "http rule names must be unique"),
		Entry("perTryTimeout longer than the rule timeout", route(`
  http:
  - timeout: 1s
    retries: {attempts: 2, perTryTimeout: 2s}
    route:
    - {service: reviews, port: 9080}`), "retries.perTryTimeout must not be longer than the rule's timeout"),
		Entry("destination port out of range", route(`
  http:
  - route:
    - {service: reviews, port: 70000}`), "should be less than or equal to 65535"),
		Entry("destination with both service and function", route(`
  http:
  - route:
    - {service: reviews, function: orders}`), "a destination names exactly one of service or function"),
		Entry("a malformed duration", route(`
  http:
  - timeout: 5 seconds
    route:
    - {service: reviews, port: 9080}`), "spec.http[0].timeout in body should match"),
		Entry("consistent hash with two keys", route(`
  http:
  - route:
    - {service: reviews, port: 9080}
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user, useSourceIP: true}`), "consistentHash needs exactly one of"),
		Entry("min scale above max scale", function(`
  scale: {min: 5, max: 2}`), "scale.min cannot be above scale.max"),
		Entry("target utilization above 100", function(`
  concurrency: {targetUtilizationPercentage: 150}`), "spec.concurrency.targetUtilizationPercentage in body should be less than or equal to 100"),
		Entry("target below 0.01", function(`
  concurrency: {target: 0}`), "concurrency.target must be at least 0.01"),
		Entry("target above containerConcurrency", function(`
  concurrency: {containerConcurrency: 10, target: 20}`), "target cannot exceed containerConcurrency"),
		Entry("panic threshold out of Knative's range", function(`
  scale: {panicThresholdPercentage: 50}`), "should be greater than or equal to 110"),
		Entry("stable window shorter than 6s", function(`
  scale: {stableWindow: 2s}`), "scale.stableWindow must be a duration from 6s to 1h"),
		Entry("function port out of range", function(`
  port: 0`), "spec.port in body should be greater than or equal to 1"),
		Entry("RedisProxy with neither servers nor serviceRef", redis(`
  sharding: {distribution: ketama}`), "set exactly one of servers or serviceRef"),
		Entry("RedisProxy with both servers and serviceRef", redis(`
  servers:
  - {name: a, address: "10.0.0.1:6379"}
  serviceRef: {name: redis}`), "set exactly one of servers or serviceRef"),
		Entry("duplicate ring names", redis(`
  servers:
  - {name: a, address: "10.0.0.1:6379"}
  - {name: a, address: "10.0.0.2:6379"}`), "server names must be unique"),
		Entry("unknown hash function", redis(`
  servers:
  - {name: a, address: "10.0.0.1:6379"}
  sharding: {hash: sha1}`), `spec.sharding.hash: Unsupported value: "sha1"`),
		Entry("unknown distribution", redis(`
  servers:
  - {name: a, address: "10.0.0.1:6379"}
  sharding: {distribution: rendezvous}`), `spec.sharding.distribution: Unsupported value: "rendezvous"`),
		Entry("listener port out of range", redis(`
  servers:
  - {name: a, address: "10.0.0.1:6379"}
  listener: {port: 65536}`), "spec.listener.port in body should be less than or equal to 65535"),
		Entry("server address port out of range", redis(`
  servers:
  - {name: a, address: "10.0.0.1:99999"}`), "address port must be between 1 and 65535"),
		Entry("a three-character hash tag", redis(`
  servers:
  - {name: a, address: "10.0.0.1:6379"}
  sharding: {hashTag: "{{}"}`), "hashTag must be exactly two bytes"),
	)

	It("applies defaults users usually leave out", func() {
		By("MeshRoute")
		// The first rule has a match: a rule after a catch-all is refused.
		r := objectFromYAML(`
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshRoute
metadata: {name: defaults, namespace: default}
spec:
  hosts: [reviews]
  http:
  - match: [{path: {value: /api}}]
    route:
    - {service: reviews, port: 9080}
    - {service: reviews, port: 9081}
    retries: {}
  - redirect: {host: example.com}
  trafficPolicy:
    outlierDetection: {}
`)
		Expect(k8sClient.Create(ctx, r)).To(Succeed())
		var mr meshv1alpha1.MeshRoute
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(r), &mr)).To(Succeed())
		Expect(mr.Spec.HTTP[0].Route[0].Weight).To(Equal(int32(1)))
		Expect(mr.Spec.HTTP[0].Route[1].Weight).To(Equal(int32(1)))
		Expect(mr.Spec.HTTP[0].Retries.Attempts).To(Equal(int32(2)))
		Expect(mr.Spec.HTTP[1].Redirect.StatusCode).To(Equal(int32(301)))
		od := mr.Spec.TrafficPolicy.OutlierDetection
		Expect(*od.Consecutive5xxErrors).To(Equal(int32(5)))
		Expect(od.Interval.Duration.String()).To(Equal("10s"))
		Expect(od.BaseEjectionTime.Duration.String()).To(Equal("30s"))
		Expect(*od.MaxEjectionPercent).To(Equal(int32(10)))

		By("MeshFunction, with Knative's autoscaling defaults")
		f := objectFromYAML(function(""))
		f.SetName("defaults")
		Expect(k8sClient.Create(ctx, f)).To(Succeed())
		var mf meshv1alpha1.MeshFunction
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(f), &mf)).To(Succeed())
		Expect(mf.Spec.Port).To(Equal(int32(8080)))
		Expect(mf.Spec.Timeout.Duration.String()).To(Equal("5m0s"))
		Expect(mf.Spec.Concurrency.TargetUtilizationPercentage).To(Equal(int32(70)))
		s := mf.Spec.Scale
		Expect(s.Metric).To(Equal(meshv1alpha1.MetricConcurrency))
		Expect([]int32{s.Min, s.Max, s.Initial, s.ActivationScale}).To(Equal([]int32{0, 0, 1, 1}))
		Expect(s.StableWindow.Duration.String()).To(Equal("1m0s"))
		Expect(s.PanicWindowPercentage).To(Equal(int32(10)))
		Expect(s.PanicThresholdPercentage).To(Equal(int32(200)))
		Expect(s.MaxScaleUpRate).To(Equal(1000.0))
		Expect(s.MaxScaleDownRate).To(Equal(2.0))
		Expect(s.ScaleToZeroGracePeriod.Duration.String()).To(Equal("30s"))
		Expect(s.ScaleDownDelay.Duration).To(BeZero())
		Expect(mf.Spec.Activation.HoldTimeout.Duration.String()).To(Equal("30s"))
		Expect(mf.Spec.Activation.MaxPending).To(Equal(int32(100)))

		By("RedisProxy, with twemproxy's hashing and failure defaults")
		p := objectFromYAML(redis(`
  servers:
  - {name: a, address: "10.0.0.1:6379"}
  auth:
    upstream:
      passwordSecretRef: {name: redis}`))
		p.SetName("defaults")
		Expect(k8sClient.Create(ctx, p)).To(Succeed())
		var rp meshv1alpha1.RedisProxy
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(p), &rp)).To(Succeed())
		Expect(rp.Spec.Listener).To(Equal(meshv1alpha1.RedisListener{Address: "127.0.0.1", Port: 6379}))
		Expect(rp.Spec.Servers[0].Weight).To(Equal(int32(1)))
		Expect(rp.Spec.Sharding).To(Equal(meshv1alpha1.Sharding{Distribution: "ketama", Hash: "fnv1a_64", HashTag: "{}"}))
		Expect(rp.Spec.Auth.Upstream.PasswordSecretRef.Key).To(Equal("password"))
		Expect(rp.Spec.OpTimeout.Duration.String()).To(Equal("1s"))
		Expect(rp.Spec.OutlierDetection.ConsecutiveFailures).To(Equal(int32(2)))
		Expect(rp.Spec.OutlierDetection.Mode).To(Equal(meshv1alpha1.EjectFail))
		Expect(rp.Spec.HealthCheck.UnhealthyThreshold).To(Equal(int32(3)))
	})

	It("writes status only through the status subresource", func() {
		mr := &meshv1alpha1.MeshRoute{}
		u := objectFromYAML(strings.Replace(validRoute, "NAME", "status", 1))
		Expect(k8sClient.Create(ctx, u)).To(Succeed())
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(u), mr)).To(Succeed())

		By("a status change through the main resource is dropped")
		mr.Status.SyncedSidecars = 7
		Expect(k8sClient.Update(ctx, mr)).To(Succeed())
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(u), mr)).To(Succeed())
		Expect(mr.Status.SyncedSidecars).To(BeZero())

		By("the status subresource stores conditions and counts")
		mr.Status.ObservedGeneration = mr.Generation
		mr.Status.SyncedSidecars = 3
		mr.Status.RejectedSidecars = 1
		mr.Status.LastRejection = "web-1.default: unknown field"
		mr.Status.Conditions = []metav1.Condition{{
			Type: meshv1alpha1.ConditionAccepted, Status: metav1.ConditionTrue,
			Reason: meshv1alpha1.ReasonAccepted, Message: "ok", LastTransitionTime: metav1.Now(),
		}}
		Expect(k8sClient.Status().Update(ctx, mr)).To(Succeed())
		got := &meshv1alpha1.MeshRoute{}
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(u), got)).To(Succeed())
		Expect(got.Status.SyncedSidecars).To(Equal(int32(3)))
		Expect(got.Status.RejectedSidecars).To(Equal(int32(1)))
		Expect(got.Status.Conditions).To(HaveLen(1))
		Expect(got.Generation).To(Equal(mr.Generation), "a status write must not bump the generation")

		By("MeshFunction status carries url and replicas")
		f := objectFromYAML(function(""))
		f.SetName("status")
		Expect(k8sClient.Create(ctx, f)).To(Succeed())
		mf := &meshv1alpha1.MeshFunction{}
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(f), mf)).To(Succeed())
		mf.Status.URL = "http://status.default.svc.cluster.local"
		mf.Status.Replicas, mf.Status.ReadyReplicas, mf.Status.DesiredReplicas = 2, 1, 3
		Expect(k8sClient.Status().Update(ctx, mf)).To(Succeed())
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(f), mf)).To(Succeed())
		Expect([]int32{mf.Status.Replicas, mf.Status.ReadyReplicas, mf.Status.DesiredReplicas}).To(Equal([]int32{2, 1, 3}))
		Expect(mf.Status.URL).To(Equal("http://status.default.svc.cluster.local"))
	})
})

// route returns a MeshRoute manifest whose spec is hosts: [reviews] plus extra.
func route(extra string) string {
	return `
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshRoute
metadata: {namespace: default}
spec:
  hosts: [reviews]` + extra
}

// function returns a MeshFunction manifest with a minimal template plus extra spec fields.
func function(extra string) string {
	return `
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {namespace: default}
spec:
  template:
    spec:
      containers:
      - {name: fn, image: example/fn}` + extra
}

// redis returns a RedisProxy manifest with the extra spec fields.
func redis(extra string) string {
	return `
apiVersion: mesh.weft.dev/v1alpha1
kind: RedisProxy
metadata: {namespace: default}
spec:` + extra
}
