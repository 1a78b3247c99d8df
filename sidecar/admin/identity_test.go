package admin

import (
	"strings"
	"testing"

	"github.com/weftmesh/weft/sidecar/config"
)

// /ready with a workload identity: no valid certificate → 503 saying why; a failing
// renewal with a valid certificate → 200 with the warning.
func TestReadyReportsTheWorkloadCertificate(t *testing.T) {
	var ready bool
	var note string
	s := New(Options{Config: func() *config.Config { return &config.Config{} }, Identity: func() (bool, string) { return ready, note }})
	ready, note = false, "no workload certificate yet: control plane unreachable"
	if code, body := get(t, s.MetricsHandler(), "/ready"); code != 503 || !strings.Contains(body, "control plane unreachable") {
		t.Errorf("without a certificate: %d %q, want 503 with the reason", code, body)
	}
	ready, note = true, "workload certificate renewal failing since ..."
	if code, body := get(t, s.MetricsHandler(), "/ready"); code != 200 || !strings.Contains(body, "warning: workload certificate renewal failing") {
		t.Errorf("renewal failing: %d %q, want 200 with a warning", code, body)
	}
	ready, note = true, ""
	if code, body := get(t, s.Handler(), "/ready"); code != 200 || body != "ready\n" {
		t.Errorf("healthy: %d %q", code, body)
	}
}
