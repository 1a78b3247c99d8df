package sandbox

import (
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func metaTime(t time.Time) metav1.Time { return metav1.NewTime(t.Truncate(time.Second)) }

func threshold(v, def int32) int {
	if v <= 0 {
		return int(def)
	}
	return int(v)
}

// status is the Pod status the runtime's state implies: phase Running once every container
// has started, Ready when every container is running and ready. Condition transition times
// are kept from prev so that an unchanged condition is not rewritten.
func (r *podRuntime) status(prev corev1.PodStatus) corev1.PodStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := corev1.PodStatus{
		Phase: corev1.PodRunning, HostIP: r.a.hostIP, HostIPs: []corev1.HostIP{{IP: r.a.hostIP}},
		PodIP: r.net.IP.String(), PodIPs: []corev1.PodIP{{IP: r.net.IP.String()}},
		StartTime: ptrTo(metaTime(r.started)), QOSClass: prev.QOSClass,
	}
	allReady, initialized := true, true
	for _, cs := range r.containers {
		s := corev1.ContainerStatus{Name: cs.spec.Name, Image: cs.spec.Image, ImageID: "weft-dev://" + Repository(cs.spec.Image),
			Ready: cs.ready && cs.running, RestartCount: cs.restarts, Started: ptrTo(cs.running), LastTerminationState: corev1.ContainerState{}}
		switch {
		case cs.running:
			s.State.Running = &corev1.ContainerStateRunning{StartedAt: metaTime(cs.startedAt)}
			s.ContainerID = "weft-dev://" + strconv.Itoa(cs.pid)
			if cs.restarts > 0 && cs.lastExit != nil {
				s.LastTerminationState.Terminated = cs.lastExit
			}
		case cs.terminated != nil:
			s.State.Terminated = cs.terminated
		default:
			s.State.Waiting = &corev1.ContainerStateWaiting{Reason: cs.waiting, Message: cs.message}
			if cs.lastExit != nil {
				s.LastTerminationState.Terminated = cs.lastExit
			}
		}
		if !cs.everRan {
			st.Phase = corev1.PodPending
		}
		if cs.runOnce { // a regular init container is done, and ready, once it exited 0
			s.Ready = cs.terminated != nil && cs.terminated.ExitCode == 0
			initialized, allReady = initialized && s.Ready, allReady && s.Ready
			st.InitContainerStatuses = append(st.InitContainerStatuses, s)
			continue
		}
		if !s.Ready {
			allReady = false
		}
		if cs.sidecar {
			if !cs.running {
				initialized = false
			}
			st.InitContainerStatuses = append(st.InitContainerStatuses, s)
			continue
		}
		st.ContainerStatuses = append(st.ContainerStatuses, s)
	}
	if r.stopping {
		allReady = false
	}
	cond := func(t corev1.PodConditionType, ok bool, reason string) corev1.PodCondition {
		c := corev1.PodCondition{Type: t, Status: corev1.ConditionFalse, Reason: reason}
		if ok {
			c.Status, c.Reason = corev1.ConditionTrue, ""
		}
		c.LastTransitionTime = metaTime(time.Now())
		for _, p := range prev.Conditions {
			if p.Type == t && p.Status == c.Status {
				c.LastTransitionTime = p.LastTransitionTime
			}
		}
		return c
	}
	st.Conditions = []corev1.PodCondition{
		cond(corev1.PodScheduled, true, ""),
		cond(corev1.PodInitialized, initialized, "ContainersNotInitialized"),
		cond(corev1.ContainersReady, allReady, "ContainersNotReady"),
		cond(corev1.PodReady, allReady, "ContainersNotReady"),
	}
	return st
}

func ptrTo[T any](v T) *T { return &v }
