//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestNodeReadyWithHeartbeats(t *testing.T) {
	ctx := context.Background()
	node, err := cs.CoreV1().Nodes().Get(ctx, "weft-dev", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ready := false
	for _, c := range node.Status.Conditions {
		ready = ready || (c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue)
	}
	if !ready {
		t.Errorf("node weft-dev conditions %+v, want Ready=True", node.Status.Conditions)
	}
	lease, err := cs.CoordinationV1().Leases("kube-node-lease").Get(ctx, "weft-dev", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("node lease: %v", err)
	}
	first := lease.Spec.RenewTime.Time
	eventually(t, 2*time.Minute, "node lease renewed", func() error {
		l, err := cs.CoordinationV1().Leases("kube-node-lease").Get(ctx, "weft-dev", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !l.Spec.RenewTime.After(first) {
			return fmt.Errorf("renewTime still %s", first)
		}
		return nil
	})
}

func containerPid(t *testing.T, p corev1.Pod, name string) int {
	t.Helper()
	for _, s := range p.Status.ContainerStatuses {
		if s.Name == name {
			pid, err := strconv.Atoi(strings.TrimPrefix(s.ContainerID, "weft-dev://"))
			if err == nil {
				return pid
			}
		}
	}
	t.Fatalf("pod %s has no running container %s: %+v", p.Name, name, p.Status.ContainerStatuses)
	return 0
}

func TestCrashedContainerRestarts(t *testing.T) {
	var pod corev1.Pod
	eventually(t, 3*time.Minute, "a ready reviews v1 pod", func() error {
		for _, p := range pods(t, "app=reviews,version=v1") {
			if readyRunning(p) {
				pod = p
				return nil
			}
		}
		return fmt.Errorf("none ready")
	})
	pid := containerPid(t, pod, "reviews")
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("killing the app process %d: %v", pid, err)
	}
	eventually(t, 2*time.Minute, "the app container restarted and ready", func() error {
		p, err := cs.CoreV1().Pods("default").Get(context.Background(), pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, s := range p.Status.ContainerStatuses {
			if s.Name == "reviews" {
				if s.RestartCount < 1 || !s.Ready || s.LastTerminationState.Terminated == nil {
					return fmt.Errorf("status %+v", s)
				}
				if s.LastTerminationState.Terminated.ExitCode != 128+int32(syscall.SIGKILL) {
					return fmt.Errorf("last exit %+v, want 137 (SIGKILL)", s.LastTerminationState.Terminated)
				}
				return nil
			}
		}
		return fmt.Errorf("no reviews container status")
	})
}

func TestPreStopRunsBeforeTheProcessStops(t *testing.T) {
	ctx := context.Background()
	marker := filepath.Join(t.TempDir(), "prestop")
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "prestop", Namespace: "default", Labels: map[string]string{"weft.dev/inject": "false"}},
		Spec: corev1.PodSpec{TerminationGracePeriodSeconds: ptr(int64(10)), Containers: []corev1.Container{{
			Name: "app", Image: "weft.dev/examples/echo",
			Lifecycle: &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{
				// The app still answers while preStop runs: the hook records that it did.
				Command: []string{"/bin/sh", "-c", "curl -sf http://127.0.0.1:8080/ >/dev/null && echo served > " + marker},
			}}},
		}}}}
	if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var pid int
	eventually(t, 2*time.Minute, "prestop pod ready", func() error {
		p, err := cs.CoreV1().Pods("default").Get(ctx, "prestop", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !readyRunning(*p) {
			return fmt.Errorf("phase %s", p.Status.Phase)
		}
		pid = containerPid(t, *p, "app")
		return nil
	})
	if err := cs.CoreV1().Pods("default").Delete(ctx, "prestop", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, "prestop pod removed by the node agent", func() error {
		_, err := cs.CoreV1().Pods("default").Get(ctx, "prestop", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (err %w)", err)
	})
	if syscall.Kill(pid, 0) == nil {
		t.Errorf("process %d of the deleted pod still runs", pid)
	}
	if b, err := os.ReadFile(marker); err != nil || strings.TrimSpace(string(b)) != "served" {
		t.Errorf("preStop marker %q (err %v): the hook did not run while the app still served", b, err)
	}
}

func ptr[T any](v T) *T { return &v }

// A run that crashed leaves processes, network namespaces and injected faults behind; the
// next start removes them (TestMain planted a marked process, a weft- netns with an unmarked
// process in it and a marked iptables rule before starting the mesh).
func TestStartCleansUpAfterACrash(t *testing.T) {
	if err := syscall.Kill(stalePID, 0); err == nil {
		t.Errorf("the stale process %d of a crashed run is still alive", stalePID)
	}
	if err := syscall.Kill(staleNetnsPID, 0); err == nil {
		t.Errorf("process %d, left in the stale network namespace without the marker, is still alive", staleNetnsPID)
	}
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), staleNetns) {
		t.Errorf("the stale network namespace %s of a crashed run is still there", staleNetns)
	}
	if err := exec.Command("iptables", append([]string{"-w", "-C"}, staleRule...)...).Run(); err == nil {
		t.Errorf("the stale iptables rule %q of a crashed run is still there", staleRule)
	}
}
