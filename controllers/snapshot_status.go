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

// applyStatus sets the snapshot reconciler's part of a status (its three conditions,
// observedGeneration and the sidecar counts) and reports whether anything changed, so
// unchanged objects are never written. Conditions other controllers own are kept.
func applyStatus(st *meshv1alpha1.MeshStatus, gen int64, tr snapshot.ObjectStatus, s xds.SyncStatus) bool {
	before := st.DeepCopy()
	conds := append(append([]metav1.Condition(nil), tr.Conditions...), programmed(gen, s))
	for _, c := range conds {
		c.ObservedGeneration = gen
		meta.SetStatusCondition(&st.Conditions, c)
	}
	st.ObservedGeneration = gen
	st.SyncedSidecars, st.RejectedSidecars, st.LastRejection = s.Synced, s.Rejected, s.LastRejection
	return !equality.Semantic.DeepEqual(before, st)
}

// applyPoolStatus sets a RedisProxy's server counts and its Ready condition, and reports
// whether anything changed.
func applyPoolStatus(st *meshv1alpha1.RedisProxyStatus, gen int64, total, ready int32) bool {
	before := st.DeepCopy()
	st.Servers, st.ReadyServers = total, ready
	c := metav1.Condition{Type: meshv1alpha1.ConditionReady, ObservedGeneration: gen}
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
	meta.SetStatusCondition(&st.Conditions, c)
	return !equality.Semantic.DeepEqual(before, st)
}
