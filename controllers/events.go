package controllers

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/events"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
)

// Event actions (events.k8s.io/v1 `action`: what Weft was doing when it happened).
const (
	actionTranslate = "Translate"
	actionProgram   = "Program"
	actionScale     = "Scale"
	actionRender    = "Render"
)

// Event reasons beyond the condition reasons (which events reuse).
const (
	eventScaledFromZero = "ScaledFromZero"
	// eventHandoff: the last pod went after every caller ACKed the draining snapshot (the
	// Available=True ScaledToZero transition that follows has its own event).
	eventHandoff        = "HandoffComplete"
	eventHandoffTimeout = "HandoffTimedOut"
)

// emit records an event when a recorder is set (tests may leave it nil).
func emit(rec events.EventRecorder, obj runtime.Object, typ, reason, action, note string, args ...any) {
	if rec == nil {
		return
	}
	rec.Eventf(obj, nil, typ, reason, action, note, args...)
}

// eventedConditions are the conditions whose transitions become events, with the action
// that set them.
var eventedConditions = []struct{ typ, action string }{
	{meshv1alpha1.ConditionAccepted, actionTranslate},
	{meshv1alpha1.ConditionResolvedRefs, actionTranslate},
	{meshv1alpha1.ConditionProgrammed, actionProgram},
	{meshv1alpha1.ConditionWarning, actionTranslate},
	{meshv1alpha1.ConditionAvailable, actionRender},
}

// emitTransitions records one event per condition whose status or reason changed between
// before and after (and for Programmed=True, per newly programmed generation): events follow
// transitions, never reconciles. Good news is Normal; everything else is Warning.
// Reconciling-type states (Pending, Deploying) and a Warning condition going back to False
// record nothing: they are on the way somewhere and the next transition says where.
func emitTransitions(rec events.EventRecorder, obj runtime.Object, before, after []metav1.Condition) {
	if rec == nil {
		return
	}
	for _, ec := range eventedConditions {
		a := meta.FindStatusCondition(after, ec.typ)
		if a == nil {
			continue
		}
		b := meta.FindStatusCondition(before, ec.typ)
		same := b != nil && b.Status == a.Status && b.Reason == a.Reason
		if same && !(ec.typ == meshv1alpha1.ConditionProgrammed && a.Status == metav1.ConditionTrue && b.ObservedGeneration != a.ObservedGeneration) {
			continue
		}
		if reconcilingReasons[a.Reason] {
			continue
		}
		good := a.Status == metav1.ConditionTrue
		if good && ec.typ == meshv1alpha1.ConditionResolvedRefs && (b == nil || b.Status == metav1.ConditionTrue) {
			continue // references resolving is news only after they did not
		}
		if ec.typ == meshv1alpha1.ConditionWarning {
			if !good {
				continue
			}
			good = false
		}
		typ := corev1.EventTypeNormal
		if !good {
			typ = corev1.EventTypeWarning
		}
		rec.Eventf(obj, nil, typ, a.Reason, ec.action, "%s", truncateNote(fmt.Sprintf("%s=%s: %s", a.Type, a.Status, a.Message)))
	}
}

// maxNote is the events.k8s.io/v1 limit on an event's note (1 kB).
const maxNote = 1024

func truncateNote(s string) string {
	if len(s) <= maxNote {
		return s
	}
	return s[:maxNote-3] + "..."
}

// onlyType returns the conditions of type typ (none or one).
func onlyType(conds []metav1.Condition, typ string) []metav1.Condition {
	if c := meta.FindStatusCondition(conds, typ); c != nil {
		return []metav1.Condition{*c}
	}
	return nil
}
