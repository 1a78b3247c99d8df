package controllers

import (
	"context"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/workload"
)

// A manager upgrade (here: a new sidecar image) reaches the pods of every kept revision,
// each rendered from its own recorded template, without creating a revision or changing
// what the user wrote.
var _ = Describe("MeshFunction revisions across a manager upgrade", Ordered, func() {
	const ns = "revupgrade"
	var stop context.CancelFunc
	start := func(image string) {
		o := workload.DefaultOptions()
		o.SidecarImage = image
		clk := clocktesting.NewFakeClock(time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC))
		stop, _ = startManager(func(mgr ctrl.Manager) error {
			r := &MeshFunctionReconciler{
				Client: mgr.GetClient(), Options: o, Scaler: newRecordingScaler(), Decisions: NewDecisions(),
				Handoff: HandoffFunc(func(types.NamespacedName) bool { return true }),
				Clock:   clk, HandoffTimeout: time.Minute,
			}
			return r.SetupWithManager(mgr)
		})
	}
	BeforeAll(func() { createNamespace(ns) })
	AfterAll(func() {
		if stop != nil {
			stop()
		}
	})

	deployment := func(g Gomega, name string) *appsv1.Deployment {
		d := &appsv1.Deployment{}
		g.Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, d)).To(Succeed())
		return d
	}
	containerImage := func(d *appsv1.Deployment, name string) string {
		for _, c := range append(append([]corev1.Container{}, d.Spec.Template.Spec.InitContainers...), d.Spec.Template.Spec.Containers...) {
			if c.Name == name {
				return c.Image
			}
		}
		return ""
	}
	restart := func(image string) {
		stop()
		start(image)
	}

	It("re-renders every revision from its own template with the new sidecar image", func() {
		start("ghcr.io/weftmesh/weft-sidecar:1.0")
		Expect(k8sClient.Create(ctx, objectFromYAML(`
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {name: up, namespace: revupgrade}
spec:
  template:
    spec:
      containers:
      - {name: fn, image: example/up:v1}
  scale: {initial: 0}
  traffic:
  - {latestRevision: true, percent: 100}
`))).To(Succeed())
		var hash1 string
		Eventually(func(g Gomega) {
			d := deployment(g, "up-00001")
			g.Expect(containerImage(d, workload.SidecarContainerName)).To(Equal("ghcr.io/weftmesh/weft-sidecar:1.0"))
			g.Expect(d.Annotations).To(HaveKey(annotationRevisionSpec))
			hash1 = d.Annotations[annotationRevisionHash]
		}).WithTimeout(15 * time.Second).Should(Succeed())

		// A second revision, then the function's template moves on: up-00001 keeps v1.
		Eventually(func(g Gomega) {
			f := &meshv1alpha1.MeshFunction{}
			g.Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "up"}, f)).To(Succeed())
			f.Spec.Template.Spec.Containers[0].Image = "example/up:v2"
			g.Expect(k8sClient.Update(ctx, f)).To(Succeed())
		}).WithTimeout(10 * time.Second).Should(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(containerImage(deployment(g, "up-00002"), "fn")).To(Equal("example/up:v2"))
		}).WithTimeout(15 * time.Second).Should(Succeed())

		restart("ghcr.io/weftmesh/weft-sidecar:1.1")
		Eventually(func(g Gomega) {
			for rev, app := range map[string]string{"up-00001": "example/up:v1", "up-00002": "example/up:v2"} {
				d := deployment(g, rev)
				g.Expect(containerImage(d, workload.SidecarContainerName)).To(Equal("ghcr.io/weftmesh/weft-sidecar:1.1"), rev)
				g.Expect(containerImage(d, "fn")).To(Equal(app), "%s must keep its own template", rev)
			}
		}).WithTimeout(20 * time.Second).Should(Succeed())
		Consistently(func(g Gomega) {
			err := k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "up-00003"}, &appsv1.Deployment{})
			g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "re-rendering must not create a revision")
			g.Expect(deployment(g, "up-00001").Annotations[annotationRevisionHash]).To(Equal(hash1))
		}).WithTimeout(2 * time.Second).Should(Succeed())
	})

	It("records the template of a revision made before it was recorded, without rolling its pods", func() {
		// (A Deployment's generation moves with its annotations too; the pods roll only
		// when the pod template changes.)
		var before corev1.PodTemplateSpec
		Eventually(func(g Gomega) {
			d := deployment(g, "up-00002")
			patch := client.MergeFrom(d.DeepCopy())
			delete(d.Annotations, annotationRevisionSpec)
			g.Expect(k8sClient.Patch(ctx, d, patch)).To(Succeed())
			before = *d.Spec.Template.DeepCopy()
		}).WithTimeout(10 * time.Second).Should(Succeed())
		restart("ghcr.io/weftmesh/weft-sidecar:1.1")
		Eventually(func(g Gomega) {
			d := deployment(g, "up-00002")
			g.Expect(d.Annotations).To(HaveKey(annotationRevisionSpec))
			g.Expect(d.Spec.Template).To(Equal(before), "recording the template must not roll the pods")
		}).WithTimeout(15 * time.Second).Should(Succeed())

		// up-00001 is not the function's current template: without a record it is left alone.
		Eventually(func(g Gomega) {
			d := deployment(g, "up-00001")
			patch := client.MergeFrom(d.DeepCopy())
			delete(d.Annotations, annotationRevisionSpec)
			g.Expect(k8sClient.Patch(ctx, d, patch)).To(Succeed())
		}).WithTimeout(10 * time.Second).Should(Succeed())
		restart("ghcr.io/weftmesh/weft-sidecar:1.2")
		Eventually(func(g Gomega) {
			g.Expect(containerImage(deployment(g, "up-00002"), workload.SidecarContainerName)).To(Equal("ghcr.io/weftmesh/weft-sidecar:1.2"))
		}).WithTimeout(20 * time.Second).Should(Succeed())
		Consistently(func(g Gomega) {
			d := deployment(g, "up-00001")
			g.Expect(containerImage(d, workload.SidecarContainerName)).To(Equal("ghcr.io/weftmesh/weft-sidecar:1.1"))
			g.Expect(containerImage(d, "fn")).To(Equal("example/up:v1"))
		}).WithTimeout(2 * time.Second).Should(Succeed())
	})

	It("gives the next number after revisions deleted by hand, not 1 again", func() {
		for _, name := range []string{"up-00001", "up-00002"} {
			Expect(k8sClient.Delete(ctx, &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}})).To(Succeed())
		}
		Eventually(func(g Gomega) {
			g.Expect(containerImage(deployment(g, "up-00003"), "fn")).To(Equal("example/up:v2"))
		}).WithTimeout(15 * time.Second).Should(Succeed())
		err := k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "up-00001"}, &appsv1.Deployment{})
		Expect(apierrors.IsNotFound(err)).To(BeTrue(), "revision number 1 came back: %v", err)
	})
})

