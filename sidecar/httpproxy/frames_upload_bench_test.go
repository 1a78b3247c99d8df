package httpproxy_test

import (
	"io"
	"net/http"
	"strings"
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

// BenchmarkH2Download is the other direction: one caller connection reads a 64 MiB response
// through the sidecar from an h2c backend — how fast a response moves within the windows
// the sidecar grants upstreams and the caller grants the sidecar.
//
//	go test -run '^$' -bench H2Download -benchtime 20x ./sidecar/httpproxy/
func BenchmarkH2Download(b *testing.B) {
	b.Run("relay", func(b *testing.B) { benchH2Download(b, false) })
	b.Run("goroutines", func(b *testing.B) { benchH2Download(b, true) })
}

const benchH2Size = 64 << 20

func benchH2Upload(b *testing.B, goroutines bool) {
	base, c := benchH2Sidecar(b, goroutines, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "ok")
	})
	for b.Loop() {
		req, _ := http.NewRequest(http.MethodPost, base+"/upload", &countingReader{n: benchH2Size})
		benchH2Call(b, c, req)
	}
}

func benchH2Download(b *testing.B, goroutines bool) {
	chunk := strings.Repeat("d", 64<<10)
	base, c := benchH2Sidecar(b, goroutines, func(w http.ResponseWriter, _ *http.Request) {
		for range benchH2Size / len(chunk) {
			if _, err := io.WriteString(w, chunk); err != nil {
				return
			}
		}
	})
	for b.Loop() {
		req, _ := http.NewRequest(http.MethodGet, base+"/download", nil)
		if n := benchH2Call(b, c, req); n != benchH2Size {
			b.Fatalf("%d bytes, want %d", n, benchH2Size)
		}
	}
}

// benchH2Sidecar starts an h2c backend serving h behind a sidecar, and returns the
// sidecar's outbound URL and a caller (one connection) for it.
func benchH2Sidecar(b *testing.B, goroutines bool, h http.HandlerFunc) (string, *http.Client) {
	be := h2cBackend(b, h)
	cp := st.StartControlPlane(b)
	cp.Set(relayHosts(be.URL, "", nil, st.Timeout(120*time.Second)))
	sc := st.StartSidecar(b, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
	c := h2cCaller()
	c.Timeout = 0
	b.SetBytes(benchH2Size)
	return sc.URL(b, st.OutboundListenerName), c
}

// benchH2Call sends req to "reviews" and returns how many response bytes it read.
func benchH2Call(b *testing.B, c *http.Client, req *http.Request) int64 {
	req.Host = "reviews"
	resp, err := c.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("status %d", resp.StatusCode)
	}
	return n
}
