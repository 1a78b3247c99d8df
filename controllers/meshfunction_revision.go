package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/autoscale"
	"github.com/weftmesh/weft/internal/workload"
)

// Revisions (a MeshFunction with spec.traffic). Each distinct spec.template gets a revision:
// a Deployment named after it, created once with that template and afterwards changed only
// in its replicas, labelled meshv1alpha1.LabelRevision. The Deployments are the record of which revisions
// exist (status.revisions reports them): a status lost or rewritten by a backup restore
// cannot lose a revision or reuse its number. No Revision kind: a revision has nothing a
// user edits, so a second object would only repeat its Deployment.
const (
	// annotationRevisionHash is the hash of spec.template the revision was created from.
	annotationRevisionHash = "weft.dev/revision-template-hash"
	// annotationRevisionNumber orders revisions (the n of <function>-<n>, also for revisions
	// with a user-given name).
	annotationRevisionNumber = "weft.dev/revision-number"
	// annotationRevisionSpec is what the revision was created from and the Deployment is
	// rendered from (revisionSpec as JSON): a revision's pods can be rendered again when the
	// manager's rendering changes (a new sidecar image after an upgrade), without the
	// function's current spec.
	annotationRevisionSpec = "weft.dev/revision-spec"
	// maxRecordedRevisionSpec bounds that annotation: an object's annotations may total
	// 256 KiB, so a larger template is not recorded (its revision is then never rendered
	// again, as before).
	maxRecordedRevisionSpec = 128 << 10
	// defaultRevisionHistoryLimit is spec.revisionHistoryLimit's default.
	defaultRevisionHistoryLimit = 10
)

// RevisionName is the generated name of a function's n-th revision: <function>-<n>, n
// zero-padded to five digits as Knative's <service>-00001.
func RevisionName(fn string, n int) string { return fmt.Sprintf("%s-%05d", fn, n) }

