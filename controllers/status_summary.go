package controllers

import (
	"strconv"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
)

// stalledReasons are the reasons, on any input condition, that need a user's change: kstatus
// turns them into Failed through Stalled=True. Everything else that is not True is progress
// (Reconciling=True) or waiting (Ready=False), which kstatus reads as InProgress.
var stalledReasons = map[string]bool{
	meshv1alpha1.ReasonInvalid:         true,
	meshv1alpha1.ReasonHostConflict:    true,
	meshv1alpha1.ReasonNameConflict:    true,
	meshv1alpha1.ReasonNotAllowedHosts: true,
	meshv1alpha1.ReasonRefNotPermitted: true,
	meshv1alpha1.ReasonBackendNotFound: true,
	meshv1alpha1.ReasonSecretNotFound:  true,
	meshv1alpha1.ReasonRejected:        true,
	meshv1alpha1.ReasonRevisionMissing: true,
	meshv1alpha1.ReasonHostNotFound:    true,
	meshv1alpha1.ReasonTargetNotFound:  true,
}

// reconcilingReasons are the reasons that mean Weft is still working: sidecars have not
// ACKed yet, pods are starting, or the other writer of the status has not written its part.
var reconcilingReasons = map[string]bool{
	meshv1alpha1.ReasonPending:       true,
	meshv1alpha1.ReasonDeploying:     true,
	meshv1alpha1.ReasonStatusPending: true,
}

// summaryInputs are the conditions Ready sums up for each kind, in the order their failures
// are reported: the first one that is not True names Ready's reason.
var summaryInputs = map[string][]string{
	"MeshRoute":    {meshv1alpha1.ConditionAccepted, meshv1alpha1.ConditionResolvedRefs, meshv1alpha1.ConditionProgrammed},
	"MeshFunction": {meshv1alpha1.ConditionAccepted, meshv1alpha1.ConditionResolvedRefs, meshv1alpha1.ConditionProgrammed, meshv1alpha1.ConditionAvailable},
	"RedisProxy":   {meshv1alpha1.ConditionAccepted, meshv1alpha1.ConditionResolvedRefs, meshv1alpha1.ConditionProgrammed, meshv1alpha1.ConditionAvailable},
	"MeshPolicy":   {meshv1alpha1.ConditionAccepted, meshv1alpha1.ConditionResolvedRefs, meshv1alpha1.ConditionProgrammed},
}

// summarize sets Ready, Stalled and Reconciling from the kind's other conditions, all at
// generation gen. Ready is True only when every input is True at gen; its reason is then the
// last input's (so a function at zero reads Ready=True ScaledToZero). Otherwise Ready is False
// with the reason and message of the first input that is not True, and that reason decides
// between Stalled=True (a user must change something) and Reconciling=True (Weft is working).
// An input that is missing, or written for an older generation, counts as StatusPending: a
// MeshFunction's status has two writers, and neither may call it Ready alone.
func summarize(conds *[]metav1.Condition, kind string, gen int64) {
	ready := metav1.Condition{Type: meshv1alpha1.ConditionReady, Status: metav1.ConditionTrue, ObservedGeneration: gen}
	var failing *metav1.Condition
	for _, typ := range summaryInputs[kind] {
		c := meta.FindStatusCondition(*conds, typ)
		if c == nil || c.ObservedGeneration != gen {
			failing = &metav1.Condition{Type: typ, Status: metav1.ConditionUnknown, Reason: meshv1alpha1.ReasonStatusPending,
				Message: typ + " has not been computed for generation " + strconv.FormatInt(gen, 10) + " yet."}
			break
		}
		if c.Status != metav1.ConditionTrue {
			failing = c
			break
		}
		ready.Reason, ready.Message = c.Reason, c.Message
	}
	stalled := metav1.Condition{Type: meshv1alpha1.ConditionStalled, Status: metav1.ConditionFalse, ObservedGeneration: gen,
		Reason: meshv1alpha1.ReasonReady, Message: "Nothing needs a change."}
	reconciling := metav1.Condition{Type: meshv1alpha1.ConditionReconciling, Status: metav1.ConditionFalse, ObservedGeneration: gen,
		Reason: meshv1alpha1.ReasonReady, Message: "Nothing is in progress."}
	if failing != nil {
		ready.Status, ready.Reason, ready.Message = metav1.ConditionFalse, failing.Reason, failing.Type+": "+failing.Message
		switch {
		case stalledReasons[failing.Reason]:
			stalled.Status, stalled.Reason, stalled.Message = metav1.ConditionTrue, failing.Reason, ready.Message
		case reconcilingReasons[failing.Reason]:
			reconciling.Status, reconciling.Reason, reconciling.Message = metav1.ConditionTrue, failing.Reason, ready.Message
		}
	}
	for _, c := range []metav1.Condition{ready, stalled, reconciling} {
		setCondition(conds, c)
	}
}

// setCondition is meta.SetStatusCondition that never writes an empty reason (the API server
// refuses one).
func setCondition(conds *[]metav1.Condition, c metav1.Condition) {
	if c.Reason == "" {
		c.Reason = meshv1alpha1.ReasonReady
	}
	meta.SetStatusCondition(conds, c)
}
