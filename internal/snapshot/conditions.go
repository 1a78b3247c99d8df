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
	names      []string // Accepted=False, NameConflict
	hosts      []string // Accepted=False, NotAllowedHosts
	conflicts  []string // Accepted=False, HostConflict
	invalid    []string // Accepted=False, Invalid
	missing    []string // ResolvedRefs=False, BackendNotFound
	secretMiss []string // ResolvedRefs=False, SecretNotFound
	refs       []string // ResolvedRefs=False, RefNotPermitted
	shadowed   []string // Warning=True, ShadowedRule
	ignored    []string // Warning=True, TrafficPolicyIgnored (functionpolicy.go)
	hostsGone  []string // ResolvedRefs=False, HostNotFound (MeshPolicy to.hosts, policy.go)
	targets    []string // ResolvedRefs=False, TargetNotFound (MeshPolicy targetRefs, redispolicy.go)
}

func (p *problems) unknownHostf(format string, a ...any) {
	p.hostsGone = append(p.hostsGone, fmt.Sprintf(format, a...))
}

func (p *problems) conflict(format string, a ...any) {
	p.conflicts = append(p.conflicts, fmt.Sprintf(format, a...))
}
func (p *problems) nameConflict(format string, a ...any) {
	p.names = append(p.names, fmt.Sprintf(format, a...))
}
func (p *problems) notAllowedHost(format string, a ...any) {
	p.hosts = append(p.hosts, fmt.Sprintf(format, a...))
}
func (p *problems) refNotPermitted(format string, a ...any) {
	p.refs = append(p.refs, fmt.Sprintf(format, a...))
}
func (p *problems) shadowedf(format string, a ...any) {
	p.shadowed = append(p.shadowed, fmt.Sprintf(format, a...))
}
func (p *problems) policyIgnoredf(format string, a ...any) {
	p.ignored = append(p.ignored, fmt.Sprintf(format, a...))
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
	case len(p.names) > 0:
		accepted.Status, accepted.Reason = metav1.ConditionFalse, meshv1alpha1.ReasonNameConflict
		accepted.Message = joinSorted(p.names) + suffix(p.hosts) + suffix(p.conflicts) + suffix(p.invalid)
	case len(p.hosts) > 0:
		accepted.Status, accepted.Reason = metav1.ConditionFalse, meshv1alpha1.ReasonNotAllowedHosts
		accepted.Message = joinSorted(p.hosts) + suffix(p.conflicts) + suffix(p.invalid)
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
	case len(p.refs) > 0:
		resolved.Status, resolved.Reason = metav1.ConditionFalse, meshv1alpha1.ReasonRefNotPermitted
		resolved.Message = joinSorted(p.refs) + suffix(p.secretMiss) + suffix(p.missing)
	case len(p.secretMiss) > 0:
		resolved.Status, resolved.Reason = metav1.ConditionFalse, meshv1alpha1.ReasonSecretNotFound
		resolved.Message = joinSorted(append(append([]string(nil), p.secretMiss...), p.missing...))
	case len(p.missing) > 0:
		resolved.Status, resolved.Reason = metav1.ConditionFalse, meshv1alpha1.ReasonBackendNotFound
		resolved.Message = joinSorted(p.missing)
	case len(p.hostsGone) > 0:
		resolved.Status, resolved.Reason = metav1.ConditionFalse, meshv1alpha1.ReasonHostNotFound
		resolved.Message = joinSorted(p.hostsGone)
	case len(p.targets) > 0:
		resolved.Status, resolved.Reason = metav1.ConditionFalse, meshv1alpha1.ReasonTargetNotFound
		resolved.Message = joinSorted(p.targets)
	}
	warning := metav1.Condition{Type: meshv1alpha1.ConditionWarning, Status: metav1.ConditionFalse,
		Reason: meshv1alpha1.ReasonNoWarnings, Message: "Nothing looks unintended."}
	switch {
	case len(p.shadowed) > 0:
		warning.Status, warning.Reason, warning.Message = metav1.ConditionTrue, meshv1alpha1.ReasonShadowedRule, joinSorted(p.shadowed)
		if len(p.ignored) > 0 {
			warning.Message += "; " + joinSorted(p.ignored) + ": " + policyIgnoredHint
		}
	case len(p.ignored) > 0:
		warning.Status, warning.Reason = metav1.ConditionTrue, meshv1alpha1.ReasonTrafficPolicyIgnored
		warning.Message = joinSorted(p.ignored) + ": " + policyIgnoredHint
	}
	return []metav1.Condition{accepted, resolved, warning}
}

func suffix(more []string) string {
	if len(more) == 0 {
		return ""
	}
	return "; " + joinSorted(more)
}
