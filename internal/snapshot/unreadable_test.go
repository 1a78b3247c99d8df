package snapshot

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
)

// Objects stored before the CRDs bounded durations decode with the value marked unreadable
// (issue 13). Translation refuses such an object, naming the field, and leaves it out: the
// route claims no host and the pool is not served, while the others translate as usual.
func TestUnreadableFieldsAreRefusedAndLeftOut(t *testing.T) {
	bad := meshv1alpha1.MeshRoute{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "bad"}}
	bad.Spec.Hosts = []string{"reviews"}
	bad.Spec.HTTP = []meshv1alpha1.HTTPRule{{
		Timeout:        &meshv1alpha1.Duration{Invalid: "9999999999h"},
		DirectResponse: &meshv1alpha1.HTTPDirectResponse{Status: 200},
	}}
	good := meshv1alpha1.MeshRoute{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "good"}}
	good.Spec.Hosts = []string{"ratings"}
	good.Spec.HTTP = []meshv1alpha1.HTTPRule{{DirectResponse: &meshv1alpha1.HTTPDirectResponse{Status: 200}}}
	pool := meshv1alpha1.RedisProxy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "cache"}}
	pool.Spec.OpTimeout = &meshv1alpha1.Duration{Invalid: "9999999999h"}
	pool.Spec.Listener = meshv1alpha1.RedisListener{Address: "127.0.0.1", Port: 6379}
	pool.Spec.Servers = []meshv1alpha1.RedisServer{{Name: "a", Address: "10.0.0.1:6379", Weight: 1}}

	res := Translate(&Input{MeshRoutes: []meshv1alpha1.MeshRoute{bad, good}, RedisProxies: []meshv1alpha1.RedisProxy{pool}})

	for _, c := range []struct {
		key  ObjectKey
		want string
	}{
		{ObjectKey{KindMeshRoute, "a", "bad"}, `spec.http[0].timeout: "9999999999h" is not a duration Go can read`},
		{ObjectKey{KindRedisProxy, "a", "cache"}, `spec.opTimeout: "9999999999h" is not a duration Go can read`},
	} {
		acc := meta.FindStatusCondition(res.Status[c.key].Conditions, meshv1alpha1.ConditionAccepted)
		if acc == nil || acc.Status != metav1.ConditionFalse || acc.Reason != meshv1alpha1.ReasonInvalid || !strings.Contains(acc.Message, c.want) {
			t.Errorf("%s: Accepted = %+v, want False/Invalid naming %q", c.key, acc, c.want)
		}
	}
	if acc := meta.FindStatusCondition(res.Status[ObjectKey{KindMeshRoute, "a", "good"}].Conditions, meshv1alpha1.ConditionAccepted); acc == nil || acc.Status != metav1.ConditionTrue {
		t.Errorf("the good route next to the bad one: Accepted = %+v, want True", acc)
	}
	for _, p := range res.Redis {
		if p.Key.Name == "cache" && p.Listener != nil {
			t.Error("the pool with an unreadable opTimeout is served")
		}
	}
}
