package controllers

import (
	"context"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/source"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/autoscale"
	"github.com/weftmesh/weft/internal/workload"
)

// Handoff reports whether every caller sidecar has ACKed a snapshot in which a function has
// no endpoint taking new requests, so its last pod can be removed without a caller sending a
// request to a pod that is going away (Weft's positive hand-off, decision 6).
type Handoff interface {
	Drained(fn types.NamespacedName) bool
}

// HandoffFunc adapts a function to Handoff.
type HandoffFunc func(fn types.NamespacedName) bool

// Drained calls f.
func (f HandoffFunc) Drained(fn types.NamespacedName) bool { return f(fn) }

// DefaultHandoffTimeout bounds the wait for callers' ACKs before the last pod goes anyway: a
// sidecar that is gone or stuck must not pin a function's pod forever.
const DefaultHandoffTimeout = 15 * time.Second

// MeshFunctionReconciler keeps a MeshFunction's Deployment and Service as rendered by
// internal/workload, sets the Deployment's replicas from the autoscaler's decisions (it alone
// writes them), and reports url, replicas and readiness in status. It runs on the leader only.
type MeshFunctionReconciler struct {
	client.Client
	Options   workload.Options
	Scaler    Scaler
	Decisions *Decisions
	Handoff   Handoff
	Clock     clock.PassiveClock
	// HandoffTimeout bounds the wait for Handoff; DefaultHandoffTimeout if zero.
	HandoffTimeout time.Duration
	// Recorder, when set, records events.k8s.io/v1 Events: scaling to and from zero, the
	// hand-off, and Available's transitions (a name conflict, a failed Deployment).
	Recorder events.EventRecorder

	// apiReader confirms a cache miss before a name is taken (getFresh).
	apiReader client.Reader

	zeroSince map[types.NamespacedName]time.Time
	// revisionKeys are the autoscaler keys of each function's revisions.
	revisionKeys map[types.NamespacedName]map[autoscale.FunctionKey]bool
}

// SetupWithManager registers the reconciler: it watches MeshFunctions, the Deployments and
// Services it owns, and the autoscaler's decisions.
func (r *MeshFunctionReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	if r.HandoffTimeout == 0 {
		r.HandoffTimeout = DefaultHandoffTimeout
	}
	r.zeroSince = map[types.NamespacedName]time.Time{}
	r.apiReader = mgr.GetAPIReader()
	b := ctrl.NewControllerManagedBy(mgr).
		Named("meshfunction").
		// Spec changes, and changes of the replica counts in status: a reconcile that read a
		// stale status and so skipped its write gets another pass once the cache catches up.
		For(&meshv1alpha1.MeshFunction{}, builder.WithPredicates(predicate.Or[client.Object](
			predicate.GenerationChangedPredicate{}, replicaStatusChanged{}))).
		Owns(&appsv1.Deployment{}).
		Owns(&corev1.Service{}).
		// A user's object of the function's name blocks it (NameConflict); its creation or
		// deletion must wake the function, and it has no owner reference to follow.
		Watches(&appsv1.Deployment{}, handler.EnqueueRequestsFromMapFunc(sameName("")), builder.WithPredicates(createOrDelete)).
		Watches(&corev1.Service{}, handler.EnqueueRequestsFromMapFunc(sameName("")), builder.WithPredicates(createOrDelete))
	if r.Decisions != nil {
		b = b.WatchesRawSource(source.Channel(r.Decisions.Events(), &handler.TypedEnqueueRequestForObject[*meshv1alpha1.MeshFunction]{}))
	}
	return b.Complete(r)
}

