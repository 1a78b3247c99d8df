package activator

import (
	"context"
	"runtime"
	"sync"
	"testing"

	"k8s.io/utils/clock"
)

// BenchmarkReleaseWhenEndpointsArrive measures the hold's last leg: from the EDS update that
// brings a function's first ready endpoint (ClusterEndpointsChanged) until all 100 requests
// held for it have been released to the proxy, in arrival order.
func BenchmarkReleaseWhenEndpointsArrive(b *testing.B) {
	const held = 100
	a := New(clock.RealClock{}, DemandSinkFunc(func(string, string, int) {}))
	ref := FunctionRef{Namespace: "bench", Name: "fn", Cluster: "function|bench/fn", MaxPending: held}
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		a.ClusterEndpointsChanged(ref.Cluster, 0)
		var wg sync.WaitGroup
		for j := 0; j < held; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				release, _, err := a.Hold(context.Background(), ref)
				if err != nil {
					b.Error(err)
					return
				}
				release()
			}()
		}
		for a.Pending(ref.Cluster) < held {
			runtime.Gosched()
		}
		b.StartTimer()
		a.ClusterEndpointsChanged(ref.Cluster, 1)
		wg.Wait()
	}
}
