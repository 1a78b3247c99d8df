package controllers

import (
	"context"
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

// nameConflictMessage says which object blocks a Weft resource and what to do. It is the
// message of Available (workload controllers) and matches the translator's Accepted message.
func nameConflictMessage(o client.Object, kind, name string) string {
	owner := "no controller"
	if ref := metav1.GetControllerOf(o); ref != nil {
		owner = fmt.Sprintf("controller %s %s", ref.Kind, ref.Name)
	}
	return fmt.Sprintf("%s %s/%s already exists and is not owned by %s %s (it has %s); Weft leaves it untouched. "+
		"Rename the %s or delete that object.", kindOf(o), o.GetNamespace(), o.GetName(), kind, name, owner, kind)
}

func kindOf(o client.Object) string {
	switch o.(type) {
	case *appsv1.Deployment:
		return "Deployment"
	case *corev1.Service:
		return "Service"
	}
	if k := o.GetObjectKind().GroupVersionKind().Kind; k != "" {
		return k
	}
	return fmt.Sprintf("%T", o)
}

// getFresh reads o from the cache and, when the cache has no such object, confirms it with
// an uncached read: an object created a moment ago (a user's Service applied together with the
// resource that would take its name) may not be in the informer cache yet, and acting on that
// miss would create an object beside it or fail half-way. A nil apiReader reads the cache only.
func getFresh(ctx context.Context, c client.Reader, apiReader client.Reader, o client.Object) error {
	err := c.Get(ctx, client.ObjectKeyFromObject(o), o)
	if apierrors.IsNotFound(err) && apiReader != nil {
		return apiReader.Get(ctx, client.ObjectKeyFromObject(o), o)
	}
	return err
}

// sameName maps an object to the request of the resource whose rendered objects carry its
// name (minus suffix), so that deleting or renaming a user's object that blocked a resource
// wakes that resource up: the blocking object has no owner reference to follow.
func sameName(suffix string) func(context.Context, client.Object) []reconcile.Request {
	return func(_ context.Context, o client.Object) []reconcile.Request {
		name, ok := strings.CutSuffix(o.GetName(), suffix)
		if !ok || name == "" {
			return nil
		}
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: name}}}
	}
}

// createOrDelete passes only creations and deletions: what a name collision depends on.
var createOrDelete = predicate.Funcs{
	UpdateFunc:  func(event.UpdateEvent) bool { return false },
	GenericFunc: func(event.GenericEvent) bool { return false },
}