// Reconcile brings one MeshFunction's workload and status up to date.
func (r *MeshFunctionReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	log := logf.FromContext(ctx)
	key := keyOf(req.NamespacedName)
	fn := &meshv1alpha1.MeshFunction{}
	if err := r.Get(ctx, req.NamespacedName, fn); err != nil {
		if apierrors.IsNotFound(err) {
			// Owner references delete the Deployment and Service.
			r.forget(req.NamespacedName)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	status := fn.Status.DeepCopy()
	status.ObservedGeneration = fn.Generation
	status.URL = workload.FunctionURL(fn.Namespace, fn.Name, r.Options.ClusterDomain)

	// A field stored before the CRD could refuse it decodes as unreadable; name it first,
	// or the scale check below would blame "the scale settings" for an unreadable window.
	if bad := fn.UnreadableFields(); len(bad) > 0 {
		setFunctionCondition(status, fn.Generation, meshv1alpha1.ConditionAvailable, metav1.ConditionFalse, meshv1alpha1.ReasonInvalid,
			fmt.Sprintf("these fields cannot be read: %s; fix them and apply again", strings.Join(bad, "; ")))
		return ctrl.Result{}, r.writeStatus(ctx, fn, status)
	}
	spec := scaleSpec(fn)
	if err := spec.Validate(); err != nil {
		setFunctionCondition(status, fn.Generation, meshv1alpha1.ConditionAvailable, metav1.ConditionFalse, meshv1alpha1.ReasonInvalid,
			fmt.Sprintf("the scale settings are invalid: %v", err))
		return ctrl.Result{}, r.writeStatus(ctx, fn, status)
	}
	if len(fn.Spec.Traffic) > 0 {
		return r.reconcileRevisions(ctx, fn, status)
	}

	current, exists, foreign, err := r.owned(ctx, fn)
	if err != nil {
		return ctrl.Result{}, err
	}
	if foreign != nil {
		// Never adopt or rewrite what Weft did not create: the user's object stays as it is
		// and is not garbage-collected with the function.
		setFunctionCondition(status, fn.Generation, meshv1alpha1.ConditionAvailable, metav1.ConditionFalse, meshv1alpha1.ReasonNameConflict,
			nameConflictMessage(foreign, "MeshFunction", fn.Name))
		if r.Scaler != nil {
			r.Scaler.Remove(key)
		}
		return ctrl.Result{}, r.writeStatus(ctx, fn, status)
	}
	if r.Scaler != nil {
		// Ready pods first, so a restarted manager's decider starts from what runs now
		// instead of shedding pods (Knative PR #4795).
		if exists {
			r.Scaler.SetReady(key, int(current.Status.ReadyReplicas))
		}
		r.Scaler.SetSpec(key, spec)
	}

	replicas, requeue, drained := r.replicas(fn, current, exists, status)
	desired, err := workload.FunctionDeployment(fn, replicas, r.Options)
	if err != nil {
		setFunctionCondition(status, fn.Generation, meshv1alpha1.ConditionAvailable, metav1.ConditionFalse, meshv1alpha1.ReasonInvalid, err.Error())
		return ctrl.Result{}, r.writeStatus(ctx, fn, status)
	}
	dep := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: fn.Name, Namespace: fn.Namespace}}
	var before int32
	if exists {
		before = ptr.Deref(current.Spec.Replicas, 1)
	}
	op, err := controllerutil.CreateOrUpdate(ctx, r.Client, dep, func() error {
		dep.Labels = desired.Labels
		if dep.CreationTimestamp.IsZero() {
			dep.Spec.Selector = desired.Spec.Selector // immutable after creation
		}
		dep.Spec.Replicas = desired.Spec.Replicas
		dep.Spec.Strategy = desired.Spec.Strategy
		dep.Spec.RevisionHistoryLimit = desired.Spec.RevisionHistoryLimit
		if dep.Spec.Template.Annotations[workload.AnnotationTemplateHash] != desired.Spec.Template.Annotations[workload.AnnotationTemplateHash] {
			dep.Spec.Template = desired.Spec.Template
		}
		return controllerutil.SetControllerReference(fn, dep, r.Scheme())
	})
	if err != nil {
		setFunctionCondition(status, fn.Generation, meshv1alpha1.ConditionAvailable, metav1.ConditionFalse, meshv1alpha1.ReasonWorkloadFailed,
			fmt.Sprintf("writing Deployment %s/%s failed: %v", fn.Namespace, fn.Name, err))
		_ = r.writeStatus(ctx, fn, status)
		return ctrl.Result{}, fmt.Errorf("reconciling Deployment of MeshFunction %s: %w", req.NamespacedName, err)
	}
	if op != controllerutil.OperationResultNone {
		log.Info("deployment written", "operation", op, "replicas", replicas)
	}
	if !exists || before != replicas {
		now := metav1.NewTime(r.Clock.Now())
		status.LastScaleTime = &now
	}
	if exists {
		r.emitScaleEvent(fn, before, replicas, drained)
	}
	if err := r.writeService(ctx, fn); err != nil {
		return ctrl.Result{}, err
	}

	status.Replicas = dep.Status.Replicas
	status.ReadyReplicas = dep.Status.ReadyReplicas
	r.setReadiness(fn, status, replicas)
	if err := r.dropRevisions(ctx, fn, status, dep); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.writeStatus(ctx, fn, status); err != nil {
		return ctrl.Result{}, err
	}
	if requeue > 0 {
		return ctrl.Result{RequeueAfter: requeue}, nil
	}
	return ctrl.Result{}, nil
}

