// Command crd-template-schema sets the schema of MeshFunction spec.template in the generated
// CRD from api/v1alpha1/functiontemplate_schema.yaml. controller-gen can only emit the full
// PodTemplateSpec schema (about 640 KB, too large for client-side apply) or none; this
// writes the subset Weft reads, so a template of the wrong shape is refused at apply. make
// manifests runs it after controller-gen.
package main

import (
	"bytes"
	"fmt"
	"os"

	"sigs.k8s.io/yaml"
)

const (
	crdPath    = "config/crd/bases/mesh.weft.dev_meshfunctions.yaml"
	schemaPath = "api/v1alpha1/functiontemplate_schema.yaml"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "crd-template-schema:", err)
		os.Exit(1)
	}
}

func run() error {
	raw, err := os.ReadFile(crdPath)
	if err != nil {
		return err
	}
	var crd map[string]any
	if err := yaml.Unmarshal(raw, &crd); err != nil {
		return fmt.Errorf("reading %s: %w", crdPath, err)
	}
	raw, err = os.ReadFile(schemaPath)
	if err != nil {
		return err
	}
	var schema map[string]any
	if err := yaml.Unmarshal(raw, &schema); err != nil {
		return fmt.Errorf("reading %s: %w", schemaPath, err)
	}
	versions, _ := dig(crd, "spec", "versions").([]any)
	if len(versions) == 0 {
		return fmt.Errorf("%s has no versions", crdPath)
	}
	for _, v := range versions {
		props, ok := dig(v, "schema", "openAPIV3Schema", "properties", "spec", "properties").(map[string]any)
		if !ok || props["template"] == nil {
			return fmt.Errorf("%s: no spec.template property", crdPath)
		}
		props["template"] = schema
	}
	out, err := yaml.Marshal(crd)
	if err != nil {
		return err
	}
	return os.WriteFile(crdPath, append([]byte("---\n"), bytes.TrimLeft(out, "\n")...), 0o644)
}

// dig walks nested maps by key.
func dig(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}
