package xds

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	sotwv3 "github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
)

// Options configure a Server.
type Options struct {
	// Address to listen on, e.g. ":18000". Ignored when Listener is set.
	Address string
	// Listener, when set, is used instead of listening on Address (tests pass 127.0.0.1:0).
	Listener net.Listener
	// OnChange is called (synchronously, so keep it cheap and non-blocking) whenever a
	// sidecar connects, disconnects, ACKs or NACKs: status depends on all of these.
	OnChange func()
	Log      logr.Logger
	// GracePeriod bounds how long Start waits for in-flight RPCs after its context ends
	// (default 5s); then connections are closed.
	GracePeriod time.Duration
	// Keepalive overrides the server's keepalive pings (tests shorten them); zero values take
	// the defaults below.
	Keepalive keepalive.ServerParameters
	// Auth, when set, authenticates every stream and call (docs/zero-trust.md): a sidecar's
	// view is derived from its verified pod, never from its node metadata. Nil is the
	// unauthenticated mode, for tests and development only.
	Auth *Authenticator
	// TLS, when set, is the serving configuration of the port (the manager's xDS
	// certificate); tokens then never cross the network in clear.
	TLS *tls.Config
}

// Keepalive settings. Sidecars ping at most every 15s (a faster client is disconnected
// with ENHANCE_YOUR_CALM), even without an active stream; the server pings an idle
// connection after 30s and drops it when 10s pass without an answer, so a vanished sidecar
// frees its stream and counts no more in status.
var (
	keepaliveEnforcement = keepalive.EnforcementPolicy{MinTime: 15 * time.Second, PermitWithoutStream: true}
	keepaliveParams      = keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}
)

// Server is the xDS gRPC server, a manager Runnable that runs on every replica.
type Server struct {
	opts    Options
	cache   *Cache
	tracker *tracker
	grpc    *grpc.Server

	mu    sync.Mutex
	addr  net.Addr
	ready chan struct{}
}

// New returns a server over cache; other gRPC services may be registered on it (see
// Register) until Start.
func New(cache *Cache, opts Options) *Server {
	if opts.GracePeriod <= 0 {
		opts.GracePeriod = 5 * time.Second
	}
	ka := keepaliveParams
	if opts.Keepalive.Time > 0 {
		ka = opts.Keepalive
	}
	so := []grpc.ServerOption{grpc.KeepaliveEnforcementPolicy(keepaliveEnforcement), grpc.KeepaliveParams(ka)}
	if opts.TLS != nil {
		so = append(so, grpc.Creds(credentials.NewTLS(opts.TLS)))
	}
	if opts.Auth != nil {
		so = append(so, grpc.StreamInterceptor(opts.Auth.StreamInterceptor()), grpc.UnaryInterceptor(opts.Auth.UnaryInterceptor()))
	}
	return &Server{opts: opts, cache: cache, tracker: newTracker(), ready: make(chan struct{}), grpc: grpc.NewServer(so...)}
}

// Register lets another component (the autoscaler's signal service) serve on the same port.
// Call it before Start.
func (s *Server) Register(fn func(grpc.ServiceRegistrar)) { fn(s.grpc) }

// GRPC is the underlying gRPC server, for registrations that need the concrete type.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// Nodes returns every connected sidecar's ACK/NACK state.
func (s *Server) Nodes() []NodeState { return s.tracker.Nodes() }

// Addr is the listening address once Ready is closed.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Ready is closed once the server listens.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// NeedLeaderElection is false: every replica serves xDS so sidecars can use any of them.
func (s *Server) NeedLeaderElection() bool { return false }

// Start serves until ctx ends, then stops gracefully: ending ctx also ends every ADS stream
// (go-control-plane's stream loops watch it), so GracefulStop does not wait on streams that
// never finish on their own.
func (s *Server) Start(ctx context.Context) error {
	ln := s.opts.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", s.opts.Address); err != nil {
			return fmt.Errorf("xDS server: listening on %s: %w", s.opts.Address, err)
		}
	}
	cb := &callbacks{cache: s.cache, tracker: s.tracker, log: s.opts.Log, onChange: s.opts.OnChange,
		secure: s.opts.Auth != nil, idents: map[streamKey]streamIdentity{}}
	xs := serverv3.NewServer(ctx, adsCache{s.cache.cache, s.cache.eds}, cb, sotwv3.WithOrderedADS())
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(s.grpc, xs)
	clusterservice.RegisterClusterDiscoveryServiceServer(s.grpc, xs)
	endpointservice.RegisterEndpointDiscoveryServiceServer(s.grpc, xs)
	listenerservice.RegisterListenerDiscoveryServiceServer(s.grpc, xs)
	routeservice.RegisterRouteDiscoveryServiceServer(s.grpc, xs)
	s.mu.Lock()
	s.addr = ln.Addr()
	s.mu.Unlock()
	close(s.ready)
	s.opts.Log.Info("serving xDS", "address", ln.Addr().String())

	done := make(chan error, 1)
	go func() { done <- s.grpc.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("xDS server stopped: %w", err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(s.opts.GracePeriod):
		s.grpc.Stop()
	}
	if err := <-done; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}
