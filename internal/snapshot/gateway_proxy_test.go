package snapshot

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"k8s.io/utils/clock"

	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/httpproxy"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// gatewayInput is a MeshRoute for api.example.com (and api) to Service default/api, whose
// one endpoint is backend, a real server on loopback.
func gatewayInput(t *testing.T, backend string) *Input {
	t.Helper()
	host, port, err := net.SplitHostPort(backend)
	if err != nil {
		t.Fatal(err)
	}
	doc := fmt.Sprintf(`apiVersion: mesh.weft.dev/v1alpha1
kind: MeshRoute
metadata: {name: api, namespace: default, generation: 1, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  hosts: [api.example.com, api]
  http:
  - route:
    - {service: api, port: 9080, weight: 1}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: default}
spec:
  clusterIP: 10.96.0.50
  ports:
  - {name: http, port: 9080, targetPort: %[2]s}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: default, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports:
- {name: http, port: %[2]s}
endpoints:
- addresses: [%[1]s]
  conditions: {ready: true}
`, host, port)
	path := filepath.Join(t.TempDir(), "in.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	in, _ := readInput(t, path)
	return in
}

// startGateway runs the sidecar's HTTP proxy on the gateway view's config, as cmd/sidecar
// does in the gateway pod, with its listener on a free loopback port.
func startGateway(t *testing.T, res *Result, goroutines bool) string {
	t.Helper()
	snap, err := res.Snapshot(GatewayView())
	if err != nil {
		t.Fatal(err)
	}
	rs := config.Resources{}
	for _, ty := range []string{resourcev3.ListenerType, resourcev3.RouteType, resourcev3.ClusterType, resourcev3.EndpointType} {
		rs[ty] = map[string]proto.Message{}
		for n, r := range snap.GetResources(ty) {
			rs[ty][n] = r.(proto.Message)
		}
	}
	cfg, err := config.Build(rs, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	px := httpproxy.New(httpproxy.Options{Upstreams: upstream.NewManager(ctx, clock.RealClock{}),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), GoroutinePerConnection: goroutines,
		ListenAddress: map[string]string{GatewayListenerName: "127.0.0.1:0"}})
	if err := px.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = px.Shutdown(sctx)
		cancel()
	})
	l := px.Listener(GatewayListenerName)
	if l == nil {
		t.Fatal("the gateway config started no gateway listener")
	}
	return "http://" + l.Addr().String()
}

// The sidecar serving the gateway view, on both HTTP paths: a MeshRoute host reaches its
// backend without any internal header a caller forged (an ordinary header passes), and an
// unknown host, a bare short name or a ClusterIP gets the 404 that says why.
func TestGatewayProxyRoutesByHostAndDropsForgedHeaders(t *testing.T) {
	for _, goroutines := range []bool{false, true} {
		t.Run(map[bool]string{false: "event loop", true: "goroutines"}[goroutines], func(t *testing.T) {
			seen := make(chan http.Header, 4)
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen <- r.Header.Clone()
				_, _ = io.WriteString(w, "api")
			}))
			t.Cleanup(backend.Close)
			base := startGateway(t, Translate(gatewayInput(t, strings.TrimPrefix(backend.URL, "http://"))), goroutines)
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil}}
			do := func(host string, hdr http.Header) (int, string) {
				req, err := http.NewRequest(http.MethodGet, base+"/x", nil)
				if err != nil {
					t.Fatal(err)
				}
				req.Host = host
				for k, v := range hdr {
					req.Header[k] = v
				}
				resp, err := client.Do(req)
				if err != nil {
					t.Fatalf("Host %s: %v", host, err)
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, string(b)
			}

			forged := http.Header{"X-Benign": {"kept"}}
			for _, h := range gatewayStrippedHeaders {
				forged[http.CanonicalHeaderKey(h)] = []string{"forged"}
			}
			for _, host := range []string{"api.example.com", "api.default", "api.default.svc.cluster.local:9080"} {
				if code, body := do(host, forged); code != http.StatusOK || body != "api" {
					t.Fatalf("Host %s: %d %q, want 200 from the backend", host, code, body)
				}
				got := <-seen
				if got.Get("X-Benign") != "kept" {
					t.Fatalf("Host %s: an ordinary header did not reach the backend: %v", host, got)
				}
				for _, h := range gatewayStrippedHeaders {
					if v, ok := got[http.CanonicalHeaderKey(h)]; ok {
						t.Errorf("Host %s: the backend got forged %s: %v", host, h, v)
					}
				}
			}
			for _, host := range []string{"nosuch.example.com", "api", "10.96.0.50:9080", "kubernetes.default"} {
				code, body := do(host, nil)
				if code != http.StatusNotFound || body != GatewayNotFoundBody {
					t.Errorf("Host %s: %d %q, want 404 with the gateway's body", host, code, body)
				}
			}
			select {
			case h := <-seen:
				t.Fatalf("a request the gateway should have refused reached the backend: %v", h)
			default:
			}
		})
	}
}
