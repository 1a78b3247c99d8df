package httpproxy_test

import (
	"context"
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