// TemplateHash identifies a MeshFunction's spec.template: equal templates hash equal
// (encoding/json sorts map keys), so only a template change creates a revision.
func TemplateHash(fn *meshv1alpha1.MeshFunction) string {
	b, err := json.Marshal(fn.Spec.Template)
	if err != nil {
		b = []byte(err.Error()) // unreachable for a decoded template; still deterministic
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// revision is one revision as its Deployment records it.
type revision struct {
	name   string
	number int
	hash   string
	dep    *appsv1.Deployment
}

// listRevisions returns fn's revision Deployments, newest first, and the legacy
// single Deployment named after fn if Weft created one before revisions were turned on.
func (r *MeshFunctionReconciler) listRevisions(ctx context.Context, fn *meshv1alpha1.MeshFunction) (revs []revision, legacy *appsv1.Deployment, err error) {
	return listRevisionDeployments(ctx, r, fn)
}

// listRevisionDeployments is listRevisions reading through c (the reconciler's cache, or
// the admission webhook's uncached reader).
func listRevisionDeployments(ctx context.Context, c client.Reader, fn *meshv1alpha1.MeshFunction) (revs []revision, legacy *appsv1.Deployment, err error) {
	var deps appsv1.DeploymentList
	if err := c.List(ctx, &deps, client.InNamespace(fn.Namespace), client.MatchingLabels{workload.LabelFunction: fn.Name}); err != nil {
		return nil, nil, fmt.Errorf("listing Deployments of MeshFunction %s/%s: %w", fn.Namespace, fn.Name, err)
	}
	for i := range deps.Items {
		d := &deps.Items[i]
		if !metav1.IsControlledBy(d, fn) {
			continue
		}
		name, ok := d.Labels[meshv1alpha1.LabelRevision]
		if !ok {
			if d.Name == fn.Name {
				legacy = d
			}
			continue
		}
		n, _ := strconv.Atoi(d.Annotations[annotationRevisionNumber])
		revs = append(revs, revision{name: name, number: n, hash: d.Annotations[annotationRevisionHash], dep: d})
	}
	sort.Slice(revs, func(i, j int) bool {
		if revs[i].number != revs[j].number {
			return revs[i].number > revs[j].number
		}
		return revs[i].name < revs[j].name
	})
	return revs, legacy, nil
}

// reconcileRevisions runs a MeshFunction with spec.traffic: it creates the revision of the
// current template if there is none, resolves spec.traffic against the revisions, deletes
// revisions past the history limit that nothing routes to, and scales every revision on
// its own.
func (r *MeshFunctionReconciler) reconcileRevisions(ctx context.Context, fn *meshv1alpha1.MeshFunction, status *meshv1alpha1.MeshFunctionStatus) (ctrl.Result, error) {
	log := logf.FromContext(ctx)
	if svc, err := r.foreignService(ctx, fn); err != nil {
		return ctrl.Result{}, err
	} else if svc != nil {
		setFunctionCondition(status, fn.Generation, meshv1alpha1.ConditionAvailable, metav1.ConditionFalse, meshv1alpha1.ReasonNameConflict,
			nameConflictMessage(svc, "MeshFunction", fn.Name))
		return ctrl.Result{}, r.writeStatus(ctx, fn, status)
	}
	revs, legacy, err := r.listRevisions(ctx, fn)
	if err != nil {
		return ctrl.Result{}, err
	}
	if legacy != nil {
		// Turning revisions on: the function's calls now go to its revisions, so the single
		// Deployment of before serves nobody.
		if err := r.Delete(ctx, legacy); err != nil && !apierrors.IsNotFound(err) {
			return ctrl.Result{}, fmt.Errorf("deleting Deployment %s/%s of MeshFunction %s/%s (revisions replace it): %w", legacy.Namespace, legacy.Name, fn.Namespace, fn.Name, err)
		}
		if r.Scaler != nil {
			r.Scaler.Remove(keyOf(types.NamespacedName{Namespace: fn.Namespace, Name: fn.Name}))
		}
	}

	created, problem, err := r.ensureRevision(ctx, fn, revs)
	if err != nil {
		return ctrl.Result{}, err
	}
	if problem != nil && len(revs) == 0 {
		setFunctionCondition(status, fn.Generation, meshv1alpha1.ConditionAvailable, metav1.ConditionFalse, problem.reason, problem.message)
		return ctrl.Result{}, r.writeStatus(ctx, fn, status)
	}
	// A template that cannot become a revision leaves the existing ones serving and scaling.
	if created != nil {
		log.Info("revision created", "revision", created.name)
		emit(r.Recorder, fn, corev1.EventTypeNormal, "RevisionCreated", "Create", "Created revision %s (Deployment %s/%s) for the new spec.template.", created.name, fn.Namespace, created.name)
		revs = append([]revision{*created}, revs...)
	}

	prev := map[string]meshv1alpha1.RevisionStatus{}
	for _, rs := range status.Revisions {
		prev[rs.Name] = rs
	}
	latestReady := ""
	for _, rv := range revs {
		if prev[rv.name].Ready || rv.dep.Status.ReadyReplicas > 0 {
			latestReady = rv.name
			break
		}
	}
	status.LatestCreatedRevisionName = revs[0].name
	status.LatestReadyRevisionName = latestReady

	traffic, missing := resolveTraffic(fn, revs, latestReady, r.Options.ClusterDomain)
	if missing != "" {
		// Keep serving the split of before (Knative's route does the same).
		traffic = status.Traffic
	}
	status.Traffic = traffic

	routed := map[string]bool{revs[0].name: true, latestReady: true}
	for _, t := range traffic {
		routed[t.RevisionName] = true
	}
	revs, err = r.pruneRevisions(ctx, fn, revs, routed)
	if err != nil {
		return ctrl.Result{}, err
	}

	var requeue time.Duration
	status.Replicas, status.ReadyReplicas, status.DesiredReplicas = 0, 0, 0
	keys := map[autoscale.FunctionKey]bool{}
	for i := range revs {
		rv := &revs[i]
		after, wait, err := r.scaleRevision(ctx, fn, rv, routed[rv.name], prev[rv.name])
		if err != nil {
			setFunctionCondition(status, fn.Generation, meshv1alpha1.ConditionAvailable, metav1.ConditionFalse, meshv1alpha1.ReasonWorkloadFailed,
				fmt.Sprintf("scaling Deployment %s/%s of revision %s failed: %v", fn.Namespace, rv.name, rv.name, err))
			_ = r.writeStatus(ctx, fn, status)
			return ctrl.Result{}, err
		}
		if wait > 0 && (requeue == 0 || wait < requeue) {
			requeue = wait
		}
		keys[keyOf(types.NamespacedName{Namespace: fn.Namespace, Name: rv.name})] = true
		status.Replicas += rv.dep.Status.Replicas
		status.ReadyReplicas += rv.dep.Status.ReadyReplicas
		status.DesiredReplicas += after.DesiredReplicas
		prev[rv.name] = after
	}
	r.trackRevisionKeys(types.NamespacedName{Namespace: fn.Namespace, Name: fn.Name}, keys)
	if r.Scaler != nil {
		latest := latestReady
		if latest == "" {
			latest = revs[0].name
		}
		r.Scaler.SetAlias(keyOf(types.NamespacedName{Namespace: fn.Namespace, Name: fn.Name}), keyOf(types.NamespacedName{Namespace: fn.Namespace, Name: latest}))
	}
	status.Revisions = revisionStatuses(revs, nil)
	for i := range status.Revisions {
		rs := &status.Revisions[i]
		p := prev[rs.Name]
		rs.DesiredReplicas, rs.Ready = p.DesiredReplicas, p.Ready || rs.ReadyReplicas > 0
	}
	if err := r.writeService(ctx, fn); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.writeTagServices(ctx, fn, status.Traffic); err != nil {
		return ctrl.Result{}, err
	}
	switch {
	case problem != nil:
		setFunctionCondition(status, fn.Generation, meshv1alpha1.ConditionAvailable, metav1.ConditionFalse, problem.reason, problem.message)
	case missing != "":
		setFunctionCondition(status, fn.Generation, meshv1alpha1.ConditionAvailable, metav1.ConditionFalse, meshv1alpha1.ReasonRevisionMissing, missing)
	default:
		r.setReadiness(fn, status, status.DesiredReplicas)
	}
	if err := r.writeStatus(ctx, fn, status); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: requeue}, nil
}

// foreignService returns the function's Service when another owner controls it.
func (r *MeshFunctionReconciler) foreignService(ctx context.Context, fn *meshv1alpha1.MeshFunction) (client.Object, error) {
	svc := &corev1.Service{}
	if err := r.Get(ctx, client.ObjectKeyFromObject(fn), svc); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, err
	}
	if !metav1.IsControlledBy(svc, fn) {
		return svc, nil
	}
	return nil, nil
}

