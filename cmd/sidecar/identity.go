package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"google.golang.org/grpc"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/capture"
	"github.com/weftmesh/weft/sidecar/httpproxy"
	"github.com/weftmesh/weft/sidecar/identity"
	"github.com/weftmesh/weft/sidecar/redisproxy"
)

// identityFlags configure the workload certificate and mutual TLS (docs/mtls.md).
type identityFlags struct {
	enabled bool
	ttl     time.Duration
	mode    string
}

// addIdentityFlags registers the identity flags; --mtls-mode defaults to $WEFT_MTLS_MODE.
func addIdentityFlags(f *identityFlags) {
	flag.BoolVar(&f.enabled, "workload-identity", true,
		"get a workload certificate from the control plane and speak mutual TLS to other sidecars (needs the authenticated xDS connection)")
	flag.DurationVar(&f.ttl, "workload-cert-ttl", 0, "lifetime to ask for (0: the control plane's default, 24h); renewed at half of it")
	flag.StringVar(&f.mode, "mtls-mode", os.Getenv("WEFT_MTLS_MODE"),
		"inbound peer authentication: permissive or strict; empty: what the control plane sends (the weft.dev/mtls pod or namespace label)")
}

// startIdentity runs the workload certificate manager on the authenticated connection conn;
// nil when identity is off or the xDS connection is not authenticated (no verified
// identity, no certificate: the sidecar stays plaintext).
func startIdentity(ctx context.Context, f identityFlags, secure bool, conn grpc.ClientConnInterface, log *slog.Logger) (*identity.Manager, error) {
	if !f.enabled {
		return nil, nil
	}
	if f.mode != "" {
		if _, err := contract.ParseMTLSMode(f.mode); err != nil {
			return nil, fmt.Errorf("--mtls-mode: %w", err)
		}
	}
	if !secure {
		log.Warn("no workload certificate: the control-plane connection is not authenticated; sidecar-to-sidecar traffic stays plaintext")
		return nil, nil
	}
	m := identity.New(identity.Options{Signer: identity.GRPCSigner{Conn: conn}, TTL: f.ttl, Mode: f.mode, Log: log})
	go m.Run(ctx)
	return m, nil
}

// inboundTLS is m as the proxy's InboundTLS, nil (not a typed nil) without identity.
func inboundTLS(m *identity.Manager) httpproxy.InboundTLS {
	if m == nil {
		return nil
	}
	return m
}

// captureTLS is m as the capture plane's InboundTLS (mutual TLS on captured TCP ports),
// nil (not a typed nil) without identity.
func captureTLS(m *identity.Manager) capture.InboundTLS {
	if m == nil {
		return nil
	}
	return m
}

// redisTLS is m as the Redis pools' MeshTLS (servers behind sidecars), nil (not a typed
// nil) without identity.
func redisTLS(m *identity.Manager) redisproxy.MeshTLS {
	if m == nil {
		return nil
	}
	return m
}

// mtlsStats adapts the proxy's mutual TLS counters to the admin StatsWriter seam.
type mtlsStats struct{ px *httpproxy.Proxy }

func (s mtlsStats) WritePrometheus(w io.Writer) { s.px.WriteMTLSStats(w) }
