package controllers

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/workload"
)

// RedisProxyReconciler keeps the standalone proxy of a RedisProxy with spec.replicas set: a
// Deployment of sidecar-only pods and a Service, for clients outside the mesh. Without
// spec.replicas the pool lives only in the selected pods' sidecars and nothing is rendered
// (an earlier standalone proxy is deleted). Status is the snapshot reconciler's.
type RedisProxyReconciler struct {
	client.Client
	Options workload.Options

	// apiReader confirms a cache miss before a name is taken (getFresh).
	apiReader client.Reader
}

// SetupWithManager registers the reconciler; it runs on the leader only.
func (r *RedisProxyReconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.apiReader = mgr.GetAPIReader()
	return ctrl.NewControllerManagedBy(mgr).
		Named("redisproxy").
		For(&meshv1alpha1.RedisProxy{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		// A user's object named like the standalone proxy blocks it (NameConflict).
		Watches(&appsv1.Deployment{}, handler.EnqueueRequestsFromMapFunc(sameName(redisProxySuffix)), builder.WithPredicates(createOrDelete)).
		Watches(&corev1.Service{}, handler.EnqueueRequestsFromMapFunc(sameName(redisProxySuffix)), builder.WithPredicates(createOrDelete)).
		Complete(r)
}

// redisProxySuffix ends the names of a standalone proxy's Deployment and Service.
const redisProxySuffix = "-redis-proxy"

// Reconcile renders or removes one RedisProxy's standalone proxy.
func (r *RedisProxyReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	rp := &meshv1alpha1.RedisProxy{}
	if err := r.Get(ctx, req.NamespacedName, rp); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err) // owner references clean up
	}
	name := workload.RedisProxyName(rp)
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: rp.Namespace}}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: rp.Namespace}}
	want := workload.RedisProxyDeployment(rp, r.Options)
	if want == nil {
		for _, o := range []client.Object{dep, svc} {
			if err := r.deleteOwned(ctx, rp, o); err != nil {
				return ctrl.Result{}, err
			}
		}
		return ctrl.Result{}, nil
	}
	for _, o := range []client.Object{dep.DeepCopy(), svc.DeepCopy()} {
		if err := getFresh(ctx, r.Client, r.apiReader, o); err != nil {
			if apierrors.IsNotFound(err) {
				continue
			}
			return ctrl.Result{}, err
		}
		if !metav1.IsControlledBy(o, rp) {
			// Never adopt or rewrite what Weft did not create. The snapshot reconciler
			// reports it as Accepted=False NameConflict (it lists the same objects).
			logf.FromContext(ctx).Info("standalone proxy name taken; leaving the object alone", "object", kindOf(o)+"/"+o.GetName())
			return ctrl.Result{}, nil
		}
	}
	if _, err := controllerutil.CreateOrUpdate(ctx, r.Client, dep, func() error {
		dep.Labels = want.Labels
		if dep.CreationTimestamp.IsZero() {
			dep.Spec.Selector = want.Spec.Selector
		}
		dep.Spec.Replicas = want.Spec.Replicas
		dep.Spec.Template = want.Spec.Template
		dep.Spec.RevisionHistoryLimit = want.Spec.RevisionHistoryLimit
		return controllerutil.SetControllerReference(rp, dep, r.Scheme())
	}); err != nil {
		return ctrl.Result{}, fmt.Errorf("writing the standalone proxy Deployment of RedisProxy %s: %w", req.NamespacedName, err)
	}
	wantSvc := workload.RedisProxyService(rp)
	if _, err := controllerutil.CreateOrUpdate(ctx, r.Client, svc, func() error {
		svc.Labels = wantSvc.Labels
		svc.Spec.Selector = wantSvc.Spec.Selector
		svc.Spec.Ports = wantSvc.Spec.Ports
		return controllerutil.SetControllerReference(rp, svc, r.Scheme())
	}); err != nil {
		return ctrl.Result{}, fmt.Errorf("writing the standalone proxy Service of RedisProxy %s: %w", req.NamespacedName, err)
	}
	return ctrl.Result{}, nil
}

// deleteOwned deletes o if it exists and rp controls it (never a user's object that happens to
// share the name).
func (r *RedisProxyReconciler) deleteOwned(ctx context.Context, rp *meshv1alpha1.RedisProxy, o client.Object) error {
	if err := r.Get(ctx, client.ObjectKeyFromObject(o), o); err != nil {
		return client.IgnoreNotFound(err)
	}
	if !metav1.IsControlledBy(o, rp) {
		return nil
	}
	if err := r.Delete(ctx, o); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting the standalone proxy of RedisProxy %s/%s: %w", rp.Namespace, rp.Name, err)
	}
	return nil
}
