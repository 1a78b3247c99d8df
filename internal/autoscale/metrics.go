package autoscale

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// The autoscaler's per-function gauges, on controller-runtime's registry (the manager's
// metrics endpoint). Names follow Knative's autoscaler (desired_pods, actual_pods,
// panic_mode, stable/panic request concurrency and requests per second) under Weft's
// prefix. Labels are the MeshFunction's namespace and name only, and a function's series
// go when it is removed, so the series count is at most 5 × the number of functions.
// They are written as each decision is made (every 2 s and on a poke), under the
// autoscaler's lock, so a removal cannot race a late write back into existence.
var (
	fnLabels    = []string{"namespace", "name"}
	desiredPods = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "weft_autoscaler_desired_pods",
		Help: "Replicas the autoscaler wants for the function, as of its last decision (before min/max clamping by the controller and the hand-off).",
	}, fnLabels)
	actualPods = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "weft_autoscaler_actual_pods",
		Help: "Ready pods of the function the last decision was made with.",
	}, fnLabels)
	panicMode = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "weft_autoscaler_panic_mode",
		Help: "1 while the function's decider is in panic mode (no scale-down), else 0.",
	}, fnLabels)
	stableConcurrency = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "weft_autoscaler_stable_request_concurrency",
		Help: "Average in-flight requests over the stable window, summed over the function's pods (functions scaling on concurrency).",
	}, fnLabels)
	panicConcurrency = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "weft_autoscaler_panic_request_concurrency",
		Help: "Average in-flight requests over the panic window, summed over the function's pods (functions scaling on concurrency).",
	}, fnLabels)
	stableRPS = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "weft_autoscaler_stable_requests_per_second",
		Help: "Requests per second over the stable window, summed over the function's pods (functions scaling on rps).",
	}, fnLabels)
	panicRPS = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "weft_autoscaler_panic_requests_per_second",
		Help: "Requests per second over the panic window, summed over the function's pods (functions scaling on rps).",
	}, fnLabels)
	allVecs = []*prometheus.GaugeVec{desiredPods, actualPods, panicMode, stableConcurrency, panicConcurrency, stableRPS, panicRPS}
)

func init() {
	for _, v := range allVecs {
		metrics.Registry.MustRegister(v)
	}
}

// fnMetrics are one function's series, resolved once (a label lookup hashes both strings).
type fnMetrics struct {
	desired, actual, panic prometheus.Gauge
	metric                 Metric
	stable, panicV         prometheus.Gauge
}

// record writes one decision's gauges. Call with a.mu held.
func (f *function) record(fn FunctionKey, d Decision) {
	m := f.metrics
	if m == nil {
		m = &fnMetrics{desired: desiredPods.WithLabelValues(fn.Namespace, fn.Name),
			actual: actualPods.WithLabelValues(fn.Namespace, fn.Name), panic: panicMode.WithLabelValues(fn.Namespace, fn.Name)}
		f.metrics = m
	}
	if metric := f.d.spec.Metric; m.stable == nil || metric != m.metric {
		// The function changed metric: drop the other metric's series.
		stable, panicV := stableConcurrency, panicConcurrency
		if metric == MetricRPS {
			stable, panicV = stableRPS, panicRPS
		}
		forgetFunction(fn, stableConcurrency, panicConcurrency, stableRPS, panicRPS)
		m.metric, m.stable, m.panicV = metric, stable.WithLabelValues(fn.Namespace, fn.Name), panicV.WithLabelValues(fn.Namespace, fn.Name)
	}
	m.desired.Set(float64(d.Desired))
	m.actual.Set(float64(f.ready))
	if d.Panic {
		m.panic.Set(1)
	} else {
		m.panic.Set(0)
	}
	m.stable.Set(d.StableValue)
	m.panicV.Set(d.PanicValue)
}

// forgetFunction deletes fn's series from vecs (all of them if none are given).
func forgetFunction(fn FunctionKey, vecs ...*prometheus.GaugeVec) {
	if len(vecs) == 0 {
		vecs = allVecs
	}
	for _, v := range vecs {
		v.DeleteLabelValues(fn.Namespace, fn.Name)
	}
}
