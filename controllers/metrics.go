package controllers

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/weftmesh/weft/internal/autoscale"
)

// The controllers' own metrics, on controller-runtime's registry next to its reconcile
// metrics: how long translation takes, which way the autoscaler's decisions go, and how
// hand-offs to zero end. Labels are a MeshFunction's namespace and name, a direction or an
// outcome: bounded by the number of functions.
var (
	translationSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "weft_xds_translation_duration_seconds",
		Help: "Time to translate every MeshRoute, MeshFunction and RedisProxy (with the Services, EndpointSlices and Secrets they name) into xDS resources, per rebuild.",
		// 100 µs to 10 s: a small mesh translates in well under a millisecond; 10 s would
		// hold every sidecar's config back.
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10},
	})
	scaleDecisions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weft_autoscaler_scale_decisions_total",
		Help: "Changes of the autoscaler's desired replicas for the function, by direction (up or down); unchanged decisions are not counted.",
	}, []string{"namespace", "name", "direction"})
	handoffSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "weft_handoff_duration_seconds",
		Help: "Time from the controller announcing zero for a function to removing its last pod, by outcome: acked (every caller's sidecar ACKed the draining snapshot) or timeout (the hand-off timeout passed first). The _count series counts hand-offs by outcome.",
		// 10 ms to 60 s; the default timeout is 15 s.
		Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 15, 30, 60},
	}, []string{"outcome"})
)

func init() {
	metrics.Registry.MustRegister(translationSeconds, scaleDecisions, handoffSeconds)
}

// countScaleDecision counts a change of a function's desired replicas.
func countScaleDecision(fn autoscale.FunctionKey, from, to int32) {
	switch {
	case to > from:
		scaleDecisions.WithLabelValues(fn.Namespace, fn.Name, "up").Inc()
	case to < from:
		scaleDecisions.WithLabelValues(fn.Namespace, fn.Name, "down").Inc()
	}
}

// forgetScaleDecisions drops a deleted function's series.
func forgetScaleDecisions(fn autoscale.FunctionKey) {
	scaleDecisions.DeletePartialMatch(prometheus.Labels{"namespace": fn.Namespace, "name": fn.Name})
}

// observeHandoff records a finished hand-off.
func observeHandoff(d time.Duration, acked bool) {
	outcome := "timeout"
	if acked {
		outcome = "acked"
	}
	handoffSeconds.WithLabelValues(outcome).Observe(d.Seconds())
}
