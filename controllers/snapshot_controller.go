package controllers

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/snapshot"
	"github.com/weftmesh/weft/internal/xds"
)

// snapshotKey is the one reconcile key: xDS state depends on every object at once, so any
// change rebuilds everything (as Contour and Envoy Gateway do) — except an EndpointSlice
// change, which rebuilds only the changed Services' endpoints (snapshot.UpdateEndpoints).
// The workqueue coalesces a burst of events into one pass without a debounce delay.
var snapshotKey = reconcile.Request{NamespacedName: types.NamespacedName{Name: "weft-xds-snapshot"}}

// SnapshotCache is where the reconciler puts each translation.
type SnapshotCache interface {
	SetResult(ctx context.Context, r *snapshot.Result) error
	xds.VersionSource
}

// NodeSource reports the connected sidecars and what they ACKed and NACKed.
type NodeSource interface {
	Nodes() []xds.NodeState
}

// SnapshotReconciler rebuilds the xDS snapshot from every MeshRoute, MeshFunction and
// RedisProxy (and the Services, EndpointSlices, Pod labels and Secrets they name) and, on
// the leader, writes each object's Accepted, ResolvedRefs and Programmed conditions. It
// runs on every replica so that followers serve fresh snapshots too.
type SnapshotReconciler struct {
	Client client.Client
	// APIReader reads the Secrets RedisProxies name, uncached: the manager caches only
	// Secret metadata, never every Secret's data.
	APIReader client.Reader
	Cache     SnapshotCache
	Nodes     NodeSource
	// Elected is closed once this replica leads; status is written only then.
	Elected <-chan struct{}
	// Queue, when set before the manager starts, tells every sidecar where async calls go.
	Queue *snapshot.Queue
	// OutboundTrafficPolicy is the mesh-wide treatment of destinations that are no
	// Service (ALLOW_ANY when empty, as Istio), set before the manager starts.
	OutboundTrafficPolicy contract.OutboundTrafficPolicy
	// Recorder, when set, records an events.k8s.io/v1 Event per condition transition.
	Recorder events.EventRecorder

	events  chan event.GenericEvent
	secrets atomic.Pointer[map[string]bool]
	// dirty is set by every Kubernetes event; sidecar events (ACK, NACK, connect) leave it
	// unset, so their reconciles recompute status from the last translation instead of
	// listing and translating everything again.
	dirty atomic.Bool
	// endpoints are the Services ("<ns>/<name>") whose EndpointSlices changed since the last
	// pass, for the endpoint-only fast path. A flood of slice events is coalesced here: the
	// set holds at most one entry per Service whatever the number of events, and one pass
	// rebuilds each changed Service's assignments once.
	endpointsMu sync.Mutex
	endpoints   map[string]bool
	// fullPasses and endpointPasses count translations and endpoint-only updates.
	fullPasses, endpointPasses atomic.Int64
	last                       *translation
	// grants is true when the ReferenceGrant CRD is installed (checked at set-up).
	grants bool
	// rings remembers each pool's last programmed ring (only Reconcile touches it; it
	// runs one at a time).
	rings map[string]*ringState
}

// translation is the last Result set and the input of the last full translation. After an
// endpoint-only update res's endpoints are newer than in's EndpointSlices; status writing
// reads only in's Weft objects.
type translation struct {
	in  *snapshot.Input
	res *snapshot.Result
}

// markEndpoints notes that Service svc's slices changed.
func (r *SnapshotReconciler) markEndpoints(svc string) {
	r.endpointsMu.Lock()
	defer r.endpointsMu.Unlock()
	if r.endpoints == nil {
		r.endpoints = map[string]bool{}
	}
	r.endpoints[svc] = true
}

// sliceChanged maps an EndpointSlice event: it marks the slice's Service (translation reads
// only slices labelled with one) and asks for a pass.
func (r *SnapshotReconciler) sliceChanged(o client.Object) []reconcile.Request {
	svc := o.GetLabels()[discoveryv1.LabelServiceName]
	if svc == "" {
		return nil
	}
	r.markEndpoints(o.GetNamespace() + "/" + svc)
	return []reconcile.Request{snapshotKey}
}

// takeEndpoints returns and clears the set of changed Services.
func (r *SnapshotReconciler) takeEndpoints() map[string]bool {
	r.endpointsMu.Lock()
	defer r.endpointsMu.Unlock()
	out := r.endpoints
	r.endpoints = nil
	return out
}

