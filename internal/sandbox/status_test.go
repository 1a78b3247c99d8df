package sandbox

import (
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

func TestStatus(t *testing.T) {
	a := &Agent{hostIP: "10.244.0.1"}
	mk := func(states ...*containerState) *podRuntime {
		return &podRuntime{a: a, pod: &corev1.Pod{}, net: &PodNet{IP: netip.MustParseAddr("10.244.0.9")}, started: time.Unix(100, 0), containers: states}
	}
	cond := func(st corev1.PodStatus, ct corev1.PodConditionType) corev1.ConditionStatus {
		for _, c := range st.Conditions {
			if c.Type == ct {
				return c.Status
			}
		}
		return ""
	}
	running := func(ready bool) *containerState {
		return &containerState{spec: corev1.Container{Name: "c", Image: "weft.dev/examples/echo:1"}, running: true, everRan: true, ready: ready, pid: 42, startedAt: time.Unix(200, 0)}
	}
	for _, tc := range []struct {
		name      string
		rt        *podRuntime
		phase     corev1.PodPhase
		ready     corev1.ConditionStatus
		waitingOn string
	}{
		{"all ready", mk(running(true), running(true)), corev1.PodRunning, corev1.ConditionTrue, ""},
		{"one not ready", mk(running(true), running(false)), corev1.PodRunning, corev1.ConditionFalse, ""},
		{"image not mapped", mk(running(true), &containerState{spec: corev1.Container{Name: "x"}, waiting: "ErrImagePull"}), corev1.PodPending, corev1.ConditionFalse, "ErrImagePull"},
		{"terminating", func() *podRuntime { r := mk(running(true)); r.stopping = true; return r }(), corev1.PodRunning, corev1.ConditionFalse, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := tc.rt.status(corev1.PodStatus{})
			if st.Phase != tc.phase || cond(st, corev1.PodReady) != tc.ready || cond(st, corev1.ContainersReady) != tc.ready {
				t.Errorf("phase %s Ready %s ContainersReady %s, want %s/%s", st.Phase, cond(st, corev1.PodReady), cond(st, corev1.ContainersReady), tc.phase, tc.ready)
			}
			if st.PodIP != "10.244.0.9" || st.HostIP != "10.244.0.1" || len(st.PodIPs) != 1 {
				t.Errorf("podIP %s hostIP %s podIPs %v", st.PodIP, st.HostIP, st.PodIPs)
			}
			if tc.waitingOn != "" {
				w := st.ContainerStatuses[1].State.Waiting
				if w == nil || w.Reason != tc.waitingOn {
					t.Errorf("second container state %+v, want waiting %s", st.ContainerStatuses[1].State, tc.waitingOn)
				}
			}
		})
	}
	// An unchanged condition keeps its transition time, so status writes are no-ops.
	rt := mk(running(true))
	first := rt.status(corev1.PodStatus{})
	first.Conditions[3].LastTransitionTime.Time = time.Unix(5, 0)
	if again := rt.status(first); !again.Conditions[3].LastTransitionTime.Time.Equal(time.Unix(5, 0)) {
		t.Errorf("Ready transition time moved to %v without a transition", again.Conditions[3].LastTransitionTime)
	}
}
