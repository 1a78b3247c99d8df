package autoscale

import (
	"strings"
	"testing"
	"time"
)

func TestTargetValue(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Spec)
		want   float64
	}{
		{"default concurrency: 100 × 0.7", func(*Spec) {}, 70},
		{"rps: 200 × 0.7", func(s *Spec) { s.Metric = MetricRPS }, 140},
		{"containerConcurrency replaces 100: 10 × 0.7", func(s *Spec) { s.ContainerConcurrency = 10 }, 7},
		{"target above containerConcurrency is capped: min(50, 10) × 0.7", func(s *Spec) { s.Target, s.ContainerConcurrency = 50, 10 }, 7},
		{"target below containerConcurrency wins: min(5, 10) × 0.7", func(s *Spec) { s.Target, s.ContainerConcurrency = 5, 10 }, 3.5},
		{"explicit target: 50 × 0.7", func(s *Spec) { s.Target = 50 }, 35},
		{"rps target ignores containerConcurrency: 300 × 1", func(s *Spec) {
			s.Metric, s.Target, s.ContainerConcurrency, s.TargetUtilization = MetricRPS, 300, 10, 1
		}, 300},
		{"floor at 0.01", func(s *Spec) { s.Target, s.TargetUtilization = 0.001, 1 }, 0.01},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := DefaultSpec()
			tc.mutate(&s)
			if got := s.TargetValue(); got < tc.want-1e-9 || got > tc.want+1e-9 {
				t.Errorf("TargetValue() = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPanicWindow(t *testing.T) {
	tests := []struct {
		stable time.Duration
		pct    float64
		want   time.Duration
	}{
		{60 * time.Second, 10, 6 * time.Second},     // Knative default
		{6 * time.Second, 10, time.Second},          // round(0.6) = 1
		{60 * time.Second, 1, time.Second},          // round(0.6) = 1
		{10 * time.Second, 4, time.Second},          // round(0.4) = 0, floor of 1 s
		{100 * time.Second, 15, 15 * time.Second},   // exact
		{120 * time.Second, 100, 120 * time.Second}, // whole window
	}
	for _, tc := range tests {
		s := DefaultSpec()
		s.StableWindow, s.PanicWindowPct = tc.stable, tc.pct
		if got := s.PanicWindow(); got != tc.want {
			t.Errorf("PanicWindow(%v, %v%%) = %v, want %v", tc.stable, tc.pct, got, tc.want)
		}
	}
}

func TestValidate(t *testing.T) {
	if err := DefaultSpec().Validate(); err != nil {
		t.Fatalf("DefaultSpec().Validate() = %v, want nil", err)
	}
	tests := []struct {
		name    string
		mutate  func(*Spec)
		wantSub string
	}{
		{"metric", func(s *Spec) { s.Metric = "cpu" }, `scale.metric "cpu"`},
		{"utilization", func(s *Spec) { s.TargetUtilization = 1.5 }, "targetUtilization 1.5"},
		{"min above max", func(s *Spec) { s.MinScale, s.MaxScale = 5, 2 }, "scale.min 5 is above scale.max 2"},
		{"short window", func(s *Spec) { s.StableWindow = 5 * time.Second }, "stableWindow 5s"},
		{"fractional window", func(s *Spec) { s.StableWindow = 6500 * time.Millisecond }, "whole seconds"},
		{"threshold", func(s *Spec) { s.PanicThresholdPct = 100 }, "panicThresholdPercentage 100"},
		{"down rate", func(s *Spec) { s.MaxScaleDownRate = 1 }, "maxScaleDownRate 1"},
		{"grace", func(s *Spec) { s.ScaleToZeroGrace = 0 }, "scaleToZeroGracePeriod 0s"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := DefaultSpec()
			tc.mutate(&s)
			err := s.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.wantSub) {
				t.Errorf("Validate() = %v, want an error containing %q", err, tc.wantSub)
			}
		})
	}
}