// conditionProblem is a reason and message for Available=False.
type conditionProblem struct{ reason, message string }

// ensureRevision creates the revision of fn's current template unless the newest revision
// has it. A user-given name (spec.template.metadata.name) that an older revision of another
// template holds, or a Deployment of the revision's name that Weft does not control, is a
// problem for the user to fix.
func (r *MeshFunctionReconciler) ensureRevision(ctx context.Context, fn *meshv1alpha1.MeshFunction, revs []revision) (*revision, *conditionProblem, error) {
	name, number, hash, creates := nextRevision(fn, revs)
	if !creates {
		return nil, nil, nil
	}
	if given := fn.Spec.Template.Name; given != "" {
		for _, rv := range revs {
			if rv.name == given {
				return nil, &conditionProblem{meshv1alpha1.ReasonInvalid, fmt.Sprintf(
					"spec.template.metadata.name %q is revision %s, created from another template; a changed template needs a new name (or remove the name to get %s)",
					given, given, RevisionName(fn.Name, number))}, nil
			}
		}
	}
	if len(name) > 63 {
		return nil, &conditionProblem{meshv1alpha1.ReasonInvalid, fmt.Sprintf(
			"revision name %q is longer than 63 characters; shorten the MeshFunction's name or set spec.template.metadata.name", name)}, nil
	}
	existing := &appsv1.Deployment{}
	if err := r.Get(ctx, types.NamespacedName{Namespace: fn.Namespace, Name: name}, existing); err == nil {
		return nil, &conditionProblem{meshv1alpha1.ReasonNameConflict, nameConflictMessage(existing, "revision", name)}, nil
	} else if !apierrors.IsNotFound(err) {
		return nil, nil, err
	}
	dep, err := revisionDeployment(fn, name, number, hash, initialReplicas(fn), r.Options)
	if err != nil {
		return nil, &conditionProblem{meshv1alpha1.ReasonInvalid, err.Error()}, nil
	}
	if err := ctrl.SetControllerReference(fn, dep, r.Scheme()); err != nil {
		return nil, nil, err
	}
	if err := r.Create(ctx, dep); err != nil {
		return nil, nil, fmt.Errorf("creating Deployment %s/%s of MeshFunction %s/%s: %w", fn.Namespace, name, fn.Namespace, fn.Name, err)
	}
	return &revision{name: name, number: number, hash: hash, dep: dep}, nil, nil
}

