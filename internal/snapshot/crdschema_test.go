package snapshot

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/defaulting"
	apiservervalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	kjson "k8s.io/apimachinery/pkg/util/json"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/yaml"
)

// crdSchema is one kind's CRD schema as the API server applies it on create: structural
// defaulting, OpenAPI validation and the CEL rules.
type crdSchema struct {
	structural *structuralschema.Structural
	validator  apiservervalidation.SchemaValidator
	cel        *cel.Validator
}

// crdSchemas reads config/crd/bases once, by kind.
var crdSchemas = sync.OnceValues(func() (map[string]*crdSchema, error) {
	files, err := filepath.Glob(filepath.Join("..", "..", "config", "crd", "bases", "*.yaml"))
	if err != nil || len(files) == 0 {
		return nil, fmt.Errorf("no CRDs in config/crd/bases: %v", err)
	}
	out := map[string]*crdSchema{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := yaml.Unmarshal(raw, crd); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		if len(crd.Spec.Versions) != 1 {
			return nil, fmt.Errorf("%s: want one version, got %d", f, len(crd.Spec.Versions))
		}
		props := &apiextensions.JSONSchemaProps{}
		if err := apiextensionsv1.Convert_v1_JSONSchemaProps_To_apiextensions_JSONSchemaProps(crd.Spec.Versions[0].Schema.OpenAPIV3Schema, props, nil); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		s := &crdSchema{}
		if s.structural, err = structuralschema.NewStructural(props); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		if s.validator, _, err = apiservervalidation.NewSchemaValidator(props); err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		s.cel = cel.NewValidator(s.structural, true, celconfig.PerCallLimit)
		out[crd.Spec.Names.Kind] = s
	}
	return out, nil
})

// admit returns obj (its JSON form) as the API server would store it on create — with
// the schema's defaults — or the first reason it would refuse it.
func (s *crdSchema) admit(tree map[string]any) (map[string]any, error) {
	return s.check(tree, true)
}

// check is admit, with the CEL rules only when withCEL is set: an object stored before a
// rule existed still passes the OpenAPI schema it was stored under.
func (s *crdSchema) check(tree map[string]any, withCEL bool) (map[string]any, error) {
	obj, err := s.defaulted(tree)
	if err != nil {
		return nil, err
	}
	if errs := apiservervalidation.ValidateCustomResource(nil, obj, s.validator); len(errs) > 0 {
		return nil, errs[0]
	}
	if !withCEL {
		return obj, nil
	}
	if errs, _ := s.cel.Validate(context.Background(), nil, s.structural, obj, nil, celconfig.RuntimeCELCostBudget); len(errs) > 0 {
		return nil, errs[0]
	}
	return obj, nil
}

// defaulted is a copy of tree with the schema's defaults, as the API server also applies
// them when it reads a stored object.
func (s *crdSchema) defaulted(tree map[string]any) (map[string]any, error) {
	// Decode as the API server does: integral numbers as int64, which the CEL rules need.
	b, err := json.Marshal(tree)
	if err != nil {
		return nil, err
	}
	var obj map[string]any
	if err := kjson.Unmarshal(b, &obj); err != nil {
		return nil, err
	}
	defaulting.Default(obj, s.structural)
	return obj, nil
}