// Revision Deployments deleted by hand do not bring their numbers back: the next revision
// continues after the newest one status remembers.
var _ = Describe("MeshFunction revision numbers", func() {
	It("does not reuse a number status remembers", func() {
		n, ok := generatedRevisionNumber("up", "up-00002")
		Expect(ok).To(BeTrue())
		Expect(n).To(Equal(2))
		for _, name := range []string{"up-2", "up-0000x", "other-00002", "up-00000", "up-0000000002"} {
			_, ok := generatedRevisionNumber("up", name)
			Expect(ok).To(BeFalse(), name)
		}
		fn := &meshv1alpha1.MeshFunction{}
		fn.Name = "up"
		fn.Status.LatestCreatedRevisionName = "up-00007"
		fn.Status.Revisions = []meshv1alpha1.RevisionStatus{{Name: "up-00009"}, {Name: "blue"}}
		name, number, _, creates := nextRevision(fn, nil)
		Expect(creates).To(BeTrue())
		Expect(number).To(Equal(10))
		Expect(name).To(Equal("up-00010"))
	})
})

// A recorded template that someone edited into garbage, or one too large to record, never
// rolls the revision's pods: rerender leaves them as they are.
var _ = Describe("MeshFunction revision re-rendering of bad records", func() {
	It("leaves a revision with a garbled or missing record alone", func() {
		fn := &meshv1alpha1.MeshFunction{}
		fn.Namespace, fn.Name = "x", "up"
		fn.Spec.Port = 8080
		fn.Spec.Template.Spec.Containers = []corev1.Container{{Name: "fn", Image: "example/up:v1"}}
		o := workload.DefaultOptions()
		dep, err := revisionDeployment(fn, "up-00001", 1, TemplateHash(fn), 0, o)
		Expect(err).NotTo(HaveOccurred())
		Expect(dep.Annotations).To(HaveKey(annotationRevisionSpec))
		o.SidecarImage = "ghcr.io/weftmesh/weft-sidecar:next"
		r := &MeshFunctionReconciler{Options: o}

		rv := &revision{name: "up-00001", number: 1, hash: TemplateHash(fn), dep: dep.DeepCopy()}
		Expect(r.rerender(ctx, fn, rv).template).NotTo(BeNil(), "a good record with a new image rolls")

		rv.dep.Annotations[annotationRevisionSpec] = `{"template": 7, "port": "x"` // truncated, wrong types
		Expect(r.rerender(ctx, fn, rv)).To(Equal(rerendered{}))

		other := fn.DeepCopy()
		other.Spec.Template.Spec.Containers[0].Image = "example/up:v2" // the function moved on
		delete(rv.dep.Annotations, annotationRevisionSpec)
		Expect(r.rerender(ctx, other, rv)).To(Equal(rerendered{}), "no record and not the current template: left alone")

		big := fn.DeepCopy()
		big.Spec.Template.Annotations = map[string]string{"blob": strings.Repeat("x", maxRecordedRevisionSpec)}
		bigDep, err := revisionDeployment(big, "up-00002", 2, TemplateHash(big), 0, o)
		Expect(err).NotTo(HaveOccurred())
		Expect(bigDep.Annotations).NotTo(HaveKey(annotationRevisionSpec), "a template over the bound is not recorded")
	})
})
