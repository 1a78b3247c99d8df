package snapshot

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
)

// TestGoldenInputsCoverEverySpecField walks the spec types of the kinds by
// reflection and fails, naming them, for every JSON field path that no testdata/*.in.yaml
// sets. A new CRD field therefore needs a golden case before it can merge: the translation
// of every field is pinned by at least one reviewed output file.
func TestGoldenInputsCoverEverySpecField(t *testing.T) {
	kinds := map[string]reflect.Type{
		"MeshRoute":    reflect.TypeOf(meshv1alpha1.MeshRouteSpec{}),
		"MeshFunction": reflect.TypeOf(meshv1alpha1.MeshFunctionSpec{}),
		"RedisProxy":   reflect.TypeOf(meshv1alpha1.RedisProxySpec{}),
		"MeshPolicy":   reflect.TypeOf(meshv1alpha1.MeshPolicySpec{}),
	}
	want := map[string]bool{}
	for kind, ty := range kinds {
		specPaths(ty, kind+".spec", want, map[reflect.Type]bool{})
	}
	if len(want) < 50 {
		t.Fatalf("the spec walk found only %d field paths; it is broken", len(want))
	}
	have := map[string]bool{}
	ins, err := filepath.Glob(filepath.Join("testdata", "*.in.yaml"))
	if err != nil || len(ins) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	for _, in := range ins {
		data, err := os.ReadFile(in)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(data), "\n---\n") {
			var obj struct {
				Kind string         `json:"kind"`
				Spec map[string]any `json:"spec"`
			}
			if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
				t.Fatalf("%s: %v", in, err)
			}
			if _, ok := kinds[obj.Kind]; ok {
				setPaths(obj.Spec, obj.Kind+".spec", have)
			}
		}
	}
	var missing []string
	for p := range want {
		if !have[p] {
			missing = append(missing, p)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("%d spec fields are set in no testdata/*.in.yaml; add them to a golden case:\n  %s",
			len(missing), strings.Join(missing, "\n  "))
	}
}

// specPaths adds the JSON path of every field reachable from ty. Types outside
// api/v1alpha1 (pod templates, quantities) and types that decode themselves (Duration,
// FunctionTemplate) are leaves: their inside is not Weft's schema.
func specPaths(ty reflect.Type, path string, out map[string]bool, seen map[reflect.Type]bool) {
	for ty.Kind() == reflect.Pointer {
		ty = ty.Elem()
	}
	if ty.Kind() == reflect.Slice {
		specPaths(ty.Elem(), path+"[]", out, seen)
		return
	}
	if ty.Kind() != reflect.Struct || ty.PkgPath() != reflect.TypeOf(meshv1alpha1.MeshRoute{}).PkgPath() ||
		reflect.PointerTo(ty).Implements(reflect.TypeOf((*json.Unmarshaler)(nil)).Elem()) || seen[ty] {
		out[path] = true
		return
	}
	seen[ty] = true
	defer delete(seen, ty)
	for i := 0; i < ty.NumField(); i++ {
		f := ty.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch {
		case name == "-" || !f.IsExported():
		case name == "" && f.Anonymous:
			specPaths(f.Type, path, out, seen) // inline
		default:
			if name == "" {
				name = f.Name
			}
			specPaths(f.Type, path+"."+name, out, seen)
		}
	}
}

// setPaths adds the path of every key set in a decoded YAML value; list items share the
// path "[]". Keys under map-typed fields (labels) add paths no spec walk asks for.
func setPaths(v any, path string, out map[string]bool) {
	out[path] = true
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			setPaths(e, path+"."+k, out)
		}
	case []any:
		for _, e := range v {
			setPaths(e, path+"[]", out)
		}
	}
}