// NewSnapshotReconciler wires a reconciler; set Nodes before the manager starts.
func NewSnapshotReconciler(c client.Client, apiReader client.Reader, cache SnapshotCache, elected <-chan struct{}) *SnapshotReconciler {
	r := &SnapshotReconciler{Client: c, APIReader: apiReader, Cache: cache, Elected: elected, events: make(chan event.GenericEvent, 1)}
	r.secrets.Store(&map[string]bool{})
	return r
}

// Notify asks for a status recomputation (a sidecar connected, ACKed or NACKed). It never
// blocks: one pending request is enough, as the reconcile reads the latest state.
func (r *SnapshotReconciler) Notify() {
	select {
	case r.events <- event.GenericEvent{Object: &metav1.PartialObjectMetadata{}}:
	default:
	}
}

// Resync asks for a full translation and snapshot of every view even though no Kubernetes
// object changed: something the snapshot reads from outside them did (the external queue's
// minted credentials were renewed or re-granted, internal/queue Issuer). It never blocks.
func (r *SnapshotReconciler) Resync() {
	r.dirty.Store(true)
	r.Notify()
}

// SetupWithManager registers the controller; it does not need leader election.
func (r *SnapshotReconciler) SetupWithManager(mgr ctrl.Manager) error {
	all := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		r.dirty.Store(true)
		return []reconcile.Request{snapshotKey}
	})
	status := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{snapshotKey}
	})
	// An EndpointSlice change is endpoint-only: it names its Service (for an update, both the
	// old and the new object are mapped, so a slice that changes Service marks both).
	// Translation reads only slices labelled with a Service.
	endpoints := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		return r.sliceChanged(o)
	})
	spec := builder.WithPredicates(predicate.GenerationChangedPredicate{})
	r.grants = referenceGrantsInstalled(mgr.GetRESTMapper())
	if !r.grants {
		mgr.GetLogger().Info("the ReferenceGrant CRD (gateway.networking.k8s.io/v1beta1) is not installed: MeshRoutes may use only hosts and Services of their own namespace; install Gateway API's CRDs and restart the manager to allow more")
	}
	referenced := builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool {
		return (*r.secrets.Load())[o.GetNamespace()+"/"+o.GetName()]
	}))
	// A replica that becomes leader has no event telling it to write status: this runnable
	// starts only on election and asks for one pass.
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		r.Notify()
		<-ctx.Done()
		return nil
	})); err != nil {
		return err
	}
	b := ctrl.NewControllerManagedBy(mgr).
		Named("snapshot").
		WithOptions(controller.Options{NeedLeaderElection: ptr.To(false), MaxConcurrentReconciles: 1}).
		Watches(&meshv1alpha1.MeshRoute{}, all, spec).
		Watches(&meshv1alpha1.MeshFunction{}, all, builder.WithPredicates(predicate.Or[client.Object](
			predicate.GenerationChangedPredicate{}, zeroAnnouncementChanged{}))).
		Watches(&meshv1alpha1.RedisProxy{}, all, spec).
		Watches(&meshv1alpha1.MeshPolicy{}, all, spec).
		Watches(&corev1.Service{}, all).
		Watches(&discoveryv1.EndpointSlice{}, endpoints).
		WatchesMetadata(&corev1.Pod{}, all, builder.WithPredicates(predicate.LabelChangedPredicate{})).
		WatchesMetadata(&corev1.Secret{}, all, referenced).
		// Deployments only by metadata, and only when created, deleted or their owner
		// changes: a function's or standalone proxy's name may be taken by one (NameConflict).
		WatchesMetadata(&appsv1.Deployment{}, all, builder.WithPredicates(ownersChanged{})).
		WatchesRawSource(source.Channel(r.events, status))
	if r.grants {
		b = b.Watches(newReferenceGrant(), all, spec)
	}
	return b.Complete(r)
}

