package peer

import (
	"context"
	"fmt"
	"strings"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"
	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Identity is a replica's leader-election identity: its name (the pod's), a unique suffix
// (a restarted container is a new candidate), and, after the last "@", the address of its
// peer port, so a follower finds the leader's peer port in the Lease's holderIdentity
// without reading pods.
func Identity(name, peerAddr string) string {
	return name + "_" + string(uuid.NewUUID()) + "@" + peerAddr
}

// AddressOf is the peer address in an Identity, "" when it has none (a manager of an
// earlier release holds the lease).
func AddressOf(identity string) string {
	i := strings.LastIndex(identity, "@")
	if i < 0 {
		return ""
	}
	return identity[i+1:]
}

// NewLock is controller-runtime's Lease lock with identity id (its own would be
// <hostname>_<uuid>, which names no address).
func NewLock(cfg *rest.Config, namespace, name, id string) (resourcelock.Interface, error) {
	cfg = rest.AddUserAgent(rest.CopyConfig(cfg), "leader-election")
	core, err := corev1client.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	coord, err := coordinationv1client.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return resourcelock.New(resourcelock.LeasesResourceLock, namespace, name, core, coord, resourcelock.ResourceLockConfig{Identity: id})
}

// LeaseLeader finds the leader from the Lease: its holder's peer address, "" while the
// Lease has no holder or it is this replica (Self).
type LeaseLeader struct {
	Reader client.Reader
	Lease  types.NamespacedName
	Self   string
}

// Leader reads the Lease.
func (l LeaseLeader) Leader(ctx context.Context) (string, error) {
	var lease coordinationv1.Lease
	if err := l.Reader.Get(ctx, l.Lease, &lease); err != nil {
		return "", fmt.Errorf("reading Lease %s: %w", l.Lease, err)
	}
	if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == l.Self {
		return "", nil
	}
	addr := AddressOf(*lease.Spec.HolderIdentity)
	if addr == "" {
		return "", fmt.Errorf("the leader %q advertises no peer address (a manager of an earlier release?)", *lease.Spec.HolderIdentity)
	}
	return addr, nil
}
