// Package testenv lets tests that need a tool from outside Go (nutcracker, envtest's
// kube-apiserver) skip on a developer's machine without it, and fail in CI, where a
// skipped check would otherwise pass unnoticed. .ci/run sets WEFT_CI=1. It imports only the
// standard library and lives outside internal/ so sidecar tests may use it too.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// Missing stops the test because something it needs is not there: a skip with why, or,
// when WEFT_CI is set, a failure.
func Missing(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("WEFT_CI") != "" {
		t.Fatalf("%s (WEFT_CI is set: CI must run this test, not skip it)", why)
	}
	t.Skip(why)
}

// Root stops the test (Missing) unless it runs as root with every one of progs on PATH:
// the tests that build network namespaces and iptables rules. why says what root is for.
func Root(t testing.TB, why string, progs ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "needs root: "+why)
	}
	for _, prog := range progs {
		if _, err := exec.LookPath(prog); err != nil {
			Missing(t, fmt.Sprintf("needs %s: %v", prog, err))
		}
	}
}
