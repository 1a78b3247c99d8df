package httpproxy_test

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
	"github.com/weftmesh/weft/sidecar/telemetry"
)

// gRPC calls count with request_protocol="grpc" and their grpc-status, a Trailers-Only
// error included, on the HTTP/2 front end.
func TestIstioMetricsForGRPC(t *testing.T) {
	hs := newHealthServer()
	addr := grpcBackend(t, hs)
	cp := st.StartControlPlane(t)
	snap, _ := oneBackend([]string{addr}, nil, h2Upstream(0))
	cp.Set(snap)
	tel := telemetry.New(telemetry.Options{Self: telemetry.WorkloadFromPod("web", "default", nil)})
	sc := st.StartSidecar(t, cp, st.SidecarOptions{Telemetry: tel})
	hc := grpcClient(t, sc.URL(t, st.OutboundListenerName), "reviews")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 2 {
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "a"}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "internal"})
	if s, _ := status.FromError(err); s.Code() != codes.Internal {
		t.Fatalf("INTERNAL answered %v", err)
	}
	fams := scrape(t, tel)
	okCalls := series(t, fams, "istio_requests_total", map[string]string{"request_protocol": "grpc", "grpc_response_status": "0"})
	if v := okCalls.GetCounter().GetValue(); v != 2 || labelsOf(okCalls)["response_code"] != "200" {
		t.Errorf("OK calls: %v with labels %v, want 2 with response_code 200", v, labelsOf(okCalls))
	}
	if v := series(t, fams, "istio_requests_total", map[string]string{"grpc_response_status": "13"}).GetCounter().GetValue(); v != 1 {
		t.Errorf("INTERNAL calls: %v, want 1", v)
	}
}

// With telemetry on, the sidecar stamps each request's trace headers (x-request-id, …).
// On the frame relay those values end up in the upstream connection's HPACK table, which
// outlives the request: 400 requests, 8 at a time on one connection (so ended streams are
// reused), must each reach the upstream with a well-formed id of its own, and the sidecar
// must stay up. (It once built them over a buffer the next request overwrote, which
// corrupted the HPACK encoder's table and panicked.)
func TestTelemetryHeadersSurviveStreamReuseOnHTTP2(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		var mu sync.Mutex
		seen := map[string]bool{}
		bad := 0
		uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
		be := h2cBackend(t, func(w http.ResponseWriter, r *http.Request) {
			id := r.Header.Get("X-Request-Id")
			mu.Lock()
			if !uuid.MatchString(id) || seen[id] {
				bad++
			}
			seen[id] = true
			mu.Unlock()
			_, _ = io.WriteString(w, "ok")
		})
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{be.URL}, nil, h2Upstream(0))
		cp.Set(snap)
		tel := telemetry.New(telemetry.Options{Self: telemetry.WorkloadFromPod("web", "default", nil)})
		base := st.StartSidecar(t, cp, st.SidecarOptions{Telemetry: tel, GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		client := rawH2()
		var wg sync.WaitGroup
		var failed atomic.Int64
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 50 {
					req, _ := http.NewRequest(http.MethodPost, base+"/"+strconv.Itoa(w)+"/"+strconv.Itoa(i), strings.NewReader("x"))
					req.Host = "reviews"
					resp, err := client.Do(req)
					if err != nil {
						failed.Add(1)
						continue
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 || string(b) != "ok" {
						failed.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		if failed.Load() != 0 || bad != 0 || len(seen) != 400 {
			t.Errorf("%d of 400 requests failed; the upstream saw %d distinct ids, %d malformed or repeated", failed.Load(), len(seen), bad)
		}
	})
}