// owned reads the function's Deployment (exists reports whether there is one) and Service,
// and returns as foreign the first of them that another owner controls.
func (r *MeshFunctionReconciler) owned(ctx context.Context, fn *meshv1alpha1.MeshFunction) (current *appsv1.Deployment, exists bool, foreign client.Object, err error) {
	name := client.ObjectKeyFromObject(fn)
	current = &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: name.Namespace, Name: name.Name}}
	err = getFresh(ctx, r.Client, r.apiReader, current)
	exists = err == nil
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, false, nil, err
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: name.Namespace, Name: name.Name}}
	if err := getFresh(ctx, r.Client, r.apiReader, svc); err != nil && !apierrors.IsNotFound(err) {
		return nil, false, nil, err
	} else if err != nil {
		svc = nil
	}
	switch {
	case exists && !metav1.IsControlledBy(current, fn):
		foreign = current
	case svc != nil && !metav1.IsControlledBy(svc, fn):
		foreign = svc
	}
	return current, exists, foreign, nil
}

// forget drops what the reconciler keeps in memory about a deleted MeshFunction.
func (r *MeshFunctionReconciler) forget(name types.NamespacedName) {
	key := keyOf(name)
	if r.isRevisionKey(key) {
		// A Deployment of a revision's name woke a function of that name, which does not
		// exist: the key is the revision's, not a deleted function's.
		return
	}
	if r.Scaler != nil {
		r.Scaler.Remove(key)
	}
	if r.Decisions != nil {
		r.Decisions.Forget(key)
	}
	delete(r.zeroSince, name)
	r.trackRevisionKeys(name, nil)
}

// emitScaleEvent records a scale to or from zero of an existing Deployment: to zero after the
// hand-off (every caller's sidecar ACKed the draining snapshot) or after its timeout.
func (r *MeshFunctionReconciler) emitScaleEvent(fn *meshv1alpha1.MeshFunction, before, replicas int32, drained bool) {
	switch {
	case before > 0 && replicas == 0 && drained:
		emit(r.Recorder, fn, corev1.EventTypeNormal, eventHandoff, actionScale,
			"Scaled from %d to 0 replicas after every caller's sidecar ACKed the snapshot that drains the function (hand-off).", before)
	case before > 0 && replicas == 0:
		emit(r.Recorder, fn, corev1.EventTypeWarning, eventHandoffTimeout, actionScale,
			"Scaled from %d to 0 replicas after the %s hand-off timeout: some caller sidecars had not ACKed the draining snapshot.", before, r.HandoffTimeout)
	case before == 0 && replicas > 0:
		emit(r.Recorder, fn, corev1.EventTypeNormal, eventScaledFromZero, actionScale, "Scaled from 0 to %d replicas.", replicas)
	}
}

// writeService creates or updates the function's Service; ClusterIP and the rest are the
// API server's.
func (r *MeshFunctionReconciler) writeService(ctx context.Context, fn *meshv1alpha1.MeshFunction) error {
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: fn.Name, Namespace: fn.Namespace}}
	want := workload.FunctionService(fn)
	if _, err := controllerutil.CreateOrUpdate(ctx, r.Client, svc, func() error {
		svc.Labels = want.Labels
		svc.Spec.Selector = want.Spec.Selector
		svc.Spec.Ports = want.Spec.Ports
		return controllerutil.SetControllerReference(fn, svc, r.Scheme())
	}); err != nil {
		return fmt.Errorf("reconciling Service of MeshFunction %s/%s: %w", fn.Namespace, fn.Name, err)
	}
	return nil
}

