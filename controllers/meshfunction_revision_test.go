package controllers

import (
	"context"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/autoscale"
	"github.com/weftmesh/weft/internal/workload"
)

var _ = Describe("MeshFunction revisions", Ordered, func() {
	const ns = "revisions"
	var (
		scaler    *recordingScaler
		decisions *Decisions
		stop      context.CancelFunc
		nn        = types.NamespacedName{Namespace: ns, Name: "shop"}
	)

	BeforeAll(func() {
		createNamespace(ns)
		scaler, decisions = newRecordingScaler(), NewDecisions()
		clk := clocktesting.NewFakeClock(time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC))
		stop, _ = startManager(func(mgr ctrl.Manager) error {
			r := &MeshFunctionReconciler{
				Client: mgr.GetClient(), Options: workload.DefaultOptions(), Scaler: scaler, Decisions: decisions,
				Handoff: HandoffFunc(func(types.NamespacedName) bool { return true }),
				Clock:   clk, HandoffTimeout: time.Minute,
			}
			return r.SetupWithManager(mgr)
		})
	})
	AfterAll(func() { stop() })

	function := func(g Gomega) *meshv1alpha1.MeshFunction {
		f := &meshv1alpha1.MeshFunction{}
		g.Expect(k8sClient.Get(ctx, nn, f)).To(Succeed())
		return f
	}
	deployment := func(g Gomega, name string) *appsv1.Deployment {
		d := &appsv1.Deployment{}
		g.Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, d)).To(Succeed())
		return d
	}
	revisionNames := func(g Gomega) []string {
		var l appsv1.DeploymentList
		g.Expect(k8sClient.List(ctx, &l, client.InNamespace(ns), client.HasLabels{meshv1alpha1.LabelRevision})).To(Succeed())
		var out []string
		for _, d := range l.Items {
			if d.DeletionTimestamp == nil {
				out = append(out, d.Name)
			}
		}
		return out
	}
	update := func(change func(f *meshv1alpha1.MeshFunction)) {
		Eventually(func(g Gomega) {
			f := function(g)
			change(f)
			g.Expect(k8sClient.Update(ctx, f)).To(Succeed())
		}).WithTimeout(10 * time.Second).Should(Succeed())
	}
	setImage := func(image string) {
		update(func(f *meshv1alpha1.MeshFunction) { f.Spec.Template.Spec.Containers[0].Image = image })
	}
	markReady := func(name string, ready int32) {
		Eventually(func(g Gomega) {
			d := deployment(g, name)
			d.Status.Replicas, d.Status.ReadyReplicas = ready, ready
			g.Expect(k8sClient.Status().Update(ctx, d)).To(Succeed())
		}).WithTimeout(10 * time.Second).Should(Succeed())
	}
	served := func(g Gomega) []meshv1alpha1.TrafficStatus { return function(g).Status.Traffic }

	It("creates the first revision, its own Deployment, instead of one named after the function", func() {
		Expect(k8sClient.Create(ctx, objectFromYAML(`
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {name: shop, namespace: revisions}
spec:
  template:
    spec:
      containers:
      - {name: fn, image: example/shop:v1}
  scale: {initial: 1, max: 5}
  traffic:
  - {latestRevision: true, percent: 100}
`))).To(Succeed())
		Eventually(func(g Gomega) {
			d := deployment(g, "shop-00001")
			g.Expect(d.Labels).To(HaveKeyWithValue(meshv1alpha1.LabelRevision, "shop-00001"))
			g.Expect(d.Spec.Selector.MatchLabels).To(HaveKeyWithValue(meshv1alpha1.LabelRevision, "shop-00001"))
			g.Expect(d.Spec.Template.Labels).To(HaveKeyWithValue(meshv1alpha1.LabelRevision, "shop-00001"))
			g.Expect(d.Spec.Template.Labels).To(HaveKeyWithValue(workload.LabelFunction, "shop"))
			g.Expect(*d.Spec.Replicas).To(Equal(int32(1)))
			f := function(g)
			g.Expect(f.Status.LatestCreatedRevisionName).To(Equal("shop-00001"))
			g.Expect(f.Status.Revisions).To(HaveLen(1))
			g.Expect(f.Status.Traffic).To(Equal([]meshv1alpha1.TrafficStatus{{RevisionName: "shop-00001", LatestRevision: ptr.To(true), Percent: ptr.To[int64](100)}}))
		}).WithTimeout(60 * time.Second).Should(Succeed())
		err := k8sClient.Get(ctx, nn, &appsv1.Deployment{})
		Expect(apierrors.IsNotFound(err)).To(BeTrue(), "a function with spec.traffic has no Deployment of its own name: %v", err)

		By("scaling the revision under its own autoscaler key")
		Eventually(func(g Gomega) {
			s, ok := scaler.spec(autoscale.FunctionKey{Namespace: ns, Name: "shop-00001"})
			g.Expect(ok).To(BeTrue())
			g.Expect(s.MaxScale).To(Equal(int32(5)))
		}).WithTimeout(10 * time.Second).Should(Succeed())
	})

	It("creates no revision when only scale settings change", func() {
		before := function(Default).Generation
		update(func(f *meshv1alpha1.MeshFunction) { f.Spec.Scale.Max = 7 })
		Eventually(func(g Gomega) {
			f := function(g)
			g.Expect(f.Generation).To(BeNumerically(">", before))
			g.Expect(f.Status.ObservedGeneration).To(Equal(f.Generation))
			s, _ := scaler.spec(autoscale.FunctionKey{Namespace: ns, Name: "shop-00001"})
			g.Expect(s.MaxScale).To(Equal(int32(7)))
		}).WithTimeout(60 * time.Second).Should(Succeed())
		Consistently(func(g Gomega) {
			g.Expect(revisionNames(g)).To(ConsistOf("shop-00001"))
		}).WithTimeout(2 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())
	})

	It("creates a revision on a template change and moves latestRevision traffic once it is ready", func() {
		markReady("shop-00001", 1)
		Eventually(func(g Gomega) {
			g.Expect(function(g).Status.LatestReadyRevisionName).To(Equal("shop-00001"))
		}).WithTimeout(60 * time.Second).Should(Succeed())

		setImage("example/shop:v2")
		Eventually(func(g Gomega) {
			g.Expect(revisionNames(g)).To(ConsistOf("shop-00001", "shop-00002"))
			f := function(g)
			g.Expect(f.Status.LatestCreatedRevisionName).To(Equal("shop-00002"))
			g.Expect(f.Status.Revisions).To(HaveLen(2))
			g.Expect(f.Status.Revisions[0].Name).To(Equal("shop-00002"), "newest first")
		}).WithTimeout(60 * time.Second).Should(Succeed())
		By("keeping the old revision's template as it was: revisions are immutable")
		Expect(deployment(Default, "shop-00001").Spec.Template.Spec.Containers[0].Image).To(Equal("example/shop:v1"))
		Expect(deployment(Default, "shop-00002").Spec.Template.Spec.Containers[0].Image).To(Equal("example/shop:v2"))
		By("sending latestRevision traffic to the newest ready revision, still the old one")
		Consistently(func(g Gomega) {
			g.Expect(served(g)).To(HaveLen(1))
			g.Expect(served(g)[0].RevisionName).To(Equal("shop-00001"))
		}).WithTimeout(2 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())

		Expect(scaler.alias(autoscale.FunctionKey{Namespace: ns, Name: "shop"})).To(Equal(autoscale.FunctionKey{Namespace: ns, Name: "shop-00001"}),
			"the function's async backlog goes to the revision its latest traffic goes to")

		markReady("shop-00002", 1)
		Eventually(func(g Gomega) {
			f := function(g)
			g.Expect(f.Status.LatestReadyRevisionName).To(Equal("shop-00002"))
			g.Expect(f.Status.Traffic[0].RevisionName).To(Equal("shop-00002"))
			g.Expect(scaler.alias(autoscale.FunctionKey{Namespace: ns, Name: "shop"})).To(Equal(autoscale.FunctionKey{Namespace: ns, Name: "shop-00002"}))
		}).WithTimeout(60 * time.Second).Should(Succeed())
	})

	It("serves a split with a tag, and reports it in status.traffic", func() {
		update(func(f *meshv1alpha1.MeshFunction) {
			f.Spec.Traffic = []meshv1alpha1.TrafficTarget{
				{RevisionName: "shop-00001", Percent: ptr.To[int64](90)},
				{LatestRevision: ptr.To(true), Percent: ptr.To[int64](10), Tag: "canary"},
			}
		})
		Eventually(func(g Gomega) {
			g.Expect(served(g)).To(Equal([]meshv1alpha1.TrafficStatus{
				{RevisionName: "shop-00001", Percent: ptr.To[int64](90)},
				{RevisionName: "shop-00002", LatestRevision: ptr.To(true), Percent: ptr.To[int64](10), Tag: "canary",
					URL: "http://canary-shop.revisions.svc.cluster.local"},
			}))
		}).WithTimeout(60 * time.Second).Should(Succeed())
		By("giving the tag's host a Service that selects the tagged revision's pods")
		Eventually(func(g Gomega) {
			svc := &corev1.Service{}
			g.Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "canary-shop"}, svc)).To(Succeed())
			g.Expect(svc.Spec.Selector).To(Equal(map[string]string{workload.LabelFunction: "shop", meshv1alpha1.LabelRevision: "shop-00002"}))
			g.Expect(svc.OwnerReferences).To(ContainElement(HaveField("Name", "shop")))
		}).WithTimeout(60 * time.Second).Should(Succeed())
	})

	It("keeps the split served before when spec.traffic names an unknown revision, and says why", func() {
		update(func(f *meshv1alpha1.MeshFunction) {
			f.Spec.Traffic = []meshv1alpha1.TrafficTarget{{RevisionName: "shop-00009", Percent: ptr.To[int64](100)}}
		})
		Eventually(func(g Gomega) {
			f := function(g)
			c := meta.FindStatusCondition(f.Status.Conditions, meshv1alpha1.ConditionAvailable)
			g.Expect(c).NotTo(BeNil())
			g.Expect(c.ObservedGeneration).To(Equal(f.Generation))
			g.Expect(c.Status).To(Equal(metav1.ConditionFalse))
			g.Expect(c.Reason).To(Equal(meshv1alpha1.ReasonRevisionMissing))
			g.Expect(c.Message).To(ContainSubstring(`spec.traffic[0].revisionName "shop-00009" is not a revision of this function (it has shop-00002, shop-00001)`))
			// With the snapshot reconciler's conditions True, kstatus reads it as Failed: a
			// user must fix the name.
			conds := []metav1.Condition{*c.DeepCopy()}
			for _, typ := range []string{meshv1alpha1.ConditionAccepted, meshv1alpha1.ConditionResolvedRefs, meshv1alpha1.ConditionProgrammed} {
				conds = append(conds, metav1.Condition{Type: typ, Status: metav1.ConditionTrue, Reason: "Ok", ObservedGeneration: f.Generation})
			}
			summarize(&conds, "MeshFunction", f.Generation)
			g.Expect(meta.IsStatusConditionTrue(conds, meshv1alpha1.ConditionStalled)).To(BeTrue())
			g.Expect(f.Status.Traffic).To(HaveLen(2), "the split of before stays")
			g.Expect(f.Status.Traffic[0].RevisionName).To(Equal("shop-00001"))
		}).WithTimeout(60 * time.Second).Should(Succeed())

		By("rolling back by naming the old revision")
		update(func(f *meshv1alpha1.MeshFunction) {
			f.Spec.Traffic = []meshv1alpha1.TrafficTarget{{RevisionName: "shop-00001", Percent: ptr.To[int64](100)}}
		})
		Eventually(func(g Gomega) {
			f := function(g)
			g.Expect(f.Status.Traffic).To(Equal([]meshv1alpha1.TrafficStatus{{RevisionName: "shop-00001", Percent: ptr.To[int64](100)}}))
			g.Expect(meta.FindStatusCondition(f.Status.Conditions, meshv1alpha1.ConditionAvailable).Reason).NotTo(Equal(meshv1alpha1.ReasonRevisionMissing))
		}).WithTimeout(60 * time.Second).Should(Succeed())
	})

	It("scales each revision on its own, and a revision nothing routes to has no minimum", func() {
		update(func(f *meshv1alpha1.MeshFunction) { f.Spec.Scale.Min = 1 })
		Eventually(func(g Gomega) {
			s1, _ := scaler.spec(autoscale.FunctionKey{Namespace: ns, Name: "shop-00001"})
			s2, _ := scaler.spec(autoscale.FunctionKey{Namespace: ns, Name: "shop-00002"})
			g.Expect(s1.MinScale).To(Equal(int32(1)), "routed")
			// shop-00002 is the newest created and ready revision: kept routable.
			g.Expect(s2.MinScale).To(Equal(int32(1)), "latest")
		}).WithTimeout(60 * time.Second).Should(Succeed())

		decisions.SetDesired(autoscale.FunctionKey{Namespace: ns, Name: "shop-00001"}, autoscale.Decision{Desired: 3})
		Eventually(func(g Gomega) {
			g.Expect(*deployment(g, "shop-00001").Spec.Replicas).To(Equal(int32(3)))
			f := function(g)
			g.Expect(f.Status.Revisions).To(ContainElement(And(HaveField("Name", "shop-00001"), HaveField("DesiredReplicas", int32(3)))))
		}).WithTimeout(60 * time.Second).Should(Succeed())
		Expect(*deployment(Default, "shop-00002").Spec.Replicas).To(Equal(int32(1)))
	})

	It("keeps revisionHistoryLimit revisions without traffic and never deletes routed ones", func() {
		update(func(f *meshv1alpha1.MeshFunction) {
			f.Spec.RevisionHistoryLimit = ptr.To[int32](1)
			f.Spec.Traffic = []meshv1alpha1.TrafficTarget{
				{RevisionName: "shop-00001", Percent: ptr.To[int64](100)},
				{RevisionName: "shop-00002", Percent: ptr.To[int64](0), Tag: "old"},
			}
		})
		for _, v := range []string{"v3", "v4", "v5"} {
			setImage("example/shop:" + v)
			Eventually(func(g Gomega) {
				g.Expect(function(g).Status.LatestCreatedRevisionName).NotTo(Equal(""))
				g.Expect(deployment(g, function(g).Status.LatestCreatedRevisionName).Spec.Template.Spec.Containers[0].Image).To(Equal("example/shop:" + v))
			}).WithTimeout(60 * time.Second).Should(Succeed())
		}
		// Routed: 00001 (100 %), 00002 (tag), 00005 (latest created). Without traffic:
		// 00004 (kept, limit 1) and 00003 (deleted).
		Eventually(func(g Gomega) {
			g.Expect(revisionNames(g)).To(ConsistOf("shop-00001", "shop-00002", "shop-00004", "shop-00005"))
			var names []string
			for _, r := range function(g).Status.Revisions {
				names = append(names, r.Name)
			}
			g.Expect(names).To(Equal([]string{"shop-00005", "shop-00004", "shop-00002", "shop-00001"}))
		}).WithTimeout(60 * time.Second).Should(Succeed())
		Eventually(func() bool { return scaler.wasRemoved(autoscale.FunctionKey{Namespace: ns, Name: "shop-00003"}) }).WithTimeout(10 * time.Second).Should(BeTrue())
		By("deleting the Service of the tag that is gone, keeping the new one")
		Eventually(func(g Gomega) {
			err := k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "canary-shop"}, &corev1.Service{})
			g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "canary-shop: %v", err)
			g.Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "old-shop"}, &corev1.Service{})).To(Succeed())
		}).WithTimeout(60 * time.Second).Should(Succeed())
	})

	It("names a revision as spec.template.metadata.name says, and refuses to reuse it for another template", func() {
		update(func(f *meshv1alpha1.MeshFunction) {
			f.Spec.Template.Name = "shop-blue"
			f.Spec.Template.Spec.Containers[0].Image = "example/shop:blue"
		})
		Eventually(func(g Gomega) {
			g.Expect(function(g).Status.LatestCreatedRevisionName).To(Equal("shop-blue"))
			d := deployment(g, "shop-blue")
			g.Expect(d.Annotations).To(HaveKeyWithValue(annotationRevisionNumber, "6"))
		}).WithTimeout(60 * time.Second).Should(Succeed())
		setImage("example/shop:blue2")
		Eventually(func(g Gomega) {
			c := meta.FindStatusCondition(function(g).Status.Conditions, meshv1alpha1.ConditionAvailable)
			g.Expect(c).NotTo(BeNil())
			g.Expect(c.Reason).To(Equal(meshv1alpha1.ReasonInvalid))
			g.Expect(c.Message).To(ContainSubstring(`spec.template.metadata.name "shop-blue" is revision shop-blue, created from another template`))
		}).WithTimeout(60 * time.Second).Should(Succeed())
		By("still scaling the existing revisions meanwhile")
		decisions.SetDesired(autoscale.FunctionKey{Namespace: ns, Name: "shop-00001"}, autoscale.Decision{Desired: 4})
		Eventually(func(g Gomega) {
			g.Expect(*deployment(g, "shop-00001").Spec.Replicas).To(Equal(int32(4)))
		}).WithTimeout(60 * time.Second).Should(Succeed())
		update(func(f *meshv1alpha1.MeshFunction) { f.Spec.Template.Name = "" })
		Eventually(func(g Gomega) {
			g.Expect(function(g).Status.LatestCreatedRevisionName).To(Equal("shop-00007"))
		}).WithTimeout(60 * time.Second).Should(Succeed())
	})

	It("goes back to one Deployment named after the function when spec.traffic is removed", func() {
		update(func(f *meshv1alpha1.MeshFunction) { f.Spec.Traffic = nil })
		Eventually(func(g Gomega) {
			d := deployment(g, "shop")
			g.Expect(d.Labels).NotTo(HaveKey(meshv1alpha1.LabelRevision))
		}).WithTimeout(60 * time.Second).Should(Succeed())
		By("keeping the revisions, whose pods serve the function's calls, until that Deployment is ready")
		Consistently(func(g Gomega) {
			g.Expect(revisionNames(g)).NotTo(BeEmpty())
		}).WithTimeout(2 * time.Second).WithPolling(200 * time.Millisecond).Should(Succeed())
		markReady("shop", 1)
		Eventually(func(g Gomega) {
			g.Expect(revisionNames(g)).To(BeEmpty())
			f := function(g)
			g.Expect(f.Status.Revisions).To(BeEmpty())
			g.Expect(f.Status.Traffic).To(BeEmpty())
			err := k8sClient.Get(ctx, types.NamespacedName{Namespace: ns, Name: "old-shop"}, &corev1.Service{})
			g.Expect(apierrors.IsNotFound(err)).To(BeTrue(), "old-shop: %v", err)
		}).WithTimeout(60 * time.Second).Should(Succeed())
		Eventually(func() bool { return scaler.wasRemoved(autoscale.FunctionKey{Namespace: ns, Name: "shop-00001"}) }).WithTimeout(10 * time.Second).Should(BeTrue())
		Expect(scaler.alias(autoscale.FunctionKey{Namespace: ns, Name: "shop"})).To(BeZero(), "no alias without revisions")
	})

	It("turns revisions on for a running function, replacing its Deployment", func() {
		update(func(f *meshv1alpha1.MeshFunction) {
			f.Spec.Traffic = []meshv1alpha1.TrafficTarget{{LatestRevision: ptr.To(true), Percent: ptr.To[int64](100)}}
		})
		Eventually(func(g Gomega) {
			g.Expect(revisionNames(g)).To(HaveLen(1))
			err := k8sClient.Get(ctx, nn, &appsv1.Deployment{})
			g.Expect(apierrors.IsNotFound(err)).To(BeTrue())
		}).WithTimeout(60 * time.Second).Should(Succeed())
	})
})

