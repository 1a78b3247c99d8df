package controllers

import (
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
)

// referenceGrantGVK is the Gateway API ReferenceGrant version Weft reads: v1beta1 is served
// by every Gateway API release that has ReferenceGrant (v1 only from v1.5 on).
var referenceGrantGVK = schema.GroupVersionKind{Group: "gateway.networking.k8s.io", Version: "v1beta1", Kind: "ReferenceGrant"}

// newReferenceGrantList is an empty unstructured ReferenceGrant list: Weft needs no Go types
// from Gateway API, only three fields of the object (snapshot.ReferenceGrantFrom).
func newReferenceGrantList() *unstructured.UnstructuredList {
	l := &unstructured.UnstructuredList{}
	l.SetGroupVersionKind(referenceGrantGVK.GroupVersion().WithKind(referenceGrantGVK.Kind + "List"))
	return l
}

// newReferenceGrant is an empty unstructured ReferenceGrant, for watching.
func newReferenceGrant() *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(referenceGrantGVK)
	return u
}

// referenceGrantsInstalled reports whether the API server serves ReferenceGrant. Watching a
// kind the server does not know would keep the manager's cache from ever syncing, so
// without the CRD nothing crosses namespaces (the safe side) and the manager says so.
func referenceGrantsInstalled(m meta.RESTMapper) bool {
	_, err := m.RESTMapping(referenceGrantGVK.GroupKind(), referenceGrantGVK.Version)
	return err == nil
}

// ownersChanged passes creations, deletions and updates that change an object's owner
// references: all that decides whether a Weft resource's name is taken.
type ownersChanged struct{ predicate.Funcs }

func (ownersChanged) Update(e event.UpdateEvent) bool {
	return !equality.Semantic.DeepEqual(e.ObjectOld.GetOwnerReferences(), e.ObjectNew.GetOwnerReferences())
}
