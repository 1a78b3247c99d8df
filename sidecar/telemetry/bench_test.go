package telemetry

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// BenchmarkPerRequest is what telemetry adds to one HTTP exchange on the event loop:
// Propagate (request id; tracing off or on) and Record (metrics; the access log on or off).
func BenchmarkPerRequest(b *testing.B) {
	self := WorkloadFromPod("productpage-v1-6b746f74dc-9stvs", "default", map[string]string{"app": "productpage", "pod-template-hash": "6b746f74dc"})
	for _, c := range []struct {
		name  string
		log   bool
		trace uint32
	}{{"metrics", false, 0}, {"metrics+accesslog", true, 0}, {"metrics+tracing", false, 1_000_000}} {
		b.Run(c.name, func(b *testing.B) {
			o := Options{Self: self, Trace: TraceOptions{SamplePerMillion: c.trace}}
			if c.log {
				al := NewAccessLog(AccessLogOptions{Out: io.Discard})
				defer al.Close()
				o.AccessLog = al
			}
			m := New(o)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				h := http.Header{}
				var buf HeaderBuf
				var rec HTTPRecord
				start := time.Now()
				for pb.Next() {
					clear(h)
					rec = HTTPRecord{Cluster: "outbound|9080||reviews.default.svc.cluster.local|default/reviews", Status: 200, GRPCStatus: -1,
						Duration: 900 * time.Microsecond, ReqBytes: 0, RespBytes: 295, Start: start, Method: "GET", Path: "/reviews/0",
						Protocol: "HTTP/1.1", Authority: "reviews:9080", UserAgent: "Go-http-client/1.1", UpstreamHost: "10.1.2.3:9080"}
					m.Propagate(h, &rec, &buf)
					h[PeerHeader] = m.PeerValue()
					m.Record(&rec)
				}
			})
		})
	}
}
