package controllers

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
)

// MeshFunctionValidator refuses, at apply, what CEL cannot see because it needs other
// objects: a spec.traffic target naming a revision the function does not have, and a
// changed template that reuses an existing revision's name (Knative's webhook refuses that
// too). Everything else about a MeshFunction is checked by its CRD's schema and CEL rules.
//
// A revision exists when its Deployment does (the record the reconciler keeps, read
// uncached, so a revision created a moment ago counts) or status lists it; the revision
// this very change creates (spec.template.metadata.name, or the next <function>-<n>) counts
// too, so a template change and the traffic that sends calls to it can be one apply, as in
// Knative. On update only names the old object did not already route to are checked: a
// revision deleted by hand must not block every other edit of the function (status reports
// it as RevisionMissing, and the split served before is kept).
//
// When the check cannot read the revisions it admits the object with a warning: status
// still reports an unknown revision, and refusing every MeshFunction while the API is
// slow would block more than it protects.
type MeshFunctionValidator struct {
	// Reader lists Deployments; the manager gives its API reader (no cache).
	Reader  client.Reader
	Decoder admission.Decoder
}

// Handle implements admission.Handler.
func (v *MeshFunctionValidator) Handle(ctx context.Context, req admission.Request) admission.Response {
	if req.Operation != admissionv1.Create && req.Operation != admissionv1.Update {
		return admission.Allowed("")
	}
	fn := &meshv1alpha1.MeshFunction{}
	if err := v.Decoder.Decode(req, fn); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decoding the MeshFunction: %w", err))
	}
	var old *meshv1alpha1.MeshFunction
	if req.Operation == admissionv1.Update {
		old = &meshv1alpha1.MeshFunction{}
		if err := v.Decoder.DecodeRaw(req.OldObject, old); err != nil {
			return admission.Errored(http.StatusBadRequest, fmt.Errorf("decoding the MeshFunction's previous version: %w", err))
		}
	}
	if len(fn.Spec.Traffic) == 0 {
		return admission.Allowed("")
	}
	var revs []revision
	if old != nil {
		var err error
		if revs, _, err = listRevisionDeployments(ctx, v.Reader, fn); err != nil {
			return admission.Allowed("").WithWarnings(fmt.Sprintf(
				"revision names in spec.traffic were not checked (%v); status.conditions will report a revision that does not exist", err))
		}
	}
	if msg := checkRevisionNames(fn, old, revs); msg != "" {
		return admission.Denied(msg)
	}
	return admission.Allowed("")
}

// checkRevisionNames returns why fn (replacing old, nil on create) is refused, or "". revs
// are the function's revision Deployments, newest first.
func checkRevisionNames(fn, old *meshv1alpha1.MeshFunction, revs []revision) string {
	known := map[string]bool{}
	var names []string
	for _, rv := range revs {
		known[rv.name] = true
		names = append(names, rv.name)
	}
	if old != nil {
		for _, rs := range old.Status.Revisions {
			if !known[rs.Name] {
				known[rs.Name] = true
				names = append(names, rs.Name)
			}
		}
	}
	next, number, _, creates := nextRevision(fn, revs)
	if creates && known[next] {
		// Only a user-given name can collide (generated numbers only grow), and the
		// reconciler would refuse it in status: revisions are immutable.
		return fmt.Sprintf("spec.template.metadata.name: %q is already a revision of MeshFunction %s/%s, and spec.template differs from its newest revision's; "+
			"revisions are immutable, so a changed template needs a new name (or remove the name to get %s). "+
			"To roll back to %s, keep the template and send its traffic there: spec.traffic: [{revisionName: %s, percent: 100}]",
			next, fn.Namespace, fn.Name, RevisionName(fn.Name, number), next, next)
	}
	routedBefore := map[string]bool{}
	if old != nil {
		for _, t := range old.Spec.Traffic {
			routedBefore[t.RevisionName] = true
		}
	}
	var problems []string
	for i, t := range fn.Spec.Traffic {
		if t.RevisionName == "" || known[t.RevisionName] || routedBefore[t.RevisionName] || (creates && t.RevisionName == next) {
			continue
		}
		problems = append(problems, fmt.Sprintf("spec.traffic[%d].revisionName: MeshFunction %s/%s has no revision %q", i, fn.Namespace, fn.Name, t.RevisionName))
	}
	if len(problems) == 0 {
		return ""
	}
	have := "it has no revisions yet"
	if len(names) > 0 {
		have = "its revisions are " + strings.Join(names, ", ")
	}
	if creates {
		have += "; this change creates " + next
	}
	return strings.Join(problems, "; ") + " (" + have + "). Name one of those, or send the share to latestRevision: true; " +
		"to name the revision a template change creates, set spec.template.metadata.name"
}