// nextRevision is the revision fn's current template makes, given its revisions newest
// first: creates is false when the newest revision already has the template. Its name is
// spec.template.metadata.name, or <function>-<n> after the newest revision's number.
func nextRevision(fn *meshv1alpha1.MeshFunction, revs []revision) (name string, number int, hash string, creates bool) {
	hash = TemplateHash(fn)
	if len(revs) > 0 && revs[0].hash == hash {
		return "", 0, hash, false
	}
	number = 1
	if len(revs) > 0 {
		number = revs[0].number + 1
	}
	// Nor a number status still remembers (revision Deployments deleted by hand): a name
	// that traffic, tags or callers knew must not come back with another template.
	remembered := []string{fn.Status.LatestCreatedRevisionName, fn.Status.LatestReadyRevisionName}
	for _, rs := range fn.Status.Revisions {
		remembered = append(remembered, rs.Name)
	}
	for _, r := range remembered {
		if n, ok := generatedRevisionNumber(fn.Name, r); ok && n >= number {
			number = n + 1
		}
	}
	name = RevisionName(fn.Name, number)
	if given := fn.Spec.Template.Name; given != "" {
		name = given
	}
	return name, number, hash, true
}

// generatedRevisionNumber is n when name is RevisionName(fn, n).
func generatedRevisionNumber(fn, name string) (int, bool) {
	digits, ok := strings.CutPrefix(name, fn+"-")
	if !ok || len(digits) < 5 || len(digits) > 9 {
		return 0, false
	}
	n, err := strconv.Atoi(digits)
	if err != nil || n < 1 || RevisionName(fn, n) != name {
		return 0, false
	}
	return n, true
}

// resolveTraffic turns spec.traffic into the served split: latestRevision targets go to
// the newest ready revision (the newest revision while none is ready yet: callers' sidecars
// hold calls until it is). missing, when set, says which revision name is unknown.
func resolveTraffic(fn *meshv1alpha1.MeshFunction, revs []revision, latestReady, clusterDomain string) (out []meshv1alpha1.TrafficStatus, missing string) {
	have := map[string]bool{}
	names := make([]string, 0, len(revs))
	for _, rv := range revs {
		have[rv.name] = true
		names = append(names, rv.name)
	}
	latest := latestReady
	if latest == "" && len(revs) > 0 {
		latest = revs[0].name
	}
	for i, t := range fn.Spec.Traffic {
		ts := meshv1alpha1.TrafficStatus{RevisionName: t.RevisionName, Percent: t.Percent, Tag: t.Tag}
		if ptr.Deref(t.LatestRevision, false) {
			ts.RevisionName, ts.LatestRevision = latest, ptr.To(true)
		} else if !have[t.RevisionName] {
			return nil, fmt.Sprintf("spec.traffic[%d].revisionName %q is not a revision of this function (it has %s); the split served before stays: name one of these, or use latestRevision: true",
				i, t.RevisionName, strings.Join(names, ", "))
		}
		if t.Tag != "" {
			ts.URL = workload.FunctionURL(fn.Namespace, t.Tag+"-"+fn.Name, clusterDomain)
		}
		out = append(out, ts)
	}
	return out, ""
}

