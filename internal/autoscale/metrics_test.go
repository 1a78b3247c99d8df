package autoscale

import (
	"testing"

	dto "github.com/prometheus/client_model/go"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// gauge reads name{namespace,name} from controller-runtime's registry, the one the manager
// serves; ok is false when the series does not exist.
func gauge(t *testing.T, name string, fn FunctionKey) (v float64, ok bool) {
	t.Helper()
	fams, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if label(m, "namespace") == fn.Namespace && label(m, "name") == fn.Name {
				return m.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// After a decision on the fake clock the gauges show what the decider saw and chose; a
// change of metric moves the observed values to the other pair of series; removing the
// function takes every one of its series away.
func TestAutoscalerGaugesFollowDecisionsAndRemoval(t *testing.T) {
	a, fc, ch := startAutoscaler(t)
	fn := FunctionKey{"metrics", "hot"}
	other := FunctionKey{"metrics", "other"}
	a.SetReady(fn, 1)
	a.SetSpec(fn, zeroSpec())
	a.SetSpec(other, zeroSpec())
	a.Record(Stat{Function: fn, Pod: "p", Concurrency: 140, Requests: 30})
	fc.Step(TickInterval)
	var d Decision
	for range 2 {
		if r := <-ch; r.fn == fn {
			d = r.d
		}
	}
	// 140 concurrent on 1 pod at target 70: 2 pods, and 2/1 ≥ 2 is a panic.
	if d.Desired != 2 || !d.Panic {
		t.Fatalf("decision = %+v, want 2 in panic", d)
	}
	want := map[string]float64{
		"weft_autoscaler_desired_pods":               2,
		"weft_autoscaler_actual_pods":                1,
		"weft_autoscaler_panic_mode":                 1,
		"weft_autoscaler_stable_request_concurrency": d.StableValue,
		"weft_autoscaler_panic_request_concurrency":  d.PanicValue,
	}
	for name, w := range want {
		if got, ok := gauge(t, name, fn); !ok || got != w {
			t.Errorf("%s = %v (present %v), want %v", name, got, ok, w)
		}
	}
	if d.PanicValue <= 0 {
		t.Errorf("panic concurrency %v: the recorded stat was not observed", d.PanicValue)
	}
	if _, ok := gauge(t, "weft_autoscaler_stable_requests_per_second", fn); ok {
		t.Error("a concurrency-scaled function has a requests-per-second series")
	}

	// Switch to rps: the next decision writes the rps pair and drops the concurrency pair.
	rps := zeroSpec()
	rps.Metric = MetricRPS
	a.SetSpec(fn, rps)
	fc.Step(TickInterval)
	for range 2 {
		if r := <-ch; r.fn == fn {
			d = r.d
		}
	}
	if got, ok := gauge(t, "weft_autoscaler_panic_requests_per_second", fn); !ok || got != d.PanicValue || got <= 0 {
		t.Errorf("panic rps = %v (present %v), want %v > 0", got, ok, d.PanicValue)
	}
	if _, ok := gauge(t, "weft_autoscaler_stable_request_concurrency", fn); ok {
		t.Error("the concurrency series stayed after the function switched to rps")
	}

	a.Remove(fn)
	for _, name := range []string{"weft_autoscaler_desired_pods", "weft_autoscaler_actual_pods", "weft_autoscaler_panic_mode",
		"weft_autoscaler_stable_request_concurrency", "weft_autoscaler_panic_request_concurrency",
		"weft_autoscaler_stable_requests_per_second", "weft_autoscaler_panic_requests_per_second"} {
		if _, ok := gauge(t, name, fn); ok {
			t.Errorf("%s still has a series for the removed function", name)
		}
	}
	if _, ok := gauge(t, "weft_autoscaler_desired_pods", other); !ok {
		t.Error("removing one function took another's series")
	}
	// A tick after the removal does not bring the series back.
	fc.Step(TickInterval)
	<-ch
	if _, ok := gauge(t, "weft_autoscaler_desired_pods", fn); ok {
		t.Error("the removed function's series came back on the next tick")
	}
}

// BenchmarkRecordDecision measures what the gauges add to one decision (once per function
// every 2 s tick, and on a poke): five gauge writes through cached handles.
func BenchmarkRecordDecision(b *testing.B) {
	fn := FunctionKey{"bench", "record"}
	f := &function{d: NewDecider(DefaultSpec(), t0, 1), ready: 1}
	d := Decision{Desired: 3, Panic: true, StableValue: 150, PanicValue: 210}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		f.record(fn, d)
	}
	b.StopTimer()
	forgetFunction(fn)
}
