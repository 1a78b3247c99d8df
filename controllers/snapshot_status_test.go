package controllers

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/snapshot"
	"github.com/weftmesh/weft/internal/xds"
)

// applyStatus is pure: these run without the envtest suite.
func TestApplyStatus(t *testing.T) {
	accepted := snapshot.ObjectStatus{Generation: 2, Conditions: []metav1.Condition{
		{Type: meshv1alpha1.ConditionAccepted, Status: metav1.ConditionTrue, Reason: meshv1alpha1.ReasonAccepted, Message: "ok"},
		{Type: meshv1alpha1.ConditionResolvedRefs, Status: metav1.ConditionTrue, Reason: meshv1alpha1.ReasonResolvedRefs, Message: "ok"},
	}}
	st := &meshv1alpha1.MeshStatus{Conditions: []metav1.Condition{
		{Type: meshv1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: meshv1alpha1.ReasonReady, Message: "owned by another controller"},
	}}
	if !applyStatus(st, 2, accepted, xds.SyncStatus{Subscribed: 3, Synced: 1}) {
		t.Fatal("first apply reported no change")
	}
	p := meta.FindStatusCondition(st.Conditions, meshv1alpha1.ConditionProgrammed)
	if p == nil || p.Status != metav1.ConditionFalse || p.Reason != meshv1alpha1.ReasonPending || p.ObservedGeneration != 2 {
		t.Errorf("Programmed = %+v, want False/Pending at generation 2", p)
	}
	if meta.FindStatusCondition(st.Conditions, meshv1alpha1.ConditionReady) == nil {
		t.Error("another controller's Ready condition was dropped")
	}
	if st.ObservedGeneration != 2 || st.SyncedSidecars != 1 {
		t.Errorf("status = %+v", st)
	}
	if applyStatus(st, 2, accepted, xds.SyncStatus{Subscribed: 3, Synced: 1}) {
		t.Error("applying the same status again reported a change: every pass would write")
	}
	applyStatus(st, 2, accepted, xds.SyncStatus{Subscribed: 3, Synced: 2, Rejected: 1, LastRejection: "a.ns: bad"})
	p = meta.FindStatusCondition(st.Conditions, meshv1alpha1.ConditionProgrammed)
	if p.Reason != meshv1alpha1.ReasonRejected || !strings.Contains(p.Message, "1 of 3 sidecars rejected") || !strings.Contains(p.Message, "a.ns: bad") {
		t.Errorf("Programmed = %+v", p)
	}
	if st.RejectedSidecars != 1 || st.LastRejection != "a.ns: bad" {
		t.Errorf("status = %+v", st)
	}
	applyStatus(st, 2, accepted, xds.SyncStatus{Subscribed: 3, Synced: 3})
	if p = meta.FindStatusCondition(st.Conditions, meshv1alpha1.ConditionProgrammed); p.Status != metav1.ConditionTrue || st.LastRejection != "" {
		t.Errorf("after every sidecar ACKed: Programmed = %+v, lastRejection %q", p, st.LastRejection)
	}
}

func TestApplyPoolStatus(t *testing.T) {
	var st meshv1alpha1.RedisProxyStatus
	if !applyPoolStatus(&st, 3, 3, 2) {
		t.Fatal("first pool status reported no change")
	}
	c := meta.FindStatusCondition(st.Conditions, meshv1alpha1.ConditionReady)
	if st.Servers != 3 || st.ReadyServers != 2 || c == nil || c.Status != metav1.ConditionTrue || c.ObservedGeneration != 3 {
		t.Fatalf("got servers=%d ready=%d condition=%+v; want 3, 2, Ready=True at generation 3", st.Servers, st.ReadyServers, c)
	}
	if applyPoolStatus(&st, 3, 3, 2) {
		t.Error("same counts reported a change: the reconciler would write status for nothing")
	}
	applyPoolStatus(&st, 3, 3, 0)
	c = meta.FindStatusCondition(st.Conditions, meshv1alpha1.ConditionReady)
	if c.Status != metav1.ConditionFalse || c.Reason != meshv1alpha1.ReasonNoServers || !strings.Contains(c.Message, "None of the 3 servers") {
		t.Fatalf("with no ready server got %+v", c)
	}
}