var _ = Describe("MeshFunction traffic validation", func() {
	DescribeTable("refuses bad spec.traffic at apply with a message that says what to fix",
		func(traffic, wantMessage string) {
			u := objectFromYAML(function(traffic))
			u.SetGenerateName("bad-traffic-")
			err := k8sClient.Create(ctx, u)
			Expect(err).To(HaveOccurred(), "the API server accepted bad traffic")
			Expect(apierrors.IsInvalid(err)).To(BeTrue(), "want 422 Invalid, got %v", err)
			Expect(err.Error()).To(ContainSubstring(wantMessage))
		},
		Entry("percents below 100", `
  traffic:
  - {latestRevision: true, percent: 60}
  - {revisionName: fn-00001, percent: 30}`, "traffic percents must add up to 100"),
		Entry("percents above 100", `
  traffic:
  - {latestRevision: true, percent: 100}
  - {revisionName: fn-00001, percent: 1}`, "traffic percents must add up to 100"),
		Entry("no percent at all", `
  traffic:
  - {latestRevision: true, tag: a}`, "traffic percents must add up to 100"),
		Entry("a percent over 100", `
  traffic:
  - {latestRevision: true, percent: 101}`, "should be less than or equal to 100"),
		Entry("duplicate tags", `
  traffic:
  - {latestRevision: true, percent: 50, tag: beta}
  - {revisionName: fn-00001, percent: 50, tag: beta}`, "each traffic tag may appear once"),
		Entry("revisionName with latestRevision: true", `
  traffic:
  - {latestRevision: true, revisionName: fn-00001, percent: 100}`, "names either revisionName or latestRevision: true, not both"),
		Entry("neither revisionName nor latestRevision", `
  traffic:
  - {percent: 100, tag: x}`, "needs revisionName or latestRevision: true"),
		Entry("latestRevision false alone", `
  traffic:
  - {latestRevision: false, percent: 100}`, "needs revisionName or latestRevision: true"),
		Entry("an upper-case tag", `
  traffic:
  - {latestRevision: true, percent: 100, tag: Beta}`, "spec.traffic[0].tag in body should match"),
		Entry("an empty traffic list", `
  traffic: []`, "should have at least 1 items"),
		Entry("a history limit over 100", `
  revisionHistoryLimit: 101
  traffic:
  - {latestRevision: true, percent: 100}`, "should be less than or equal to 100"),
		Entry("a negative history limit", `
  revisionHistoryLimit: -1
  traffic:
  - {latestRevision: true, percent: 100}`, "should be greater than or equal to 0"),
	)

	It("refuses an upper-case revision name in spec.template.metadata.name", func() {
		u := objectFromYAML(`
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshFunction
metadata: {namespace: default, generateName: bad-name-}
spec:
  traffic:
  - {latestRevision: true, percent: 100}
  template:
    metadata: {name: Blue}
    spec:
      containers:
      - {name: fn, image: example/fn}`)
		err := k8sClient.Create(ctx, u)
		Expect(apierrors.IsInvalid(err)).To(BeTrue(), "want 422 Invalid, got %v", err)
		Expect(err.Error()).To(ContainSubstring("spec.template.metadata.name in body should match"))
	})

	It("accepts a split with tags and a pinned revision", func() {
		u := objectFromYAML(function(`
  revisionHistoryLimit: 3
  traffic:
  - {revisionName: fn-00001, percent: 90, tag: stable}
  - {latestRevision: true, percent: 10, tag: canary}
  - {revisionName: fn-00002, tag: old}`))
		u.SetGenerateName("good-traffic-")
		Expect(k8sClient.Create(ctx, u)).To(Succeed())
		Expect(k8sClient.Delete(ctx, u)).To(Succeed())
	})
})
