package controllers

import (
	"fmt"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/snapshot"
	"github.com/weftmesh/weft/internal/xds"
)

// programmed is the Programmed condition: whether the sidecars that receive the object run
// the snapshot holding its current generation.
func programmed(gen int64, s xds.SyncStatus) metav1.Condition {
	c := metav1.Condition{Type: meshv1alpha1.ConditionProgrammed}
	switch {
	case s.Rejected > 0:
		c.Status, c.Reason = metav1.ConditionFalse, meshv1alpha1.ReasonRejected
		c.Message = fmt.Sprintf("%d of %d sidecars rejected the snapshot holding generation %d; last rejection: %s. "+
			"Fix the field the error names (or upgrade the sidecars); they keep serving their previous configuration meanwhile.",
			s.Rejected, s.Subscribed, gen, s.LastRejection)
	case s.Synced == s.Subscribed:
		c.Status, c.Reason = metav1.ConditionTrue, meshv1alpha1.ReasonProgrammed
		c.Message = fmt.Sprintf("Generation %d is in the xDS snapshot; all %d sidecars that receive it have ACKed it.", gen, s.Subscribed)
	default:
		c.Status, c.Reason = metav1.ConditionFalse, meshv1alpha1.ReasonPending
		c.Message = fmt.Sprintf("Generation %d is in the xDS snapshot; %d of %d sidecars have ACKed it so far.", gen, s.Synced, s.Subscribed)
	}
	return c
}

// applyStatus sets the snapshot reconciler's part of a status (Accepted, ResolvedRefs,
// Programmed, any kind-specific conditions in extra, observedGeneration and the sidecar
// counts), then the Ready/Stalled/Reconciling summary, and reports whether anything changed,
// so unchanged objects are never written. Conditions other controllers own are kept.
// Programmed is never True while Accepted is False: what is not accepted is not (all)
// programmed.
func applyStatus(st *meshv1alpha1.MeshStatus, kind string, gen int64, tr snapshot.ObjectStatus, s xds.SyncStatus, extra ...metav1.Condition) bool {
	before := st.DeepCopy()
	prog := programmed(gen, s)
	for _, c := range tr.Conditions {
		if c.Type == meshv1alpha1.ConditionAccepted && c.Status != metav1.ConditionTrue {
			prog.Status, prog.Reason = metav1.ConditionFalse, meshv1alpha1.ReasonNotAccepted
			prog.Message = fmt.Sprintf("Generation %d is not accepted (see Accepted), so it is not programmed as written.", gen)
		}
	}
	conds := append(append(append([]metav1.Condition(nil), tr.Conditions...), prog), extra...)
	for _, c := range conds {
		c.ObservedGeneration = gen
		meta.SetStatusCondition(&st.Conditions, c)
	}
	summarize(&st.Conditions, kind, gen)
	st.ObservedGeneration = gen
	st.SyncedSidecars, st.RejectedSidecars, st.LastRejection = s.Synced, s.Rejected, s.LastRejection
	return !equality.Semantic.DeepEqual(before, st)
}

// poolAvailable is a RedisProxy's Available condition: whether a server of its pool has a
// ready endpoint.
func poolAvailable(gen int64, total, ready int32) metav1.Condition {
	c := metav1.Condition{Type: meshv1alpha1.ConditionAvailable, ObservedGeneration: gen}
	switch {
	case ready > 0:
		c.Status, c.Reason = metav1.ConditionTrue, meshv1alpha1.ReasonReady
		c.Message = fmt.Sprintf("%d of %d servers have a ready endpoint.", ready, total)
	case total == 0:
		c.Status, c.Reason = metav1.ConditionFalse, meshv1alpha1.ReasonNoServers
		c.Message = "The pool has no servers: check spec.servers, or that spec.serviceRef names a Service with ready pods."
	default:
		c.Status, c.Reason = metav1.ConditionFalse, meshv1alpha1.ReasonNoServers
		c.Message = fmt.Sprintf("None of the %d servers has a ready endpoint: check the Redis pods.", total)
	}
	return c
}
