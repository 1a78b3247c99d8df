package telemetry

import (
	"net/http"
	"testing"
	"time"
)

// The event loop's per-request telemetry allocates nothing once a label set exists:
// Propagate into a reused HeaderBuf and header map, and Record.
func TestHotPathAllocatesNothing(t *testing.T) {
	m := New(Options{Self: WorkloadFromPod("web-1", "ns", nil), Trace: TraceOptions{SamplePerMillion: 1_000_000}})
	h := http.Header{}
	var buf HeaderBuf
	var rec HTTPRecord
	run := func() {
		clear(h)
		rec = HTTPRecord{Cluster: "outbound|80||a.b.svc.cluster.local|b/r", Status: 200, GRPCStatus: -1, Duration: time.Millisecond, ReqBytes: 10, RespBytes: 20}
		m.Propagate(h, &rec, &buf)
		h[PeerHeader] = m.PeerValue()
		m.Record(&rec)
	}
	run()
	if n := testing.AllocsPerRun(1000, run); n != 0 {
		t.Errorf("%v allocations per request, want 0", n)
	}
	in := func() {
		rec = HTTPRecord{Inbound: true, Peer: "n=caller&ns=x", Authority: "web.ns:8080", Status: 200, GRPCStatus: -1}
		m.Record(&rec)
	}
	in()
	if n := testing.AllocsPerRun(1000, in); n != 0 {
		t.Errorf("inbound: %v allocations per request, want 0", n)
	}
	peer := []byte("n=ratings-v2&ns=prod")
	out := func() {
		rec = HTTPRecord{Cluster: "outbound|80||a.b.svc.cluster.local|b/r", Status: 200, GRPCStatus: -1}
		m.SetDestinationPeer(&rec, peer)
		m.Record(&rec)
	}
	out()
	if n := testing.AllocsPerRun(1000, out); n != 0 {
		t.Errorf("outbound with the destination's peer metadata: %v allocations per request, want 0", n)
	}
}
