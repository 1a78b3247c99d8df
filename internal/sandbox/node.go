package sandbox

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

const leaseNamespace = "kube-node-lease"

// registerNode creates (or takes over) the sandbox's Node with Ready status.
func (a *Agent) registerNode(ctx context.Context) error {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: a.opts.NodeName, Labels: map[string]string{
		"kubernetes.io/hostname": a.opts.NodeName, "kubernetes.io/os": "linux", "weft.dev/sandbox": "true",
	}}}
	_, err := a.cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("registering Node %s: %w", a.opts.NodeName, err)
	}
	return a.heartbeat(ctx)
}

func (a *Agent) nodeStatus(prev corev1.NodeStatus) corev1.NodeStatus {
	now := metav1.Now()
	res := corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("8"), corev1.ResourceMemory: resource.MustParse("16Gi"),
		corev1.ResourcePods: resource.MustParse("250"),
	}
	st := corev1.NodeStatus{
		Capacity: res, Allocatable: res,
		Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: a.hostIP}, {Type: corev1.NodeHostName, Address: a.opts.NodeName}},
		NodeInfo: corev1.NodeSystemInfo{KubeletVersion: "v1.36.3-weft-dev", OperatingSystem: "linux", Architecture: "amd64",
			ContainerRuntimeVersion: "weft-dev://processes"},
	}
	for _, c := range []struct {
		t      corev1.NodeConditionType
		status corev1.ConditionStatus
		reason string
	}{
		{corev1.NodeReady, corev1.ConditionTrue, "KubeletReady"},
		{corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory"},
		{corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure"},
		{corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID"},
	} {
		cond := corev1.NodeCondition{Type: c.t, Status: c.status, Reason: c.reason, LastHeartbeatTime: now, LastTransitionTime: now,
			Message: "weft dev node agent is running"}
		for _, p := range prev.Conditions {
			if p.Type == c.t && p.Status == c.status {
				cond.LastTransitionTime = p.LastTransitionTime
			}
		}
		st.Conditions = append(st.Conditions, cond)
	}
	return st
}

// heartbeat renews the node Lease and NodeStatus, so kube-controller-manager's node
// lifecycle controller keeps the Node Ready and does not evict its Pods.
func (a *Agent) heartbeat(ctx context.Context) error {
	// kube-controller-manager writes the Node too (taints, annotations): re-read on conflict.
	var node *corev1.Node
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		var err error
		if node, err = a.cs.CoreV1().Nodes().Get(ctx, a.opts.NodeName, metav1.GetOptions{}); err != nil {
			return err
		}
		node.Status = a.nodeStatus(node.Status)
		node, err = a.cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("updating status of Node %s: %w", a.opts.NodeName, err)
	}
	leases := a.cs.CoordinationV1().Leases(leaseNamespace)
	now := metav1.NewMicroTime(time.Now())
	lease, err := leases.Get(ctx, a.opts.NodeName, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("reading Lease %s/%s: %w", leaseNamespace, a.opts.NodeName, err)
	}
	if apierrors.IsNotFound(err) {
		lease = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: a.opts.NodeName, Namespace: leaseNamespace,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}}},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &a.opts.NodeName, LeaseDurationSeconds: ptrTo(int32(40)), RenewTime: &now}}
		_, err = leases.Create(ctx, lease, metav1.CreateOptions{})
	} else if err == nil {
		lease.Spec.RenewTime = &now
		_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("renewing Lease %s/%s: %w", leaseNamespace, a.opts.NodeName, err)
	}
	return nil
}
