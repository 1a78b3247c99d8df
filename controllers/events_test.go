package controllers

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/events"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/snapshot"
	"github.com/weftmesh/weft/internal/xds"
)

// drain returns "type reason" of every event recorded so far.
func drain(rec *events.FakeRecorder) []string {
	var out []string
	for {
		select {
		case e := <-rec.Events:
			f := strings.Fields(e)
			out = append(out, f[0]+" "+f[1])
		default:
			return out
		}
	}
}

// Events follow transitions, never reconciles (issue 13: no events at all before; an event
// per pass would be spam).
func TestEmitTransitions(t *testing.T) {
	rec := events.NewFakeRecorder(32)
	obj := &meshv1alpha1.MeshRoute{}
	st := &meshv1alpha1.MeshStatus{}
	step := func(gen int64, tr snapshot.ObjectStatus, s xds.SyncStatus) []string {
		before := append([]metav1.Condition(nil), st.Conditions...)
		applyStatus(st, "MeshRoute", gen, tr, s)
		emitTransitions(rec, obj, before, st.Conditions)
		return drain(rec)
	}
	withWarning := func(tr snapshot.ObjectStatus, c metav1.Condition) snapshot.ObjectStatus {
		out := snapshot.ObjectStatus{Conditions: append([]metav1.Condition(nil), tr.Conditions...)}
		meta.SetStatusCondition(&out.Conditions, c)
		return out
	}
	for i, s := range []struct {
		gen  int64
		tr   snapshot.ObjectStatus
		sync xds.SyncStatus
		want []string
	}{
		{1, acceptedStatus, xds.SyncStatus{Subscribed: 2, Synced: 1}, []string{"Normal Accepted"}}, // Pending: nothing yet
		{1, acceptedStatus, xds.SyncStatus{Subscribed: 2, Synced: 2}, []string{"Normal Programmed"}},
		{1, acceptedStatus, xds.SyncStatus{Subscribed: 2, Synced: 2}, nil}, // a pass with no change
		{2, acceptedStatus, xds.SyncStatus{Subscribed: 2, Synced: 2}, []string{"Normal Programmed"}},
		{2, acceptedStatus, xds.SyncStatus{Subscribed: 2, Synced: 1, Rejected: 1, LastRejection: "x"}, []string{"Warning Rejected"}},
		{3, withWarning(acceptedStatus, cond(meshv1alpha1.ConditionAccepted, metav1.ConditionFalse, meshv1alpha1.ReasonHostConflict)),
			xds.SyncStatus{Subscribed: 2, Synced: 2}, []string{"Warning HostConflict", "Warning NotAccepted"}},
		{3, withWarning(acceptedStatus, cond(meshv1alpha1.ConditionAccepted, metav1.ConditionFalse, meshv1alpha1.ReasonHostConflict)),
			xds.SyncStatus{Subscribed: 2, Synced: 2}, nil},
		{4, withWarning(acceptedStatus, cond(meshv1alpha1.ConditionWarning, metav1.ConditionTrue, meshv1alpha1.ReasonShadowedRule)),
			xds.SyncStatus{Subscribed: 2, Synced: 2}, []string{"Normal Accepted", "Normal Programmed", "Warning ShadowedRule"}},
	} {
		got := step(s.gen, s.tr, s.sync)
		if strings.Join(got, ",") != strings.Join(s.want, ",") {
			t.Errorf("step %d: events %q, want %q", i, got, s.want)
		}
	}
}
