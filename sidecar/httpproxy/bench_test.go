package httpproxy_test

import (
	"io"
	"net/http"
	"testing"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// BenchmarkProxyRoundTrip measures one keep-alive request through the outbound listener
// to a loopback backend, the sidecar's hot path.
func BenchmarkProxyRoundTrip(b *testing.B) {
	be := st.Backend(b, "ok", nil)
	cp := st.StartControlPlane(b)
	snap, _ := oneBackend([]string{be.URL}, nil)
	cp.Set(snap)
	base := st.StartSidecar(b, cp, st.SidecarOptions{}).URL(b, st.OutboundListenerName)
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.ReportAllocs()
	b.ResetTimer()
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
}
