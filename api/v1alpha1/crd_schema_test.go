package v1alpha1_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/validation"
	"sigs.k8s.io/yaml"
)

// TestCRDsAreValid runs the API server's own CRD validation (structural schema, CEL
// compilation and cost limits) over the generated CRDs, so a rule that does not compile or
// costs too much fails here, before any cluster sees it.
func TestCRDsAreValid(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "config", "crd", "bases", "*.yaml"))
	if err != nil || len(files) != 4 {
		t.Fatalf("want 4 CRDs (MeshRoute, MeshFunction, RedisProxy, MeshPolicy), got %v (%v)", files, err)
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		v1 := &apiextensionsv1.CustomResourceDefinition{}
		if err := yaml.UnmarshalStrict(raw, v1); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		// The API server validates the internal version, after defaulting.
		apiextensionsv1.SetObjectDefaults_CustomResourceDefinition(v1)
		internal := &apiextensions.CustomResourceDefinition{}
		if err := apiextensionsv1.Convert_v1_CustomResourceDefinition_To_apiextensions_CustomResourceDefinition(v1, internal, nil); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, e := range validation.ValidateCustomResourceDefinition(context.Background(), internal) {
			t.Errorf("%s: %v", filepath.Base(f), e)
		}
		// Client-side apply keeps the whole object in an annotation of at most 256 KiB.
		if len(raw) > 200<<10 {
			t.Errorf("%s is %d bytes: too close to client-side apply's 262144-byte annotation limit", f, len(raw))
		}
	}
}
