package sandbox

import (
	"context"
	"strings"
	"testing"
)

// A switch Run has not wired yet refuses to act rather than panicking on a nil client (the
// e2e suite hands one to Run and may call it before the mesh is up).
func TestManagerSwitchBeforeRun(t *testing.T) {
	var s ManagerSwitch
	for name, f := range map[string]func(context.Context) error{"Stop": s.Stop, "Start": s.Start} {
		if err := f(context.Background()); err == nil || !strings.Contains(err.Error(), "not started its manager yet") {
			t.Errorf("%s before Run: %v, want a refusal", name, err)
		}
	}
	s.stopManager() // nothing to stop: must not block or panic
}
