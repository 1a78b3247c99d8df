package httpproxy_test

import (
	"io"
	"net/http"
	"testing"
	"time"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// BenchmarkH2Upload is one caller connection's upload through the sidecar to an h2c
// backend that reads and discards it, on the frame relay and on the goroutine path: how fast
// a request body moves when the upstream keeps up (its socket fills and drains as it reads).
//
//	go test -run '^$' -bench H2Upload -benchtime 20x ./sidecar/httpproxy/
func BenchmarkH2Upload(b *testing.B) {
	b.Run("relay", func(b *testing.B) { benchH2Upload(b, false) })
	b.Run("goroutines", func(b *testing.B) { benchH2Upload(b, true) })
}

func benchH2Upload(b *testing.B, goroutines bool) {
	be := h2cBackend(b, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "ok")
	})
	cp := st.StartControlPlane(b)
	cp.Set(relayHosts(be.URL, "", nil, st.Timeout(120*time.Second)))
	sc := st.StartSidecar(b, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
	base := sc.URL(b, st.OutboundListenerName)
	c := h2cCaller()
	c.Timeout = 0
	const size = 64 << 20
	b.SetBytes(size)
	for b.Loop() {
		req, _ := http.NewRequest(http.MethodPost, base+"/upload", &countingReader{n: size})
		req.Host = "reviews"
		resp, err := c.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
}