// pruneRevisions deletes the oldest revisions that nothing routes to, beyond
// spec.revisionHistoryLimit of them, and returns the kept ones.
func (r *MeshFunctionReconciler) pruneRevisions(ctx context.Context, fn *meshv1alpha1.MeshFunction, revs []revision, routed map[string]bool) ([]revision, error) {
	limit := int(ptr.Deref(fn.Spec.RevisionHistoryLimit, defaultRevisionHistoryLimit))
	kept := revs[:0:0]
	idle := 0
	for _, rv := range revs {
		if routed[rv.name] {
			kept = append(kept, rv)
			continue
		}
		idle++
		if idle <= limit {
			kept = append(kept, rv)
			continue
		}
		if err := r.Delete(ctx, rv.dep); err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("deleting revision %s/%s of MeshFunction %s (beyond revisionHistoryLimit %d): %w", fn.Namespace, rv.name, fn.Name, limit, err)
		}
		if r.Scaler != nil {
			r.Scaler.Remove(keyOf(types.NamespacedName{Namespace: fn.Namespace, Name: rv.name}))
		}
		if r.Decisions != nil {
			r.Decisions.Forget(keyOf(types.NamespacedName{Namespace: fn.Namespace, Name: rv.name}))
		}
		delete(r.zeroSince, types.NamespacedName{Namespace: fn.Namespace, Name: rv.name})
		emit(r.Recorder, fn, corev1.EventTypeNormal, "RevisionDeleted", "Delete", "Deleted revision %s: no traffic, and more than %d such revisions are kept.", rv.name, limit)
	}
	return kept, nil
}

// scaleRevision hands one revision to the autoscaler (key: namespace/revision) and writes
// its decision to the revision's Deployment replicas, handing off before zero as for a
// function. A revision nothing routes to has no minimum: it scales to zero once idle.
func (r *MeshFunctionReconciler) scaleRevision(ctx context.Context, fn *meshv1alpha1.MeshFunction, rv *revision, routed bool, prev meshv1alpha1.RevisionStatus) (meshv1alpha1.RevisionStatus, time.Duration, error) {
	nn := types.NamespacedName{Namespace: fn.Namespace, Name: rv.name}
	minScale, maxScale := fn.Spec.Scale.Min, fn.Spec.Scale.Max
	if !routed {
		minScale = 0
	}
	if r.Decisions != nil {
		r.Decisions.Own(keyOf(nn), fn.Name)
	}
	if r.Scaler != nil {
		spec := scaleSpec(fn)
		spec.MinScale = minScale
		r.Scaler.SetReady(keyOf(nn), int(rv.dep.Status.ReadyReplicas))
		r.Scaler.SetSpec(keyOf(nn), spec)
	}
	have := ptr.Deref(rv.dep.Spec.Replicas, 1)
	want := have
	if r.Decisions != nil {
		if d, ok := r.Decisions.Get(keyOf(nn)); ok {
			want = d.Desired
		}
	}
	want = clampTo(want, minScale, maxScale)
	out := prev
	out.DesiredReplicas = want
	n, wait, drained := want, time.Duration(0), false
	if want == 0 && have > 0 {
		n, wait, drained = r.handOff(nn, have)
	} else {
		delete(r.zeroSince, nn)
	}
	rr := r.rerender(ctx, fn, rv)
	if n != have || rr.template != nil || rr.record != "" {
		patch := client.MergeFrom(rv.dep.DeepCopy())
		rv.dep.Spec.Replicas = ptr.To(n)
		if rr.template != nil {
			rv.dep.Spec.Template = *rr.template
		}
		if rr.record != "" {
			if rv.dep.Annotations == nil {
				rv.dep.Annotations = map[string]string{}
			}
			rv.dep.Annotations[annotationRevisionSpec] = rr.record
		}
		if err := r.Patch(ctx, rv.dep, patch); err != nil {
			return out, 0, err
		}
		if n != have {
			r.emitScaleEvent(fn, have, n, drained)
		}
		if rr.template != nil {
			emit(r.Recorder, fn, corev1.EventTypeNormal, "RevisionRerendered", "Update",
				"Rendered revision %s's pods again (%s): its Deployment %s/%s rolls them; the revision's template is unchanged.", rv.name, rr.why, fn.Namespace, rv.name)
		}
	}
	return out, wait, nil
}

// handOff decides whether a function or revision going to zero may lose its last pods now:
// once every caller's sidecar ACKed the snapshot draining it, or after HandoffTimeout.
func (r *MeshFunctionReconciler) handOff(nn types.NamespacedName, have int32) (n int32, wait time.Duration, drained bool) {
	since, ok := r.zeroSince[nn]
	if !ok {
		since = r.Clock.Now()
		r.zeroSince[nn] = since
	}
	if r.Handoff != nil && r.Handoff.Drained(nn) {
		delete(r.zeroSince, nn)
		observeHandoff(r.Clock.Since(since), true)
		return 0, 0, true
	}
	if r.Clock.Since(since) >= r.HandoffTimeout {
		delete(r.zeroSince, nn)
		observeHandoff(r.Clock.Since(since), false)
		return 0, 0, false
	}
	return have, 500 * time.Millisecond, false
}

