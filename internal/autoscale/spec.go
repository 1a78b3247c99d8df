// Package autoscale decides how many replicas each MeshFunction should run.
//
// It takes per-second stats pushed by function sidecars, demand pokes from
// caller sidecars that hold requests for a function at zero, and the number of
// ready pods, and produces a Decision per function: desired replicas, whether
// the decider is in panic mode, and whether it wants the function at zero.
//
// The arithmetic is Knative's KPA (pkg/autoscaler/scaling/autoscaler.go) with
// its defaults (pkg/autoscaler/config/config.go): a 60 s stable window, a 6 s
// panic window, a 2x panic threshold, at most halving per 2 s tick. The
// Decider is pure (time is passed in); the Autoscaler runner owns one decider
// per function, ticks on an injected clock and hands decisions to a ScaleSink.
package autoscale

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Metric names the per-pod signal a function scales on.
type Metric string

const (
	// MetricConcurrency scales on average in-flight requests per pod (the default).
	MetricConcurrency Metric = "concurrency"
	// MetricRPS scales on requests per second per pod.
	MetricRPS Metric = "rps"
)

// Knative defaults for a function with no explicit scale settings.
const (
	DefaultConcurrencyTarget = 100.0 // container-concurrency-target-default
	DefaultRPSTarget         = 200.0 // requests-per-second-target-default
	DefaultTargetUtilization = 0.7   // container-concurrency-target-percentage
	DefaultStableWindow      = 60 * time.Second
	DefaultPanicWindowPct    = 10.0  // so the panic window is 6 s
	DefaultPanicThresholdPct = 200.0 // panic when the panic window needs 2x the ready pods
	DefaultMaxScaleUpRate    = 1000.0
	DefaultMaxScaleDownRate  = 2.0 // at most halve per tick
	DefaultScaleToZeroGrace  = 30 * time.Second
	DefaultInitialScale      = 1
	// TickInterval is how often the Autoscaler runs every decider (Knative's tickInterval).
	TickInterval = 2 * time.Second
	// minTarget is Knative's TargetMin: a target never drops below 0.01.
	minTarget = 0.01
)

// Spec is one function's scaling configuration, the MeshFunction's
// spec.concurrency and spec.scale with defaults applied.
type Spec struct {
	Metric Metric
	// Target is the per-pod value to aim for before utilization; 0 means the
	// default (containerConcurrency if > 0, else 100 for concurrency; 200 for rps).
	Target float64
	// TargetUtilization scales Target down to leave burst headroom, in (0,1].
	TargetUtilization float64
	// ContainerConcurrency is the hard per-pod limit (0 = unlimited); it caps Target.
	ContainerConcurrency int
	MinScale             int32 // 0 allows scale to zero
	MaxScale             int32 // 0 = unbounded
	InitialScale         int32 // replicas to hold until the function has reached them once
	ActivationScale      int32 // floor once woken from zero; <= 1 means no floor
	StableWindow         time.Duration
	PanicWindowPct       float64
	PanicThresholdPct    float64
	MaxScaleUpRate       float64
	MaxScaleDownRate     float64
	ScaleDownDelay       time.Duration
	ScaleToZeroGrace     time.Duration
}

// DefaultSpec returns Knative's defaults: concurrency target 100 at 70 %
// utilization (so 70 in-flight requests per pod), stable window 60 s, panic
// window 10 % of it (6 s), panic threshold 200 %, scale up at most 1000x and
// down at most 2x per tick, no scale-down delay, 30 s grace before zero,
// initial scale 1, min 0, max unbounded.
func DefaultSpec() Spec {
	return Spec{
		Metric:            MetricConcurrency,
		TargetUtilization: DefaultTargetUtilization,
		InitialScale:      DefaultInitialScale,
		StableWindow:      DefaultStableWindow,
		PanicWindowPct:    DefaultPanicWindowPct,
		PanicThresholdPct: DefaultPanicThresholdPct,
		MaxScaleUpRate:    DefaultMaxScaleUpRate,
		MaxScaleDownRate:  DefaultMaxScaleDownRate,
		ScaleToZeroGrace:  DefaultScaleToZeroGrace,
	}
}