// Reconcile lists everything, translates it, sets the snapshots and, on the leader, writes
// status. When only EndpointSlices changed since the last pass it lists just the changed
// Services' slices and rebuilds just their endpoints (snapshot.UpdateEndpoints); every
// other resource and version stays, so sidecars get only EDS.
func (r *SnapshotReconciler) Reconcile(ctx context.Context, _ reconcile.Request) (ctrl.Result, error) {
	// Swap and take before listing: an event that arrives while we list sets them again and
	// queues another pass, so what we publish is never older than what the events saw.
	full := r.dirty.Swap(false) || r.last == nil
	changed := r.takeEndpoints()
	if !full && len(changed) > 0 {
		done, err := r.updateEndpoints(ctx, changed)
		if err != nil {
			r.dirty.Store(true)
			return ctrl.Result{}, err
		}
		full = !done
	}
	if full {
		in, err := r.input(ctx)
		if err != nil {
			r.dirty.Store(true)
			return ctrl.Result{}, err
		}
		start := time.Now()
		res := snapshot.Translate(in)
		translationSeconds.Observe(time.Since(start).Seconds())
		r.fullPasses.Add(1)
		if err := r.Cache.SetResult(ctx, res); err != nil {
			r.dirty.Store(true)
			return ctrl.Result{}, fmt.Errorf("setting xDS snapshots: %w", err)
		}
		r.last = &translation{in: in, res: res}
	}
	in, res := r.last.in, r.last.res
	select {
	case <-r.Elected:
	default:
		return ctrl.Result{}, nil // followers serve xDS but leave status to the leader
	}
	var nodes []xds.NodeState
	if r.Nodes != nil {
		nodes = r.Nodes.Nodes()
	}
	if err := r.writeStatus(ctx, in, res, xds.Sync(res, nodes, r.Cache)); err != nil {
		r.dirty.Store(true) // re-read the objects: another writer may have changed them
		return ctrl.Result{}, err
	}
	return ctrl.Result{}, nil
}

// updateEndpoints lists the slices of the changed Services and sets the Result with only
// their endpoints rebuilt. It reports false when the change needs a full translation.
func (r *SnapshotReconciler) updateEndpoints(ctx context.Context, changed map[string]bool) (bool, error) {
	ch := make(snapshot.EndpointChange, len(changed))
	for key := range changed {
		ns, name := splitKey(key)
		var l discoveryv1.EndpointSliceList
		if err := r.Client.List(ctx, &l, client.InNamespace(ns), client.MatchingLabels{discoveryv1.LabelServiceName: name}); err != nil {
			return false, fmt.Errorf("listing the EndpointSlices of Service %s: %w", key, err)
		}
		ch[key] = l.Items
	}
	res, ok := r.last.res.UpdateEndpoints(ch)
	if !ok {
		return false, nil
	}
	r.endpointPasses.Add(1)
	if err := r.Cache.SetResult(ctx, res); err != nil {
		return false, fmt.Errorf("setting xDS snapshots: %w", err)
	}
	r.last = &translation{in: r.last.in, res: res}
	return true, nil
}

func (r *SnapshotReconciler) input(ctx context.Context) (*snapshot.Input, error) {
	var (
		routes      meshv1alpha1.MeshRouteList
		functions   meshv1alpha1.MeshFunctionList
		redis       meshv1alpha1.RedisProxyList
		policies    meshv1alpha1.MeshPolicyList
		services    corev1.ServiceList
		slices      discoveryv1.EndpointSliceList
		pods        metav1.PartialObjectMetadataList
		deployments metav1.PartialObjectMetadataList
	)
	pods.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("PodList"))
	deployments.SetGroupVersionKind(appsv1.SchemeGroupVersion.WithKind("DeploymentList"))
	lists := []client.ObjectList{&routes, &functions, &redis, &policies, &services, &slices, &pods, &deployments}
	grants := newReferenceGrantList()
	if r.grants {
		lists = append(lists, grants)
	}
	for _, l := range lists {
		if err := r.Client.List(ctx, l); err != nil {
			return nil, fmt.Errorf("listing %T: %w", l, err)
		}
	}
	in := &snapshot.Input{MeshRoutes: routes.Items, MeshFunctions: functions.Items, RedisProxies: redis.Items, MeshPolicies: policies.Items,
		Services: services.Items, EndpointSlices: slices.Items, Pods: pods.Items, Deployments: deployments.Items, Queue: r.Queue,
		OutboundTrafficPolicy: r.OutboundTrafficPolicy}
	for i := range grants.Items {
		in.ReferenceGrants = append(in.ReferenceGrants, snapshot.ReferenceGrantFrom(grants.Items[i].Object))
	}
	want := map[string]bool{}
	for _, rp := range redis.Items {
		if a := rp.Spec.Auth; a != nil {
			for _, c := range []*meshv1alpha1.RedisCredentials{a.Downstream, a.Upstream} {
				if c != nil {
					want[rp.Namespace+"/"+c.PasswordSecretRef.Name] = true
				}
			}
		}
	}
	r.secrets.Store(&want)
	for key := range want {
		var s corev1.Secret
		ns, name := splitKey(key)
		if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &s); err != nil {
			if apierrors.IsNotFound(err) {
				continue // translation reports it in the RedisProxy's status
			}
			return nil, fmt.Errorf("reading Secret %s: %w", key, err)
		}
		in.Secrets = append(in.Secrets, s)
	}
	return in, nil
}

