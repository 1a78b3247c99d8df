package httpproxy_test

import (
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// Issue 15 item 4: useSourceIP hashed 127.0.0.1 for every caller (apps reach the sidecar
// over loopback with HTTP_PROXY), so every caller landed on one endpoint. Each caller's
// sidecar now hashes its pod's IP for loopback peers: eight callers (eight sidecars with
// their own pod IPs, sharing one control plane) spread over the endpoints, and each sticks
// to its endpoint across new connections (new source ports), on both paths.
func TestSourceIPHashSpreadsCallersByPodIP(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var urls []string
		for _, n := range []string{"A", "B", "C", "D"} {
			urls = append(urls, st.Backend(t, n, nil).URL)
		}
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend(urls, []st.RouteOption{st.Edit(func(r *routev3.Route) {
			r.GetRoute().HashPolicy = []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_ConnectionProperties_{
				ConnectionProperties: &routev3.RouteAction_HashPolicy_ConnectionProperties{SourceIp: true}}}}
		})}, func(c *clusterv3.Cluster) { c.LbPolicy = clusterv3.Cluster_RING_HASH })
		cp.Set(snap)
		fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
		endpointOf := map[string]string{} // pod IP → endpoint
		spread := map[string]bool{}
		for i := 1; i <= 8; i++ {
			pod := netip.MustParseAddr(fmt.Sprintf("10.244.%d.%d", i, 10+i))
			base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines, PodIP: pod}).URL(t, st.OutboundListenerName)
			for range 6 {
				req, _ := http.NewRequest(http.MethodGet, base+"/", nil)
				req.Host = "reviews"
				resp, err := fresh.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				got := string(b)
				if first, ok := endpointOf[pod.String()]; !ok {
					endpointOf[pod.String()] = got
					spread[got] = true
				} else if got != first {
					t.Fatalf("caller %s went to %s, then to %s over a new connection; useSourceIP must keep a caller on one endpoint", pod, first, got)
				}
			}
		}
		if len(spread) < 2 {
			t.Errorf("8 callers with distinct pod IPs all landed on %v; useSourceIP must hash the caller's address, not 127.0.0.1", spread)
		}
	})
}
