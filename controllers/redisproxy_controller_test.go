package controllers

import (
	"context"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/workload"
)

var _ = Describe("RedisProxy controller", Ordered, func() {
	var stop context.CancelFunc
	nn := types.NamespacedName{Namespace: "default", Name: "standalone-redis-proxy"}

	BeforeAll(func() {
		stop, _ = startManager(func(mgr ctrl.Manager) error {
			return (&RedisProxyReconciler{Client: mgr.GetClient(), Options: workload.DefaultOptions()}).SetupWithManager(mgr)
		})
	})
	AfterAll(func() { stop() })

	It("renders a standalone proxy for spec.replicas and removes it when replicas is unset", func() {
		u := objectFromYAML(redis(`
  listener: {port: 6380}
  servers:
  - {name: a, address: "10.0.0.1:6379"}
  replicas: 2`))
		u.SetName("standalone")
		Expect(k8sClient.Create(ctx, u)).To(Succeed())
		Eventually(func(g Gomega) {
			d := &appsv1.Deployment{}
			g.Expect(k8sClient.Get(ctx, nn, d)).To(Succeed())
			g.Expect(*d.Spec.Replicas).To(Equal(int32(2)))
			g.Expect(d.Spec.Template.Spec.Containers[0].Args).To(ContainElement("--redis-proxy=default/standalone"))
			g.Expect(d.OwnerReferences).To(ContainElement(HaveField("Name", "standalone")))
			s := &corev1.Service{}
			g.Expect(k8sClient.Get(ctx, nn, s)).To(Succeed())
			g.Expect(s.Spec.Ports[0].Port).To(Equal(int32(6380)))
		}).WithTimeout(60 * time.Second).Should(Succeed())

		rp := &meshv1alpha1.RedisProxy{}
		Expect(k8sClient.Get(ctx, types.NamespacedName{Namespace: "default", Name: "standalone"}, rp)).To(Succeed())
		rp.Spec.Replicas = nil
		Expect(k8sClient.Update(ctx, rp)).To(Succeed())
		Eventually(func(g Gomega) {
			g.Expect(apierrors.IsNotFound(k8sClient.Get(ctx, nn, &appsv1.Deployment{}))).To(BeTrue())
			g.Expect(apierrors.IsNotFound(k8sClient.Get(ctx, nn, &corev1.Service{}))).To(BeTrue())
		}).WithTimeout(60 * time.Second).Should(Succeed())
	})
})
