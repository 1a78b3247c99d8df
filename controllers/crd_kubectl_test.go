package controllers

import (
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// The suite's client reads CRDs too.
func init() { utilruntime.Must(apiextensionsv1.AddToScheme(scheme.Scheme)) }

var _ = Describe("kubectl experience", func() {
	// What `kubectl get mr`, `kubectl get weft` and the table columns rely on, read back from
	// the API server rather than from the YAML, so it is what kubectl actually sees.
	DescribeTable("short names, the weft category and printer columns",
		func(crdName, short string, columns []string) {
			crd := &apiextensionsv1.CustomResourceDefinition{}
			Expect(k8sClient.Get(ctx, client.ObjectKey{Name: crdName}, crd)).To(Succeed())
			Expect(crd.Spec.Names.ShortNames).To(ConsistOf(short))
			Expect(crd.Spec.Names.Categories).To(ContainElement("weft"))
			Expect(crd.Spec.Versions).To(HaveLen(1))
			v := crd.Spec.Versions[0]
			var got []string
			for _, c := range v.AdditionalPrinterColumns {
				got = append(got, c.Name)
			}
			Expect(got).To(Equal(columns))
			Expect(v.Subresources).NotTo(BeNil())
			Expect(v.Subresources.Status).NotTo(BeNil(), "status must be a subresource")
		},
		Entry("MeshRoute", "meshroutes.mesh.weft.dev", "mr", []string{"Hosts", "Ready", "Reason", "Accepted", "Synced", "Age"}),
		Entry("MeshFunction", "meshfunctions.mesh.weft.dev", "mfn", []string{"URL", "Ready", "Reason", "Replicas", "Desired", "Age"}),
		Entry("RedisProxy", "redisproxies.mesh.weft.dev", "rp", []string{"Servers", "Ready", "Reason", "Age"}),
		Entry("MeshPolicy", "meshpolicies.mesh.weft.dev", "mp", []string{"Action", "Ready", "Reason", "Age"}),
	)
})
