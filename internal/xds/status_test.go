package xds

import (
	"testing"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/snapshot"
)

type fixedVersions map[string]string

func (f fixedVersions) Versions(snapshot.View) map[string]string { return f }

func TestSync(t *testing.T) {
	in := input("10.0.0.1")
	in.RedisProxies = []meshv1alpha1.RedisProxy{{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "cache"},
		Spec: meshv1alpha1.RedisProxySpec{
			WorkloadSelector: &meshv1alpha1.WorkloadSelector{Labels: map[string]string{"app": "web"}},
			Servers:          []meshv1alpha1.RedisServer{{Name: "s1", Address: "10.0.0.9:6379"}},
		},
	}}
	res := snapshot.Translate(in)
	cur := fixedVersions{resourcev3.ClusterType: "c2", resourcev3.ListenerType: "l2"}
	web := snapshot.View{Namespace: "default", Labels: map[string]string{"app": "web"}}
	api := snapshot.View{Namespace: "default", Labels: map[string]string{"app": "api"}}
	nodes := []NodeState{
		{ID: "synced.default", View: web, Acked: map[string]string{resourcev3.ClusterType: "c2", resourcev3.ListenerType: "l2"}},
		{ID: "pending.default", View: api, Acked: map[string]string{resourcev3.ClusterType: "c1", resourcev3.ListenerType: "l2"}},
		{ID: "rejecting.default", View: web, Acked: map[string]string{resourcev3.ClusterType: "c1", resourcev3.ListenerType: "l2"},
			Rejected: map[string]Rejection{resourcev3.ClusterType: {Version: "c2", Error: "bad field"}}},
		// A rejection of an older version no longer counts: the current one may fix it.
		{ID: "old-nack.default", View: api, Acked: map[string]string{resourcev3.ClusterType: "c2", resourcev3.ListenerType: "l2"},
			Rejected: map[string]Rejection{resourcev3.ListenerType: {Version: "l1", Error: "old"}}},
	}
	got := Sync(res, nodes, cur)
	want := map[snapshot.ObjectKey]SyncStatus{
		{Kind: snapshot.KindMeshRoute, Namespace: "default", Name: "reviews"}: {Subscribed: 4, Synced: 2, Rejected: 1,
			LastRejection: "rejecting.default: bad field"},
		{Kind: snapshot.KindRedisProxy, Namespace: "default", Name: "cache"}: {Subscribed: 2, Synced: 1, Rejected: 1,
			LastRejection: "rejecting.default: bad field"},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("Sync (-want +got):\n%s", d)
	}
}

// A sidecar's NACK counts only against the objects whose resources travel in the type it
// rejected: a rejected route configuration marks the routes, not the Redis pools the same
// sidecar runs (before, any NACK marked every object the sidecar received).
func TestSyncNACKMarksOnlyObjectsOfThatType(t *testing.T) {
	in := input("10.0.0.1")
	in.RedisProxies = []meshv1alpha1.RedisProxy{{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "cache"},
		Spec: meshv1alpha1.RedisProxySpec{
			WorkloadSelector: &meshv1alpha1.WorkloadSelector{Labels: map[string]string{"app": "web"}},
			Servers:          []meshv1alpha1.RedisServer{{Name: "s1", Address: "10.0.0.9:6379"}},
		},
	}}
	res := snapshot.Translate(in)
	cur := fixedVersions{resourcev3.ClusterType: "c2", resourcev3.RouteType: "r2"}
	web := snapshot.View{Namespace: "default", Labels: map[string]string{"app": "web"}}
	nodes := []NodeState{{ID: "web-1.default", View: web, Acked: map[string]string{resourcev3.ClusterType: "c2", resourcev3.RouteType: "r1"},
		Rejected: map[string]Rejection{resourcev3.RouteType: {Version: "r2", Error: "bad route"}}}}
	got := Sync(res, nodes, cur)
	want := map[snapshot.ObjectKey]SyncStatus{
		{Kind: snapshot.KindMeshRoute, Namespace: "default", Name: "reviews"}: {Subscribed: 1, Rejected: 1, LastRejection: "web-1.default: bad route"},
		{Kind: snapshot.KindRedisProxy, Namespace: "default", Name: "cache"}:  {Subscribed: 1},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("Sync (-want +got):\n%s", d)
	}
}
