package snapshot

import (
	"fmt"
	"testing"
)

// BenchmarkUpdateEndpoints measures the endpoint-only fast path at BenchmarkTranslate's scale
// (10,000 MeshRoutes, 1,000 MeshFunctions): one Service's EndpointSlice changes, and
// UpdateEndpoints rebuilds its assignments and the EDS version ("update"), plus the view's
// EDS resource group the cache sets ("update+eds"), or plus a whole view snapshot as a newly
// connected sidecar's view needs ("update+snapshot"). Compare its time, bytes and
// allocations per op with BenchmarkTranslate's, which is what every endpoint change cost
// before.
func BenchmarkUpdateEndpoints(b *testing.B) {
	in := scaleInput()
	cur := Translate(in)
	v := View{Namespace: "ns-1", AppPort: 8080}
	if _, err := cur.Snapshot(v); err != nil {
		b.Fatal(err)
	}
	i := 0 // shared: each change is a new one, whichever sub-benchmark makes it
	for _, mode := range []string{"update", "update+eds", "update+snapshot"} {
		b.Run(mode, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				i++
				ns, svc := fmt.Sprintf("ns-%d", i%100), fmt.Sprintf("svc-%d", i%10_000)
				es := benchSlice(ns, svc, 8080, 3, i%10_000)
				es.Endpoints[0].Addresses = []string{fmt.Sprintf("10.%d.%d.%d", 200+i>>16&31, i>>8&255, i&255)}
				next, ok := cur.UpdateEndpoints(EndpointChange{ns + "/" + svc: {es}})
				if !ok {
					b.Fatal("fast path refused")
				}
				switch mode {
				case "update":
					next.hashes() // the new EDS version
				case "update+eds":
					if _, err := next.EndpointResources(v); err != nil {
						b.Fatal(err)
					}
				default:
					if _, err := next.Snapshot(v); err != nil {
						b.Fatal(err)
					}
				}
				if next == cur {
					b.Fatal("the change changed nothing")
				}
				cur = next
			}
		})
	}
}
