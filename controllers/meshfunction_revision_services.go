package controllers

import (
	"context"
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/workload"
)

// labelTag marks the Service Weft keeps for a traffic tag's host.
const labelTag = "weft.dev/tag"

// writeTagServices keeps one Service per traffic tag, <tag>-<function>, selecting the
// tagged revision's pods: it gives the tag's host a ClusterIP and DNS name, so a captured
// call to http://<tag>-<function> reaches the caller's sidecar as one to the function does.
// Services of tags no longer in traffic are deleted. A Service of that name Weft does not
// control is left alone (the snapshot reports the conflict).
func (r *MeshFunctionReconciler) writeTagServices(ctx context.Context, fn *meshv1alpha1.MeshFunction, traffic []meshv1alpha1.TrafficStatus) error {
	want := map[string]string{} // Service name → revision
	for _, t := range traffic {
		if t.Tag != "" {
			want[t.Tag+"-"+fn.Name] = t.RevisionName
		}
	}
	var have corev1.ServiceList
	if err := r.List(ctx, &have, client.InNamespace(fn.Namespace), client.MatchingLabels{workload.LabelFunction: fn.Name}, client.HasLabels{labelTag}); err != nil {
		return fmt.Errorf("listing tag Services of MeshFunction %s/%s: %w", fn.Namespace, fn.Name, err)
	}
	for i := range have.Items {
		s := &have.Items[i]
		if _, keep := want[s.Name]; !keep && metav1.IsControlledBy(s, fn) {
			if err := r.Delete(ctx, s); err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("deleting Service %s/%s of a removed traffic tag: %w", s.Namespace, s.Name, err)
			}
		}
	}
	for _, name := range sortedNames(want) {
		rev := want[name]
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: fn.Namespace}}
		if err := r.Get(ctx, client.ObjectKeyFromObject(svc), svc); err == nil && !metav1.IsControlledBy(svc, fn) {
			continue
		} else if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		base := workload.FunctionService(fn)
		if _, err := controllerutil.CreateOrUpdate(ctx, r.Client, svc, func() error {
			svc.Labels = base.Labels
			svc.Labels[labelTag] = strings.TrimSuffix(name, "-"+fn.Name)
			svc.Spec.Selector = map[string]string{workload.LabelFunction: fn.Name, meshv1alpha1.LabelRevision: rev}
			svc.Spec.Ports = base.Spec.Ports
			return controllerutil.SetControllerReference(fn, svc, r.Scheme())
		}); err != nil {
			return fmt.Errorf("writing Service %s/%s of a traffic tag: %w", fn.Namespace, name, err)
		}
	}
	return nil
}

func sortedNames(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// PodRevisions tells the autoscaler which revision a function pod belongs to, from the
// pods' metadata in the manager's cache (the snapshot reconciler watches them anyway). The
// signal service asks it for stats from sidecars it did not authenticate.
type PodRevisions struct{ Reader client.Reader }

// RevisionOf returns the pod's meshv1alpha1.LabelRevision label, "" if it has none or is
// not in the cache.
func (p PodRevisions) RevisionOf(namespace, pod string) string {
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Pod"))
	if err := p.Reader.Get(context.Background(), types.NamespacedName{Namespace: namespace, Name: pod}, m); err != nil {
		return ""
	}
	return m.Labels[meshv1alpha1.LabelRevision]
}
