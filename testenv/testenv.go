// Package testenv lets tests that need a tool from outside Go (nutcracker, envtest's
// kube-apiserver) skip on a developer's machine without it, and fail in CI, where a
// skipped check would otherwise pass unnoticed. .ci/run sets WEFT_CI=1. It imports only the
// standard library and lives outside internal/ so sidecar tests may use it too.
package testenv

import (
	"os"
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
