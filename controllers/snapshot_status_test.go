package controllers

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	kstatus "sigs.k8s.io/cli-utils/pkg/kstatus/status"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/snapshot"
	"github.com/weftmesh/weft/internal/xds"
)

func cond(typ string, s metav1.ConditionStatus, reason string) metav1.Condition {
	return metav1.Condition{Type: typ, Status: s, Reason: reason, Message: typ + " " + reason}
}

var acceptedStatus = snapshot.ObjectStatus{Generation: 2, Conditions: []metav1.Condition{
	cond(meshv1alpha1.ConditionAccepted, metav1.ConditionTrue, meshv1alpha1.ReasonAccepted),
	cond(meshv1alpha1.ConditionResolvedRefs, metav1.ConditionTrue, meshv1alpha1.ReasonResolvedRefs),
}}

// applyStatus is pure: these run without the envtest suite.
func TestApplyStatus(t *testing.T) {
	st := &meshv1alpha1.MeshStatus{Conditions: []metav1.Condition{
		{Type: meshv1alpha1.ConditionAvailable, Status: metav1.ConditionTrue, Reason: meshv1alpha1.ReasonReady, Message: "owned by another controller", ObservedGeneration: 2},
	}}
	if !applyStatus(st, "MeshFunction", 2, acceptedStatus, xds.SyncStatus{Subscribed: 3, Synced: 1}) {
		t.Fatal("first apply reported no change")
	}
	p := meta.FindStatusCondition(st.Conditions, meshv1alpha1.ConditionProgrammed)
	if p == nil || p.Status != metav1.ConditionFalse || p.Reason != meshv1alpha1.ReasonPending || p.ObservedGeneration != 2 {
		t.Errorf("Programmed = %+v, want False/Pending at generation 2", p)
	}
	if meta.FindStatusCondition(st.Conditions, meshv1alpha1.ConditionAvailable) == nil {
		t.Error("another controller's Available condition was dropped")
	}
	if !meta.IsStatusConditionTrue(st.Conditions, meshv1alpha1.ConditionReconciling) || meta.IsStatusConditionTrue(st.Conditions, meshv1alpha1.ConditionReady) {
		t.Errorf("while sidecars ACK: want Reconciling=True, Ready not True; got %+v", st.Conditions)
	}
	if st.ObservedGeneration != 2 || st.SyncedSidecars != 1 {
		t.Errorf("status = %+v", st)
	}
	if applyStatus(st, "MeshFunction", 2, acceptedStatus, xds.SyncStatus{Subscribed: 3, Synced: 1}) {
		t.Error("applying the same status again reported a change: every pass would write")
	}
	applyStatus(st, "MeshFunction", 2, acceptedStatus, xds.SyncStatus{Subscribed: 3, Synced: 2, Rejected: 1, LastRejection: "a.ns: bad"})
	p = meta.FindStatusCondition(st.Conditions, meshv1alpha1.ConditionProgrammed)
	if p.Reason != meshv1alpha1.ReasonRejected || !strings.Contains(p.Message, "1 of 3 sidecars rejected") || !strings.Contains(p.Message, "a.ns: bad") {
		t.Errorf("Programmed = %+v", p)
	}
	if s := meta.FindStatusCondition(st.Conditions, meshv1alpha1.ConditionStalled); s.Status != metav1.ConditionTrue || s.Reason != meshv1alpha1.ReasonRejected {
		t.Errorf("a rejecting sidecar: Stalled = %+v, want True/Rejected", s)
	}
	if st.RejectedSidecars != 1 || st.LastRejection != "a.ns: bad" {
		t.Errorf("status = %+v", st)
	}
	applyStatus(st, "MeshFunction", 2, acceptedStatus, xds.SyncStatus{Subscribed: 3, Synced: 3})
	if p = meta.FindStatusCondition(st.Conditions, meshv1alpha1.ConditionProgrammed); p.Status != metav1.ConditionTrue || st.LastRejection != "" {
		t.Errorf("after every sidecar ACKed: Programmed = %+v, lastRejection %q", p, st.LastRejection)
	}
	if !meta.IsStatusConditionTrue(st.Conditions, meshv1alpha1.ConditionReady) {
		t.Errorf("accepted, resolved, programmed and available: Ready = %+v", meta.FindStatusCondition(st.Conditions, meshv1alpha1.ConditionReady))
	}
}

