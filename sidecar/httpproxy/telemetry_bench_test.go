package httpproxy_test

import (
	"io"
	"net/http"
	"syscall"
	"testing"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
	"github.com/weftmesh/weft/sidecar/telemetry"
)

// BenchmarkProxyRoundTripTelemetry is BenchmarkProxyRoundTrip with telemetry off, with
// Istio metrics (tracing configured off), and with the access log on too (lines to a
// discarding writer through the real queue), on both HTTP paths.
func BenchmarkProxyRoundTripTelemetry(b *testing.B) {
	for _, path := range []struct {
		name       string
		goroutines bool
	}{{"loop", false}, {"goroutines", true}} {
		for _, mode := range []string{"off", "metrics", "accesslog"} {
			b.Run(path.name+"/"+mode, func(b *testing.B) {
				var tel *telemetry.Mesh
				self := telemetry.WorkloadFromPod("productpage-v1-6b746f74dc-9stvs", "default", map[string]string{"app": "productpage", "pod-template-hash": "6b746f74dc"})
				switch mode {
				case "metrics":
					tel = telemetry.New(telemetry.Options{Self: self})
				case "accesslog":
					al := telemetry.NewAccessLog(telemetry.AccessLogOptions{Out: io.Discard})
					b.Cleanup(al.Close)
					tel = telemetry.New(telemetry.Options{Self: self, AccessLog: al})
				}
				be := st.Backend(b, "ok", nil)
				cp := st.StartControlPlane(b)
				snap, _ := oneBackend([]string{be.URL}, nil)
				cp.Set(snap)
				base := st.StartSidecar(b, cp, st.SidecarOptions{Telemetry: tel, GoroutinePerConnection: path.goroutines}).URL(b, st.OutboundListenerName)
				c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
				b.ReportAllocs()
				b.ResetTimer()
				cpu0 := cpuTime()
				b.RunParallel(func(pb *testing.PB) {
					req, _ := http.NewRequest(http.MethodGet, base+"/", nil)
					req.Host = "reviews"
					for pb.Next() {
						resp, err := c.Do(req)
						if err != nil {
							b.Fatal(err)
						}
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
				})
				// CPU per request (this process: client, sidecar and backend) varies less than
				// wall time on a machine others share.
				b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
			})
		}
	}
}

// cpuTime is the process's user and system CPU time so far, in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}
