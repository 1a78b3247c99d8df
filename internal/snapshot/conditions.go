package snapshot

import (
	"fmt"
	"sort"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
)

// problems collects what went wrong with one object while translating it, so its
// conditions can say everything at once instead of only the first failure.
type problems struct {
	conflicts  []string // Accepted=False, HostConflict
	invalid    []string // Accepted=False, Invalid
	missing    []string // ResolvedRefs=False, BackendNotFound
	secretMiss []string // ResolvedRefs=False, SecretNotFound
}

func (p *problems) conflict(format string, a ...any) {
	p.conflicts = append(p.conflicts, fmt.Sprintf(format, a...))
}
func (p *problems) invalidf(format string, a ...any) {
	p.invalid = append(p.invalid, fmt.Sprintf(format, a...))
}
func (p *problems) missingf(format string, a ...any) {
	p.missing = append(p.missing, fmt.Sprintf(format, a...))
}
func (p *problems) secretf(format string, a ...any) {
	p.secretMiss = append(p.secretMiss, fmt.Sprintf(format, a...))
}

func joinSorted(s []string) string {
	c := append([]string(nil), s...)
	sort.Strings(c)
	out := c[:0]
	for i, v := range c {
		if i == 0 || v != c[i-1] {
			out = append(out, v)
		}
	}
	return strings.Join(out, "; ")
}

// conditions turns the problems into the Accepted and ResolvedRefs conditions.
func (p *problems) conditions() []metav1.Condition {
	accepted := metav1.Condition{Type: meshv1alpha1.ConditionAccepted, Status: metav1.ConditionTrue,
		Reason: meshv1alpha1.ReasonAccepted, Message: "Translated into the xDS snapshot."}
	switch {
	case len(p.conflicts) > 0:
		accepted.Status, accepted.Reason = metav1.ConditionFalse, meshv1alpha1.ReasonHostConflict
		accepted.Message = joinSorted(p.conflicts) + suffix(p.invalid)
	case len(p.invalid) > 0:
		accepted.Status, accepted.Reason = metav1.ConditionFalse, meshv1alpha1.ReasonInvalid
		accepted.Message = joinSorted(p.invalid)
	}
	resolved := metav1.Condition{Type: meshv1alpha1.ConditionResolvedRefs, Status: metav1.ConditionTrue,
		Reason: meshv1alpha1.ReasonResolvedRefs, Message: "Every referenced object exists."}
	switch {
	case len(p.secretMiss) > 0:
		resolved.Status, resolved.Reason = metav1.ConditionFalse, meshv1alpha1.ReasonSecretNotFound
		resolved.Message = joinSorted(append(append([]string(nil), p.secretMiss...), p.missing...))
	case len(p.missing) > 0:
		resolved.Status, resolved.Reason = metav1.ConditionFalse, meshv1alpha1.ReasonBackendNotFound
		resolved.Message = joinSorted(p.missing)
	}
	return []metav1.Condition{accepted, resolved}
}

func suffix(more []string) string {
	if len(more) == 0 {
		return ""
	}
	return "; " + joinSorted(more)
}
