package controllers

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/event"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/autoscale"
)

// Scaler is what the MeshFunction controller needs from the autoscaler: it tells it each
// function's (or revision's) settings and ready pods, and forgets deleted functions. *autoscale.Autoscaler
// implements it.
type Scaler interface {
	SetSpec(fn autoscale.FunctionKey, spec autoscale.Spec)
	SetReady(fn autoscale.FunctionKey, n int)
	Remove(fn autoscale.FunctionKey)
	// SetAlias sends the signals that name a function with revisions (its async backlog)
	// to the revision its latest traffic goes to; a zero target removes the alias.
	SetAlias(fn, target autoscale.FunctionKey)
}

// Decisions keeps the autoscaler's latest decision per function and wakes the MeshFunction
// controller when one changes. It is the autoscaler's ScaleSink: decisions arrive every 2 s per
// function, so unchanged ones are dropped here and never reach the API server.
type Decisions struct {
	mu     sync.Mutex
	latest map[autoscale.FunctionKey]autoscale.Decision
	// owners maps a revision's key (namespace/revision) to its function's name, so a
	// decision for the revision wakes the function.
	owners map[autoscale.FunctionKey]string
	events chan event.TypedGenericEvent[*meshv1alpha1.MeshFunction]
}

// NewDecisions returns an empty store whose Events channel feeds the controller.
func NewDecisions() *Decisions {
	return &Decisions{
		latest: map[autoscale.FunctionKey]autoscale.Decision{},
		owners: map[autoscale.FunctionKey]string{},
		events: make(chan event.TypedGenericEvent[*meshv1alpha1.MeshFunction], 1024),
	}
}

// SetDesired records d and wakes the controller if the replica count or zero intent changed.
func (s *Decisions) SetDesired(fn autoscale.FunctionKey, d autoscale.Decision) {
	s.mu.Lock()
	old, ok := s.latest[fn]
	s.latest[fn] = d
	owner := s.owners[fn]
	s.mu.Unlock()
	if ok && old.Desired == d.Desired && old.WantsZero == d.WantsZero {
		return
	}
	if ok {
		countScaleDecision(fn, old.Desired, d.Desired)
	}
	obj := &meshv1alpha1.MeshFunction{}
	obj.Namespace, obj.Name = fn.Namespace, fn.Name
	if owner != "" {
		obj.Name = owner
	}
	select {
	case s.events <- event.TypedGenericEvent[*meshv1alpha1.MeshFunction]{Object: obj}:
	default:
		// The channel is full only if the controller is far behind; it will list every
		// function on its next resync, so dropping a wake-up loses nothing.
	}
}

// Get returns the latest decision for a function.
func (s *Decisions) Get(fn autoscale.FunctionKey) (autoscale.Decision, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.latest[fn]
	return d, ok
}

// Own records that key is a revision of function fn (same namespace): its decisions wake fn.
func (s *Decisions) Own(key autoscale.FunctionKey, fn string) {
	s.mu.Lock()
	s.owners[key] = fn
	s.mu.Unlock()
}

// Forget drops a deleted function's (or revision's) decision.
func (s *Decisions) Forget(fn autoscale.FunctionKey) {
	s.mu.Lock()
	delete(s.latest, fn)
	delete(s.owners, fn)
	forgetScaleDecisions(fn)
	s.mu.Unlock()
}

// Events is the channel the controller watches.
func (s *Decisions) Events() <-chan event.TypedGenericEvent[*meshv1alpha1.MeshFunction] {
	return s.events
}

// keyOf is the autoscaler key of a MeshFunction.
func keyOf(nn types.NamespacedName) autoscale.FunctionKey {
	return autoscale.FunctionKey{Namespace: nn.Namespace, Name: nn.Name}
}

// scaleSpec translates a MeshFunction's API fields into the decider's Spec. Defaults were
// applied by the API server; zero values here mean "unset" only for Target.
func scaleSpec(fn *meshv1alpha1.MeshFunction) autoscale.Spec {
	s := autoscale.DefaultSpec()
	sc := fn.Spec.Scale
	if sc.Metric != "" {
		s.Metric = autoscale.Metric(sc.Metric)
	}
	if fn.Spec.Concurrency.Target != nil {
		s.Target = *fn.Spec.Concurrency.Target
	}
	if u := fn.Spec.Concurrency.TargetUtilizationPercentage; u > 0 {
		s.TargetUtilization = float64(u) / 100
	}
	s.ContainerConcurrency = int(fn.Spec.Concurrency.ContainerConcurrency)
	s.MinScale, s.MaxScale, s.InitialScale = sc.Min, sc.Max, sc.Initial
	if sc.ActivationScale > 0 {
		s.ActivationScale = sc.ActivationScale
	}
	setDur(&s.StableWindow, sc.StableWindow.Duration)
	setDur(&s.ScaleToZeroGrace, sc.ScaleToZeroGracePeriod.Duration)
	s.ScaleDownDelay = sc.ScaleDownDelay.Duration
	if sc.PanicWindowPercentage > 0 {
		s.PanicWindowPct = float64(sc.PanicWindowPercentage)
	}
	if sc.PanicThresholdPercentage > 0 {
		s.PanicThresholdPct = float64(sc.PanicThresholdPercentage)
	}
	if sc.MaxScaleUpRate > 0 {
		s.MaxScaleUpRate = sc.MaxScaleUpRate
	}
	if sc.MaxScaleDownRate > 0 {
		s.MaxScaleDownRate = sc.MaxScaleDownRate
	}
	return s
}

func setDur(dst *time.Duration, v time.Duration) {
	if v > 0 {
		*dst = v
	}
}

// initialReplicas is the replica count of a new function's Deployment: initial scale within
// [min, max].
func initialReplicas(fn *meshv1alpha1.MeshFunction) int32 {
	return clampReplicas(fn.Spec.Scale.Initial, fn)
}

func clampReplicas(n int32, fn *meshv1alpha1.MeshFunction) int32 {
	if n < fn.Spec.Scale.Min {
		n = fn.Spec.Scale.Min
	}
	if max := fn.Spec.Scale.Max; max > 0 && n > max {
		n = max
	}
	return n
}