func splitKey(k string) (string, string) {
	for i := 0; i < len(k); i++ {
		if k[i] == '/' {
			return k[:i], k[i+1:]
		}
	}
	return "", k
}

// writeStatus patches each object whose status changed. A conflict (someone else wrote the
// object meanwhile) requeues: the next pass reads the fresh object.
func (r *SnapshotReconciler) writeStatus(ctx context.Context, in *snapshot.Input, res *snapshot.Result,
	sync map[snapshot.ObjectKey]xds.SyncStatus) error {
	var errs []error
	// patch writes obj's status when the snapshot reconciler's part of it changed; mutate,
	// when set, changes kind-specific fields first.
	patch := func(obj client.Object, st *meshv1alpha1.MeshStatus, key snapshot.ObjectKey, mutate func() bool, extra ...metav1.Condition) bool {
		orig := obj.DeepCopyObject().(client.Object)
		before := append([]metav1.Condition(nil), st.Conditions...)
		changed := mutate != nil && mutate()
		if !applyStatus(st, key.Kind, obj.GetGeneration(), res.Status[key], sync[key], extra...) && !changed {
			return false
		}
		if err := r.Client.Status().Patch(ctx, obj, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
			if !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("writing status of %s: %w", key, err))
			}
			return false
		}
		emitTransitions(r.Recorder, obj, before, st.Conditions)
		return true
	}
	for i := range in.MeshRoutes {
		o := &in.MeshRoutes[i]
		patch(o, &o.Status.MeshStatus, snapshot.ObjectKey{Kind: snapshot.KindMeshRoute, Namespace: o.Namespace, Name: o.Name}, nil)
	}
	for i := range in.MeshFunctions {
		o := &in.MeshFunctions[i]
		patch(o, &o.Status.MeshStatus, snapshot.ObjectKey{Kind: snapshot.KindMeshFunction, Namespace: o.Namespace, Name: o.Name}, nil)
	}
	pools := map[string]bool{}
	for i := range in.RedisProxies {
		o := &in.RedisProxies[i]
		key := snapshot.ObjectKey{Kind: snapshot.KindRedisProxy, Namespace: o.Namespace, Name: o.Name}
		pools[o.Namespace+"/"+o.Name] = true
		total, ready := res.PoolServers(o.Namespace, o.Name)
		s := sync[key]
		warn := r.ringWarning(o, s.Rejected == 0 && s.Synced == s.Subscribed, ready > 0)
		patch(o, &o.Status.MeshStatus, snapshot.ObjectKey{Kind: snapshot.KindRedisProxy, Namespace: o.Namespace, Name: o.Name}, func() bool {
			changed := o.Status.Servers != total || o.Status.ReadyServers != ready
			o.Status.Servers, o.Status.ReadyServers = total, ready
			return changed
		}, poolAvailable(o.Generation, total, ready), warn)
	}
	r.forgetRings(pools)
	for i := range in.MeshPolicies {
		o := &in.MeshPolicies[i]
		patch(o, &o.Status.MeshStatus, snapshot.ObjectKey{Kind: snapshot.KindMeshPolicy, Namespace: o.Namespace, Name: o.Name}, nil)
	}
	if len(errs) > 0 {
		log.FromContext(ctx).Info("some status writes failed; retrying", "failed", len(errs))
	}
	return errors.Join(errs...)
}

// zeroAnnouncementChanged passes MeshFunction updates whose status.desiredReplicas crosses
// zero: the translator sends a function's endpoints DRAINING while its controller announces
// zero, and the hand-off waits for sidecars to ACK exactly that snapshot.
type zeroAnnouncementChanged struct{ predicate.Funcs }

func (zeroAnnouncementChanged) Update(e event.UpdateEvent) bool {
	o, ok1 := e.ObjectOld.(*meshv1alpha1.MeshFunction)
	n, ok2 := e.ObjectNew.(*meshv1alpha1.MeshFunction)
	if !ok1 || !ok2 {
		return false
	}
	return (o.Status.DesiredReplicas == 0) != (n.Status.DesiredReplicas == 0) ||
		(o.Status.ObservedGeneration == 0) != (n.Status.ObservedGeneration == 0)
}
