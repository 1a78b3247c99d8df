package snapshot

import (
	"strings"
	"testing"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
)

// Regression (FuzzBuild, issue 13): a header name that is not an HTTP token, or a value with
// a control character, passed the CRD and made every sidecar NACK the shared route
// configuration. Such a route is now refused by name and left out.
func TestHeaderOperationsThatNoSidecarAcceptsAreRefused(t *testing.T) {
	route := func(ops meshv1alpha1.HeaderOperation) *meshv1alpha1.MeshRoute {
		mr := &meshv1alpha1.MeshRoute{}
		mr.Namespace, mr.Name = "default", "r"
		mr.Spec.HTTP = []meshv1alpha1.HTTPRule{{
			Headers: &meshv1alpha1.HeaderOperations{Request: &ops},
			Route:   []meshv1alpha1.RouteDestination{{Headers: &meshv1alpha1.HeaderOperations{Response: &ops}}},
		}}
		return mr
	}
	for _, tc := range []struct {
		name string
		ops  meshv1alpha1.HeaderOperation
		want string // "" for no problem
	}{
		{"valid", meshv1alpha1.HeaderOperation{Set: map[string]string{"x-a": "1"}, Add: map[string]string{"X_B": "v w"}, Remove: []string{"x-c"}}, ""},
		{"space in a set name", meshv1alpha1.HeaderOperation{Set: map[string]string{"x rule": "1"}}, `header name "x rule" is not an HTTP token`},
		{"slash in a removed name", meshv1alpha1.HeaderOperation{Remove: []string{"x/y"}}, `remove[0]: header name "x/y"`},
		{"newline in an added value", meshv1alpha1.HeaderOperation{Add: map[string]string{"x-a": "1\r\nset-cookie: a=b"}}, "control character"},
		{"empty name", meshv1alpha1.HeaderOperation{Set: map[string]string{"": "1"}}, `header name ""`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := headerProblems(route(tc.ops))
			if tc.want == "" {
				if len(got) != 0 {
					t.Fatalf("valid operations refused: %v", got)
				}
				return
			}
			if len(got) != 2 { // the rule's request headers and the destination's response headers
				t.Fatalf("got %d problems, want 2 (rule and destination): %v", len(got), got)
			}
			for _, p := range got {
				if !strings.Contains(p, tc.want) {
					t.Errorf("problem %q does not say %q", p, tc.want)
				}
			}
		})
	}
}