// Issue 13: Programmed=True was written while Accepted=False.
func TestProgrammedNeverTrueWhileNotAccepted(t *testing.T) {
	rejected := snapshot.ObjectStatus{Generation: 1, Conditions: []metav1.Condition{
		cond(meshv1alpha1.ConditionAccepted, metav1.ConditionFalse, meshv1alpha1.ReasonHostConflict),
		cond(meshv1alpha1.ConditionResolvedRefs, metav1.ConditionTrue, meshv1alpha1.ReasonResolvedRefs),
	}}
	st := &meshv1alpha1.MeshStatus{}
	applyStatus(st, "MeshRoute", 1, rejected, xds.SyncStatus{Subscribed: 2, Synced: 2})
	p := meta.FindStatusCondition(st.Conditions, meshv1alpha1.ConditionProgrammed)
	if p.Status != metav1.ConditionFalse || p.Reason != meshv1alpha1.ReasonNotAccepted {
		t.Errorf("Programmed = %+v, want False/NotAccepted", p)
	}
	r := meta.FindStatusCondition(st.Conditions, meshv1alpha1.ConditionReady)
	s := meta.FindStatusCondition(st.Conditions, meshv1alpha1.ConditionStalled)
	if r.Status != metav1.ConditionFalse || r.Reason != meshv1alpha1.ReasonHostConflict || s.Status != metav1.ConditionTrue || s.Reason != meshv1alpha1.ReasonHostConflict {
		t.Errorf("Ready = %+v, Stalled = %+v; want False/True with reason HostConflict", r, s)
	}
}