// replicas decides the Deployment's replica count: initial scale for a new Deployment,
// otherwise the autoscaler's latest decision, except that the step to zero waits for the
// hand-off. It records the decision in status.desiredReplicas, which the snapshot translator
// reads to stop callers from sending new requests to a function about to reach zero.
//
// drained is true when the step to zero was taken because every caller ACKed the draining
// snapshot, false when the hand-off timed out.
func (r *MeshFunctionReconciler) replicas(fn *meshv1alpha1.MeshFunction, current *appsv1.Deployment, exists bool, status *meshv1alpha1.MeshFunctionStatus) (n int32, requeue time.Duration, drained bool) {
	nn := types.NamespacedName{Namespace: fn.Namespace, Name: fn.Name}
	if !exists {
		status.DesiredReplicas = initialReplicas(fn)
		return status.DesiredReplicas, 0, false
	}
	have := ptr.Deref(current.Spec.Replicas, 1)
	want := have
	if r.Decisions != nil {
		if d, ok := r.Decisions.Get(keyOf(nn)); ok {
			want = clampReplicas(d.Desired, fn)
		}
	} else {
		want = clampReplicas(have, fn)
	}
	status.DesiredReplicas = want
	if want > 0 || have == 0 {
		delete(r.zeroSince, nn)
		return want, 0, false
	}
	// want == 0 and pods remain: hand off first.
	return r.handOff(nn, have)
}

// setReadiness sets the Available condition from the replica counts.
func (r *MeshFunctionReconciler) setReadiness(fn *meshv1alpha1.MeshFunction, status *meshv1alpha1.MeshFunctionStatus, replicas int32) {
	switch {
	case status.ReadyReplicas > 0:
		setFunctionCondition(status, fn.Generation, meshv1alpha1.ConditionAvailable, metav1.ConditionTrue, meshv1alpha1.ReasonReady,
			fmt.Sprintf("%d of %d replicas ready", status.ReadyReplicas, replicas))
	case replicas == 0:
		setFunctionCondition(status, fn.Generation, meshv1alpha1.ConditionAvailable, metav1.ConditionTrue, meshv1alpha1.ReasonScaledToZero,
			"scaled to zero; the first call starts a pod while the caller's sidecar holds it")
	default:
		setFunctionCondition(status, fn.Generation, meshv1alpha1.ConditionAvailable, metav1.ConditionFalse, meshv1alpha1.ReasonDeploying,
			fmt.Sprintf("waiting for %d replicas to become ready; see kubectl get pods -l %s=%s -n %s", replicas, workload.LabelFunction, fn.Name, fn.Namespace))
	}
}

// writeStatus patches the status subresource unless nothing changed.
func (r *MeshFunctionReconciler) writeStatus(ctx context.Context, fn *meshv1alpha1.MeshFunction, status *meshv1alpha1.MeshFunctionStatus) error {
	// Ready sums up this controller's Available and the snapshot reconciler's conditions;
	// whichever writes last sees both (the optimistic lock makes sure of it).
	summarize(&status.Conditions, "MeshFunction", fn.Generation)
	if equality.Semantic.DeepEqual(fn.Status, *status) {
		return nil
	}
	before := fn.Status.Conditions
	// The snapshot reconciler writes this status's Accepted/Programmed conditions too; the
	// optimistic lock turns a lost update into a conflict and a retry.
	patch := client.MergeFromWithOptions(fn.DeepCopy(), client.MergeFromWithOptimisticLock{})
	fn.Status = *status
	if err := r.Status().Patch(ctx, fn, patch); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("writing status of MeshFunction %s/%s: %w", fn.Namespace, fn.Name, err)
	}
	// Only Available is this controller's; the snapshot reconciler records the others.
	emitTransitions(r.Recorder, fn, onlyType(before, meshv1alpha1.ConditionAvailable), onlyType(fn.Status.Conditions, meshv1alpha1.ConditionAvailable))
	return nil
}

func setFunctionCondition(status *meshv1alpha1.MeshFunctionStatus, gen int64, typ string, s metav1.ConditionStatus, reason, msg string) {
	meta.SetStatusCondition(&status.Conditions, metav1.Condition{
		Type: typ, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen,
	})
}

// replicaStatusChanged passes MeshFunction updates whose status replica counts changed.
type replicaStatusChanged struct{ predicate.Funcs }

func (replicaStatusChanged) Update(e event.UpdateEvent) bool {
	o, ok1 := e.ObjectOld.(*meshv1alpha1.MeshFunction)
	n, ok2 := e.ObjectNew.(*meshv1alpha1.MeshFunction)
	return ok1 && ok2 && (o.Status.DesiredReplicas != n.Status.DesiredReplicas ||
		o.Status.Replicas != n.Status.Replicas || o.Status.ReadyReplicas != n.Status.ReadyReplicas)
}
