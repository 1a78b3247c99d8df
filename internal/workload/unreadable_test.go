package workload

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
)

// A MeshFunction whose stored template is not a pod template (issue 13: containers: "echo")
// decodes with the template marked unreadable; it gets no Deployment and an error that names
// the field, which the controller puts in the Ready condition.
func TestFunctionWithUnreadableTemplateGetsNoDeployment(t *testing.T) {
	fn := &meshv1alpha1.MeshFunction{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "orders"}}
	if err := fn.Spec.Template.UnmarshalJSON([]byte(`{"spec":{"containers":"echo"}}`)); err != nil {
		t.Fatalf("decoding never fails, got %v", err)
	}
	dep, err := FunctionDeployment(fn, 1, DefaultOptions())
	if err == nil || dep != nil {
		t.Fatalf("got a Deployment (%v) for an unreadable template", dep)
	}
	if !strings.Contains(err.Error(), "spec.template is not a pod template") || !strings.Contains(err.Error(), "shop/orders") {
		t.Errorf("error %q does not name the object and the field", err)
	}
}