func clampTo(n, minScale, maxScale int32) int32 {
	if n < minScale {
		n = minScale
	}
	if maxScale > 0 && n > maxScale {
		n = maxScale
	}
	return n
}

// revisionStatuses reports revs, newest first, from their Deployments.
func revisionStatuses(revs []revision, prev []meshv1alpha1.RevisionStatus) []meshv1alpha1.RevisionStatus {
	old := map[string]meshv1alpha1.RevisionStatus{}
	for _, p := range prev {
		old[p.Name] = p
	}
	out := make([]meshv1alpha1.RevisionStatus, 0, len(revs))
	for _, rv := range revs {
		rs := old[rv.name]
		rs.Name, rs.TemplateHash = rv.name, rv.hash
		rs.CreationTimestamp = rv.dep.CreationTimestamp
		rs.Replicas, rs.ReadyReplicas = rv.dep.Status.Replicas, rv.dep.Status.ReadyReplicas
		out = append(out, rs)
	}
	return out
}

// trackRevisionKeys remembers the autoscaler keys of a function's revisions, so deleting
// the function forgets them all.
func (r *MeshFunctionReconciler) trackRevisionKeys(fn types.NamespacedName, keys map[autoscale.FunctionKey]bool) {
	if len(keys) == 0 && r.Scaler != nil && r.revisionKeys[fn] != nil {
		r.Scaler.SetAlias(keyOf(fn), autoscale.FunctionKey{})
	}
	if r.revisionKeys == nil {
		r.revisionKeys = map[types.NamespacedName]map[autoscale.FunctionKey]bool{}
	}
	for k := range r.revisionKeys[fn] {
		if !keys[k] {
			r.forgetKey(k)
		}
	}
	if len(keys) == 0 {
		delete(r.revisionKeys, fn)
		return
	}
	r.revisionKeys[fn] = keys
}

// isRevisionKey reports whether k is the autoscaler key of some function's revision.
func (r *MeshFunctionReconciler) isRevisionKey(k autoscale.FunctionKey) bool {
	for _, keys := range r.revisionKeys {
		if keys[k] {
			return true
		}
	}
	return false
}

// forgetKey drops an autoscaler key and its in-memory state.
func (r *MeshFunctionReconciler) forgetKey(k autoscale.FunctionKey) {
	if r.Scaler != nil {
		r.Scaler.Remove(k)
	}
	if r.Decisions != nil {
		r.Decisions.Forget(k)
	}
	delete(r.zeroSince, types.NamespacedName{Namespace: k.Namespace, Name: k.Name})
}

// dropRevisions deletes the revisions of a function whose spec.traffic was removed, once
// its single Deployment has a ready pod (until then the revisions' pods, which carry the
// function's label, keep serving its calls), and clears the revision fields of status.
func (r *MeshFunctionReconciler) dropRevisions(ctx context.Context, fn *meshv1alpha1.MeshFunction, status *meshv1alpha1.MeshFunctionStatus, dep *appsv1.Deployment) error {
	revs, _, err := r.listRevisions(ctx, fn)
	if err != nil {
		return err
	}
	if len(revs) > 0 && dep.Status.ReadyReplicas == 0 && ptr.Deref(dep.Spec.Replicas, 1) > 0 {
		return nil
	}
	for _, rv := range revs {
		if err := r.Delete(ctx, rv.dep); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting revision %s/%s of MeshFunction %s (spec.traffic was removed): %w", fn.Namespace, rv.name, fn.Name, err)
		}
	}
	if err := r.writeTagServices(ctx, fn, nil); err != nil {
		return err
	}
	r.trackRevisionKeys(types.NamespacedName{Namespace: fn.Namespace, Name: fn.Name}, nil)
	status.Revisions, status.Traffic = nil, nil
	status.LatestCreatedRevisionName, status.LatestReadyRevisionName = "", ""
	return nil
}
