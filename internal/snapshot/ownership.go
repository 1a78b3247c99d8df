package snapshot

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
)

// standaloneSuffix ends the names of a standalone Redis proxy's Deployment and Service
// (internal/workload.RedisProxyName).
const standaloneSuffix = "-redis-proxy"

// controlledBy reports whether o's controller reference names the Weft object kind/name
// (and uid, when both sides know it).
func controlledBy(o metav1.Object, kind, name string, uid types.UID) bool {
	ref := metav1.GetControllerOfNoCopy(o)
	return ref != nil && ref.Kind == kind && ref.Name == name && (uid == "" || ref.UID == "" || ref.UID == uid)
}

// nameTaken reports as NameConflict, on b, a Service or Deployment named name in b's
// namespace that b does not control: Weft never adopts or rewrites an object it did not
// create, so the object's workload cannot exist.
func (t *translator) nameTaken(b *built, uid types.UID, name string) bool {
	taken := false
	k := nsName(b.key.Namespace, name)
	if s, ok := t.ix.services[k]; ok && !controlledBy(s, b.key.Kind, b.key.Name, uid) {
		b.p.nameConflict("Service %s already exists and is not owned by %s %s (%s); Weft leaves it untouched: rename the %s or delete that Service",
			k, b.key.Kind, b.key.Name, controllerOf(s), b.key.Kind)
		taken = true
	}
	if d, ok := t.ix.deployments[k]; ok && !controlledBy(d, b.key.Kind, b.key.Name, uid) {
		b.p.nameConflict("Deployment %s already exists and is not owned by %s %s (%s); Weft leaves it untouched: rename the %s or delete that Deployment",
			k, b.key.Kind, b.key.Name, controllerOf(d), b.key.Kind)
		taken = true
	}
	return taken
}

func controllerOf(o metav1.Object) string {
	if ref := metav1.GetControllerOfNoCopy(o); ref != nil {
		return "its controller is " + ref.Kind + " " + ref.Name
	}
	return "it has no controller"
}

// standaloneNames reports a standalone proxy whose Deployment or Service name is taken. The
// pool is still served to the selected pods' sidecars: only the standalone proxy is missing.
func (t *translator) standaloneNames(rp *meshv1alpha1.RedisProxy, p *problems) {
	if rp.Spec.Replicas == nil {
		return
	}
	b := &built{key: ObjectKey{KindRedisProxy, rp.Namespace, rp.Name}, p: p}
	if t.nameTaken(b, rp.UID, rp.Name+standaloneSuffix) {
		p.nameConflict("the standalone proxy (spec.replicas) is not created, while the pool is still served to the sidecars spec.workloadSelector picks")
	}
}