// TotalValue is the per-pod capacity before utilization (Knative
// resources/target.go): containerConcurrency if > 0 else 100 for concurrency,
// 200 for rps; an explicit Target overrides it, but for concurrency never
// above containerConcurrency.
func (s Spec) TotalValue() float64 {
	total := DefaultConcurrencyTarget
	if s.Metric == MetricRPS {
		total = DefaultRPSTarget
	} else if s.ContainerConcurrency > 0 {
		total = float64(s.ContainerConcurrency)
	}
	if s.Target > 0 {
		total = s.Target
		if s.Metric != MetricRPS && s.ContainerConcurrency > 0 {
			total = math.Min(total, float64(s.ContainerConcurrency))
		}
	}
	return total
}

// TargetValue is what one pod should carry: max(0.01, TotalValue ×
// TargetUtilization). Defaults: 100 × 0.7 = 70 concurrency, 200 × 0.7 = 140 rps;
// containerConcurrency 10 gives 10 × 0.7 = 7.
func (s Spec) TargetValue() float64 {
	return math.Max(minTarget, s.TotalValue()*s.TargetUtilization)
}

// PanicWindow is round(stable × pct / 100), at least one second: 6 s by default.
func (s Spec) PanicWindow() time.Duration {
	secs := math.Round(s.StableWindow.Seconds() * s.PanicWindowPct / 100)
	return time.Duration(math.Max(1, secs)) * time.Second
}

// Validate reports every setting outside Knative's accepted ranges, joined,
// in words a user can act on from the MeshFunction status.
func (s Spec) Validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(s.Metric == MetricConcurrency || s.Metric == MetricRPS,
		"scale.metric %q is not supported: use %q or %q", s.Metric, MetricConcurrency, MetricRPS)
	check(s.Target >= 0, "concurrency.target %v is negative: use 0 for the default or a positive value", s.Target)
	check(s.TargetUtilization > 0 && s.TargetUtilization <= 1,
		"concurrency.targetUtilization %v must be in (0, 1]", s.TargetUtilization)
	check(s.ContainerConcurrency >= 0, "concurrency.containerConcurrency %d is negative: use 0 for unlimited", s.ContainerConcurrency)
	check(s.MinScale >= 0 && s.MaxScale >= 0 && s.InitialScale >= 0 && s.ActivationScale >= 0,
		"scale.min, max, initial and activation must not be negative")
	check(s.MaxScale == 0 || s.MinScale <= s.MaxScale,
		"scale.min %d is above scale.max %d: lower min or raise max", s.MinScale, s.MaxScale)
	check(s.StableWindow >= 6*time.Second && s.StableWindow <= time.Hour && s.StableWindow%time.Second == 0,
		"scale.stableWindow %v must be whole seconds between 6s and 1h", s.StableWindow)
	check(s.PanicWindowPct >= 1 && s.PanicWindowPct <= 100,
		"scale.panicWindowPercentage %v must be between 1 and 100", s.PanicWindowPct)
	check(s.PanicThresholdPct >= 110 && s.PanicThresholdPct <= 1000,
		"scale.panicThresholdPercentage %v must be between 110 and 1000", s.PanicThresholdPct)
	check(s.MaxScaleUpRate > 1, "scale.maxScaleUpRate %v must be above 1", s.MaxScaleUpRate)
	check(s.MaxScaleDownRate > 1, "scale.maxScaleDownRate %v must be above 1", s.MaxScaleDownRate)
	check(s.ScaleDownDelay >= 0 && s.ScaleDownDelay <= time.Hour && s.ScaleDownDelay%time.Second == 0,
		"scale.scaleDownDelay %v must be whole seconds between 0 and 1h", s.ScaleDownDelay)
	check(s.ScaleToZeroGrace > 0, "scale.scaleToZeroGracePeriod %v must be positive", s.ScaleToZeroGrace)
	return errors.Join(errs...)
}
