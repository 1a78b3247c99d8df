package main

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/contract"
)

const runChildEnv = "WEFT_TEST_SIDECAR_RUN"

// TestGarbledAppProbesStopTheSidecar: a WEFT_APP_PROBERS the injector did not write (here
// cut short) stops the sidecar at start-up with the reason, before it dials anything,
// instead of serving probes it cannot run (Istio's agent does the same).
func TestGarbledAppProbesStopTheSidecar(t *testing.T) {
	for _, tc := range []struct{ name, value, want string }{
		{"cut short", `{"/app-health/web/readyz":{"httpGet":{"port":80`, "is not a JSON object of probes"},
		{"too long", strings.Repeat(" ", contract.MaxAppProbesBytes+1), "more than 65536"},
	} {
		// No flags: the test binary's own flag set would refuse them; the record is read
		// before the defaults (control plane, admin ports) are used.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second) // a sidecar that starts is killed
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestSidecarRunChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), runChildEnv+"=1", contract.AppProbesEnv+"="+tc.value)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) || !strings.Contains(string(out), "re-create the pod") {
			t.Errorf("%s: sidecar exited with %v:\n%.2000s\nwant a failure saying %q and what to do", tc.name, err, out, tc.want)
		}
	}
}

// TestSidecarRunChild is the sidecar's run() in a child process of
// TestGarbledAppProbesStopTheSidecar.
func TestSidecarRunChild(t *testing.T) {
	if os.Getenv(runChildEnv) == "" {
		t.Skip("run by TestGarbledAppProbesStopTheSidecar")
	}
	if err := run(); err != nil {
		t.Fatal(err)
	}
}
