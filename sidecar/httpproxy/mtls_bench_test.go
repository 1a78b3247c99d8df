//go:build mtlsbench

package httpproxy_test

import (
	"os"
	"os/exec"
	"regexp"
	"testing"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// TestMTLSThroughputWithWrk drives two in-process sidecars (caller outbound → callee
// inbound → app) with wrk -t2 -c64, in plaintext and in mutual TLS, and logs req/s. It
// is a measurement, built only with its tag, so it never runs (or skips) in make test:
// go test -tags mtlsbench ./sidecar/httpproxy -run TestMTLSThroughputWithWrk -v
// (WEFT_BENCH_DURATION, default 8s).
func TestMTLSThroughputWithWrk(t *testing.T) {
	d := os.Getenv("WEFT_BENCH_DURATION")
	if d == "" {
		d = "8s"
	}
	rps := regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	for _, tc := range []struct {
		name       string
		tls        bool
		goroutines bool
	}{{"plaintext, event loop", false, false}, {"mutual TLS, event loop on", true, false}, {"plaintext, goroutines", false, true}, {"mutual TLS, goroutines", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			p := sidecarPair(t, tc.goroutines, 0, "", 0, tc.tls)
			if code, _, _ := st.Get(t, client, p.outbound, "cart", "/"); code != 200 {
				t.Fatalf("warm-up: %d", code)
			}
			out, err := exec.Command("wrk", "-t2", "-c64", "-d"+d, "-H", "Host: cart", p.outbound+"/").CombinedOutput()
			if err != nil {
				t.Fatalf("wrk: %v\n%s", err, out)
			}
			m := rps.FindSubmatch(out)
			if m == nil {
				t.Fatalf("no req/s in wrk's output:\n%s", out)
			}
			hs, _, plain, _ := p.callee.Proxy.MTLSCounts()
			t.Logf("%s: %s req/s (callee: %d TLS handshakes, %d plaintext connections)\n%s", tc.name, m[1], hs, plain, out)
		})
	}
}
