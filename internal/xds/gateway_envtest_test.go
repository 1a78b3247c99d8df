package xds_test

import (
	"context"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/snapshot"
	"github.com/weftmesh/weft/internal/workload"
)

// sidecarOnlyPod creates a pod that runs only a sidecar (as the gateway's Deployment does)
// in ns as ServiceAccount sa, creating both if needed.
func sidecarOnlyPod(t *testing.T, c client.Client, ns, name, sa string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	for _, o := range []client.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: sa}},
	} {
		if err := c.Create(ctx, o); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": "weft-gateway"}},
		Spec: corev1.PodSpec{ServiceAccountName: sa, Containers: []corev1.Container{{Name: workload.SidecarContainerName, Image: "weft-sidecar"}}}}
	must(t, c.Create(ctx, pod))
	t.Cleanup(func() { _ = c.Delete(context.Background(), pod) })
	return pod
}

func hasGatewayListener(got map[string][][]byte) bool {
	for _, l := range got[resourcev3.ListenerType] {
		if strings.Contains(string(l), snapshot.GatewayListenerName) {
			return true
		}
	}
	return false
}

// The gateway view goes to the verified ServiceAccount weft-system/weft-gateway and to no
// one else: not to another ServiceAccount of weft-system claiming it in its node metadata,
// and not to a ServiceAccount named weft-gateway in another namespace. The gateway gets the
// queue credential (it publishes async calls) and never a capture or inbound listener.
func TestAuthGatewayViewByServiceAccountOnly(t *testing.T) {
	c, cs := apiServer(t)
	s := startSecure(t, c, meshInput(t))
	conn := s.dial(t)
	gw := sidecarOnlyPod(t, c, snapshot.GatewayNamespace, "weft-gateway-1", snapshot.GatewayServiceAccount)
	got, err := fetch(t, conn, podToken(t, cs, gw, contract.TokenAudience), &corev3.Node{Id: gw.Name + "." + gw.Namespace})
	must(t, err)
	if !hasGatewayListener(got) || len(got[resourcev3.ListenerType]) != 1 {
		t.Fatalf("gateway pod got %d listeners (gateway listener: %v), want only the gateway's", len(got[resourcev3.ListenerType]), hasGatewayListener(got))
	}
	if !holds(got, queueCreds.ForView(snapshot.GatewayNamespace, "").Password) {
		t.Error("the gateway did not get its queue credential: async calls through it would fail")
	}
	if holds(got, redisServerPW) || holds(got, redisClientPW) {
		t.Error("the gateway got a redis pool's passwords")
	}

	claim := map[string]any{"namespace": snapshot.GatewayNamespace, snapshot.NodeGateway: true}
	other := sidecarOnlyPod(t, c, snapshot.GatewayNamespace, "impostor", "other")
	got, err = fetch(t, conn, podToken(t, cs, other, contract.TokenAudience), claimedNode(t, other.Name+"."+other.Namespace, claim))
	must(t, err)
	if hasGatewayListener(got) {
		t.Fatal("a weft-system pod of another ServiceAccount claiming the gateway in its metadata got the gateway view")
	}
	elsewhere := sidecarOnlyPod(t, c, ztNS, "weft-gateway-x", snapshot.GatewayServiceAccount)
	got, err = fetch(t, conn, podToken(t, cs, elsewhere, contract.TokenAudience), claimedNode(t, elsewhere.Name+"."+elsewhere.Namespace, claim))
	must(t, err)
	if hasGatewayListener(got) {
		t.Fatalf("ServiceAccount %s/%s got the gateway view", ztNS, snapshot.GatewayServiceAccount)
	}
}
