package sidecartest

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"k8s.io/utils/clock"

	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/httpproxy"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
	"github.com/weftmesh/weft/sidecar/telemetry"
	"github.com/weftmesh/weft/sidecar/upstream"
	"github.com/weftmesh/weft/sidecar/xdsclient"
)

// Sidecar is the sidecar's xDS client, upstreams and HTTP proxy wired as cmd/sidecar
// wires them, with listeners on dynamic loopback ports.
type Sidecar struct {
	Client    *xdsclient.Client
	Proxy     *httpproxy.Proxy
	Upstreams *upstream.Manager
}

// SidecarOptions tune StartSidecar.
type SidecarOptions struct {
	Holder  httpproxy.Holder
	Watcher httpproxy.EndpointWatcher
	Async   httpproxy.AsyncCaller
	// GoroutinePerConnection turns the outbound event loop off (httpproxy.Options).
	GoroutinePerConnection bool
	// Function is the MeshFunction (namespace/name) the sidecar's pod serves, if any.
	Function string
	// PodIP is the sidecar's pod IP (httpproxy.Options.PodIP).
	PodIP netip.Addr
	// Telemetry receives the sidecar's HTTP exchanges (httpproxy.Options.Telemetry).
	Telemetry *telemetry.Mesh
	// InboundTLS and MeshTLS make the sidecar speak mutual TLS (identity.Manager);
	// InboundAddress binds the inbound listener there instead of 127.0.0.1:0 (a meshed
	// endpoint is on port contract.InboundPort).
	InboundTLS     httpproxy.InboundTLS
	MeshTLS        upstream.MeshTLS
	InboundAddress string
}

// StartSidecar connects a sidecar to cp; everything stops when the test ends.
func StartSidecar(t testing.TB, cp *ControlPlane, o SidecarOptions) *Sidecar {
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.Default()
	}
	ups := upstream.NewManager(ctx, clock.RealClock{})
	if o.MeshTLS != nil {
		ups.SetMeshTLS(o.MeshTLS)
	}
	inAddr := "127.0.0.1:0"
	if o.InboundAddress != "" {
		inAddr = o.InboundAddress
	}
	px := httpproxy.New(httpproxy.Options{Upstreams: ups, Holder: o.Holder, Watcher: o.Watcher, Async: o.Async, Logger: log,
		ListenAddress:          map[string]string{OutboundListenerName: "127.0.0.1:0", InboundListenerName: inAddr},
		GoroutinePerConnection: o.GoroutinePerConnection, Function: o.Function, PodIP: o.PodIP, Telemetry: o.Telemetry,
		InboundTLS: o.InboundTLS})
	cl := xdsclient.New(xdsclient.Options{Address: cp.Addr(), Node: &corev3.Node{Id: NodeID}, Logger: log,
		BackoffBase: 50 * time.Millisecond, BackoffMax: 500 * time.Millisecond,
		Applier: xdsclient.ApplierFunc(func(c *config.Config) {
			if err := px.Apply(c); err != nil {
				t.Errorf("applying config: %v", err)
			}
		})})
	done := make(chan struct{})
	go func() { defer close(done); _ = cl.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		sctx, c2 := context.WithTimeout(context.Background(), 5*time.Second)
		defer c2()
		_ = px.Shutdown(sctx)
	})
	return &Sidecar{Client: cl, Proxy: px, Upstreams: ups}
}

// WaitForVersion polls until the config in force has the given version for typeURL.
func (s *Sidecar) WaitForVersion(t testing.TB, typeURL, version string) {
	t.Helper()
	Eventually(t, 20*time.Second, func() bool {
		c := s.Client.Current()
		return c != nil && c.Versions[typeURL] == version
	}, "config version %s=%s never applied (status %+v)", typeURL, version, s.Client.Status())
}

// URL is the base URL of a listener, waiting for it to start.
func (s *Sidecar) URL(t testing.TB, listener string) string {
	t.Helper()
	Eventually(t, 20*time.Second, func() bool { return s.Proxy.Listener(listener) != nil },
		"listener %s never started (status %+v)", listener, s.Client.Status())
	return "http://" + s.Proxy.Listener(listener).Addr().String()
}

// Eventually polls cond until it holds, and fails the test with msg and args (what it
// waited for) when timeout passes first. It is poll.Until, the one polling helper of the
// tests, named here for the tests that use this package's other helpers.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	poll.Until(t, timeout, cond, msg, args...)
}

// Backend is a real HTTP server on 127.0.0.1 that answers with its name.
func Backend(t testing.TB, name string, h http.HandlerFunc) *httptest.Server {
	if h == nil {
		h = func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, name) }
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// HostPort strips the scheme from a test server URL.
func HostPort(url string) string { return strings.TrimPrefix(url, "http://") }

// Get sends a request with the given Host through base and returns status, body and
// headers; transport errors fail the test.
func Get(t testing.TB, client *http.Client, base, host, path string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s%s (Host %s): %v", base, path, host, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}
