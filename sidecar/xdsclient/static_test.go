package xdsclient

import (
	"slices"
	"testing"
)

// The file is what hack/bench/http writes: a listener whose route has the control
// plane's default action, including the typed previous_hosts retry predicate.
func TestLoadStaticWithTheMeshDefaultRoute(t *testing.T) {
	cfg, err := LoadStatic("testdata/mesh-default-route.json")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.HTTPListeners) != 1 {
		t.Fatalf("%d HTTP listeners, want 1", len(cfg.HTTPListeners))
	}
	vh := cfg.HTTPListeners[0].Routes.VirtualHostFor("svc")
	if vh == nil || len(vh.Routes) != 1 {
		t.Fatalf("virtual host for svc: %+v", vh)
	}
	rp := vh.Routes[0].Retry
	if rp == nil || rp.NumRetries != 2 || !slices.Equal(rp.RetriableCodes, []int{503}) {
		t.Fatalf("retry policy %+v, want 2 retries on 503", rp)
	}
}
