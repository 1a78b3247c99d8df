//go:build mtlsbench

package httpproxy_test

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// TestMTLSThroughputWithWrk drives two in-process sidecars (caller outbound → callee
// inbound → app) with wrk, in plaintext and in mutual TLS, and logs req/s, the CPU the
// two sidecars spent per request and, with a rate probe, p50/p99 at a fixed rate. It is a
// measurement, built only with its tag, so it never runs (or skips) in make test; make
// bench-http (hack/bench-http.sh) runs it next to haproxy pairs:
//
//	go test -tags mtlsbench ./sidecar/httpproxy -run TestMTLSThroughputWithWrk -v
//
// Environment: WEFT_BENCH_DURATION (wrk and probe, default 8s), WEFT_BENCH_CONNS (64),
// WEFT_BENCH_BACKEND (an app outside this process, so the CPU counted is the sidecars'
// alone; default an in-process app), WEFT_BENCH_HELPER and WEFT_BENCH_RATE (the
// hack/bench/http binary's open-loop probe at that rate; none without), WEFT_BENCH_CASES
// (comma-separated case names to run; default all).
func TestMTLSThroughputWithWrk(t *testing.T) {
	d := envOr("WEFT_BENCH_DURATION", "8s")
	conns := envOr("WEFT_BENCH_CONNS", "64")
	rps := regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	total := regexp.MustCompile(`([0-9]+) requests in`)
	want := os.Getenv("WEFT_BENCH_CASES")
	for _, tc := range []struct {
		name       string
		tls        bool
		goroutines bool
	}{{"plaintext", false, false}, {"mtls", true, false}, {"plaintext-goroutines", false, true}, {"mtls-goroutines", true, true}} {
		if want != "" && !strings.Contains(","+want+",", ","+tc.name+",") {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			var p *meshPair
			if be := os.Getenv("WEFT_BENCH_BACKEND"); be != "" {
				p = sidecarPairTo(t, tc.goroutines, 0, "", 0, tc.tls, be)
			} else {
				p = sidecarPair(t, tc.goroutines, 0, "", 0, tc.tls)
			}
			if code, _, _ := st.Get(t, client, p.outbound, "cart", "/"); code != 200 {
				t.Fatalf("warm-up: %d", code)
			}
			before := selfCPUTicks(t)
			out, err := exec.Command("wrk", "-t2", "-c"+conns, "-d"+d, "--latency", "-H", "Host: cart", p.outbound+"/").CombinedOutput()
			if err != nil {
				t.Fatalf("wrk: %v\n%s", err, out)
			}
			ticks := selfCPUTicks(t) - before
			m, n := rps.FindSubmatch(out), total.FindSubmatch(out)
			if m == nil || n == nil {
				t.Fatalf("no req/s in wrk's output:\n%s", out)
			}
			reqs, _ := strconv.ParseFloat(string(n[1]), 64)
			// CLK_TCK is 100 on Linux: a tick is 10 ms.
			cpuUS := float64(ticks) * 10_000 / reqs
			hs, _, plain, _ := p.callee.Proxy.MTLSCounts()
			probe := "-"
			if h := os.Getenv("WEFT_BENCH_HELPER"); h != "" {
				po, err := exec.Command(h, "rate", "-url", p.outbound+"/", "-host", "cart", "-rps", envOr("WEFT_BENCH_RATE", "1000"), "-d", d).CombinedOutput()
				if err != nil {
					t.Fatalf("rate probe: %v\n%s", err, po)
				}
				probe = strings.TrimSpace(string(po))
				hs2, herr, _, _ := p.callee.Proxy.MTLSCounts()
				probe += fmt.Sprintf(" (probe handshakes %d, errors %d)", hs2-hs, herr)
			}
			// One line per case for hack/bench-http.sh to parse.
			fmt.Printf("WEFTPAIR %s rps=%s cpu_us=%.1f handshakes=%d plaintext_conns=%d probe: %s\n", tc.name, m[1], cpuUS, hs, plain, probe)
			t.Logf("%s\n%s", tc.name, out)
		})
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// selfCPUTicks is this process's user+system CPU time in clock ticks (/proc/self/stat).
func selfCPUTicks(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name (which may hold spaces) start after the last ')'.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64) // utime is field 14, the 12th after ')'
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return u + s
}
