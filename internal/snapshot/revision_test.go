package snapshot

import (
	"path/filepath"
	"testing"
)

// The controller's hand-off asks FunctionServing(namespace, revision) before removing a
// revision's last pod: it must answer for that revision's cluster alone.
func TestFunctionServingPerRevision(t *testing.T) {
	input, _ := readInput(t, filepath.Join("testdata", "function-revisions.in.yaml"))
	res := Translate(input)
	for rev, want := range map[string]bool{
		"shop-00001": true,  // routed, HEALTHY
		"shop-00002": false, // announced zero: DRAINING
		"shop-00003": true,
		"shop-00009": false, // no such revision
	} {
		if got := res.FunctionServing("web", rev); got != want {
			t.Errorf("FunctionServing(web, %s) = %v, want %v", rev, got, want)
		}
	}
}