// TestSummarize pins Ready, Stalled and Reconciling for each kind and state.
func TestSummarize(t *testing.T) {
	T, F := metav1.ConditionTrue, metav1.ConditionFalse
	ok := []metav1.Condition{
		cond(meshv1alpha1.ConditionAccepted, T, meshv1alpha1.ReasonAccepted),
		cond(meshv1alpha1.ConditionResolvedRefs, T, meshv1alpha1.ReasonResolvedRefs),
		cond(meshv1alpha1.ConditionProgrammed, T, meshv1alpha1.ReasonProgrammed),
	}
	with := func(cs ...metav1.Condition) []metav1.Condition {
		out := append([]metav1.Condition(nil), ok...)
		for _, c := range cs {
			meta.SetStatusCondition(&out, c)
		}
		return out
	}
	for name, tc := range map[string]struct {
		// inputs
		kind  string
		conds []metav1.Condition
		// outputs: Ready's status and reason, Stalled, Reconciling
		ready       metav1.ConditionStatus
		reason      string
		stalled     bool
		reconciling bool
	}{
		"route ready":            {"MeshRoute", ok, T, meshv1alpha1.ReasonProgrammed, false, false},
		"route invalid":          {"MeshRoute", with(cond(meshv1alpha1.ConditionAccepted, F, meshv1alpha1.ReasonInvalid)), F, meshv1alpha1.ReasonInvalid, true, false},
		"route hosts refused":    {"MeshRoute", with(cond(meshv1alpha1.ConditionAccepted, F, meshv1alpha1.ReasonNotAllowedHosts)), F, meshv1alpha1.ReasonNotAllowedHosts, true, false},
		"route ref refused":      {"MeshRoute", with(cond(meshv1alpha1.ConditionResolvedRefs, F, meshv1alpha1.ReasonRefNotPermitted)), F, meshv1alpha1.ReasonRefNotPermitted, true, false},
		"route backend missing":  {"MeshRoute", with(cond(meshv1alpha1.ConditionResolvedRefs, F, meshv1alpha1.ReasonBackendNotFound)), F, meshv1alpha1.ReasonBackendNotFound, true, false},
		"route pending":          {"MeshRoute", with(cond(meshv1alpha1.ConditionProgrammed, F, meshv1alpha1.ReasonPending)), F, meshv1alpha1.ReasonPending, false, true},
		"route no status":        {"MeshRoute", nil, F, meshv1alpha1.ReasonStatusPending, false, true},
		"function at zero":       {"MeshFunction", with(cond(meshv1alpha1.ConditionAvailable, T, meshv1alpha1.ReasonScaledToZero)), T, meshv1alpha1.ReasonScaledToZero, false, false},
		"function deploying":     {"MeshFunction", with(cond(meshv1alpha1.ConditionAvailable, F, meshv1alpha1.ReasonDeploying)), F, meshv1alpha1.ReasonDeploying, false, true},
		"function name taken":    {"MeshFunction", with(cond(meshv1alpha1.ConditionAvailable, F, meshv1alpha1.ReasonNameConflict)), F, meshv1alpha1.ReasonNameConflict, true, false},
		"function half written":  {"MeshFunction", ok, F, meshv1alpha1.ReasonStatusPending, false, true},
		"pool secret missing":    {"RedisProxy", with(cond(meshv1alpha1.ConditionResolvedRefs, F, meshv1alpha1.ReasonSecretNotFound), cond(meshv1alpha1.ConditionAvailable, T, meshv1alpha1.ReasonReady)), F, meshv1alpha1.ReasonSecretNotFound, true, false},
		"pool listener conflict": {"RedisProxy", with(cond(meshv1alpha1.ConditionAccepted, F, meshv1alpha1.ReasonHostConflict), cond(meshv1alpha1.ConditionAvailable, T, meshv1alpha1.ReasonReady)), F, meshv1alpha1.ReasonHostConflict, true, false},
		"pool no servers":        {"RedisProxy", with(cond(meshv1alpha1.ConditionAvailable, F, meshv1alpha1.ReasonNoServers)), F, meshv1alpha1.ReasonNoServers, false, false},
		"pool ready":             {"RedisProxy", with(cond(meshv1alpha1.ConditionAvailable, T, meshv1alpha1.ReasonReady)), T, meshv1alpha1.ReasonReady, false, false},
	} {
		t.Run(name, func(t *testing.T) {
			conds := append([]metav1.Condition(nil), tc.conds...)
			for i := range conds {
				conds[i].ObservedGeneration = 4
			}
			summarize(&conds, tc.kind, 4)
			r := meta.FindStatusCondition(conds, meshv1alpha1.ConditionReady)
			if r.Status != tc.ready || r.Reason != tc.reason || r.ObservedGeneration != 4 {
				t.Errorf("Ready = %s/%s at %d, want %s/%s at 4", r.Status, r.Reason, r.ObservedGeneration, tc.ready, tc.reason)
			}
			if got := meta.IsStatusConditionTrue(conds, meshv1alpha1.ConditionStalled); got != tc.stalled {
				t.Errorf("Stalled = %v, want %v", got, tc.stalled)
			}
			if got := meta.IsStatusConditionTrue(conds, meshv1alpha1.ConditionReconciling); got != tc.reconciling {
				t.Errorf("Reconciling = %v, want %v", got, tc.reconciling)
			}
			// What kstatus makes of it (the envtest suite does the same on live objects).
			want := kstatus.InProgressStatus
			switch {
			case tc.stalled:
				want = kstatus.FailedStatus
			case tc.ready == T:
				want = kstatus.CurrentStatus
			}
			raw, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&meshv1alpha1.MeshRoute{
				ObjectMeta: metav1.ObjectMeta{Name: "x", Generation: 4},
				Status:     meshv1alpha1.MeshRouteStatus{MeshStatus: meshv1alpha1.MeshStatus{ObservedGeneration: 4, Conditions: conds}},
			})
			if err != nil {
				t.Fatal(err)
			}
			res, err := kstatus.Compute(&unstructured.Unstructured{Object: raw})
			if err != nil || res.Status != want {
				t.Errorf("kstatus = %v (%v), want %s", res, err, want)
			}
		})
	}
	// A condition written for an older generation does not count.
	conds := with(cond(meshv1alpha1.ConditionAvailable, T, meshv1alpha1.ReasonReady))
	for i := range conds {
		conds[i].ObservedGeneration = 4
	}
	conds[2].ObservedGeneration = 3
	summarize(&conds, "RedisProxy", 4)
	if meta.IsStatusConditionTrue(conds, meshv1alpha1.ConditionReady) {
		t.Error("Ready=True with Programmed from generation 3 at generation 4")
	}
}

func TestPoolAvailable(t *testing.T) {
	if c := poolAvailable(3, 3, 2); c.Status != metav1.ConditionTrue || c.ObservedGeneration != 3 {
		t.Fatalf("2 of 3 ready: %+v", c)
	}
	if c := poolAvailable(3, 3, 0); c.Status != metav1.ConditionFalse || c.Reason != meshv1alpha1.ReasonNoServers || !strings.Contains(c.Message, "None of the 3 servers") {
		t.Fatalf("with no ready server got %+v", c)
	}
}
