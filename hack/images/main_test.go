package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestSelectTargetsOptional: weft-init is built only when cmd/weft-init exists, and asking
// for an image the table lacks is an error, not an empty build.
func TestSelectTargetsOptional(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	names := func() map[string]bool {
		t.Helper()
		sel, err := selectTargets("")
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]bool{}
		for _, s := range sel {
			m[s.name] = true
		}
		return m
	}
	if got := names(); got["weft-init"] || !got["weft-manager"] || !got["weft-sidecar"] || !got["weft-example-echo"] {
		t.Errorf("without cmd/weft-init: %v", got)
	}
	if err := os.MkdirAll(filepath.Join(dir, "cmd", "weft-init"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got := names(); !got["weft-init"] {
		t.Errorf("with cmd/weft-init: %v", got)
	}
	sel, err := selectTargets("weft-sidecar, weft-init")
	if err != nil || len(sel) != 2 || sel[0].name != "weft-sidecar" || sel[1].name != "weft-init" {
		t.Errorf("-only weft-sidecar,weft-init = %v, %v", sel, err)
	}
	if _, err := selectTargets("weft-sidecar,weft-nope"); err == nil {
		t.Error("-only with an unknown image succeeded")
	}
}

// TestTargetsUnique: two images with one name or one binary name would overwrite each other
// (go build -o DIR/ names binaries after their package).
func TestTargetsUnique(t *testing.T) {
	names, bins := map[string]bool{}, map[string]bool{}
	for _, tg := range targets {
		b := filepath.Base(tg.pkg)
		if names[tg.name] || bins[b] {
			t.Errorf("target %s (%s) repeats a name or binary", tg.name, tg.pkg)
		}
		names[tg.name], bins[b] = true, true
	}
}
