package peer

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/weftmesh/weft/contract"
)

// Security is the peer port's protection: the xDS serving certificate (every replica loads
// the same Secret) and a token derived from its private key. Zero is plaintext without a
// token, the --xds-insecure development mode.
type Security struct {
	// TLS serves the peer port (the xDS serving configuration).
	TLS *tls.Config
	// CA verifies the peer's certificate for contract.XDSServerName.
	CA []byte
	// Token is what a peer sends and the server expects (Token).
	Token string
}

// Token derives the peer token from the xDS serving key: only a process that reads the
// manager's xDS Secret knows it, and that process could serve xDS as the manager already.
func Token(servingKey []byte) string {
	m := hmac.New(sha256.New, servingKey)
	m.Write([]byte("weft peer token v1"))
	return hex.EncodeToString(m.Sum(nil))
}

const tokenHeader = "x-weft-peer-token"

// Server serves the peer service on its own port, a manager Runnable on every replica.
type Server struct {
	Address  string
	Listener net.Listener // tests pass 127.0.0.1:0
	Security Security
	Hub      *Hub
	Log      logr.Logger

	mu    sync.Mutex
	addr  net.Addr
	ready chan struct{}
	once  sync.Once
}

func (s *Server) init() { s.once.Do(func() { s.ready = make(chan struct{}) }) }

// Ready is closed once the server listens.
func (s *Server) Ready() <-chan struct{} { s.init(); return s.ready }

// Addr is the listening address once Ready is closed.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// NeedLeaderElection is false: every replica takes reports, and signals once it leads.
func (s *Server) NeedLeaderElection() bool { return false }

// Start serves until ctx ends.
func (s *Server) Start(ctx context.Context) error {
	s.init()
	ln := s.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", s.Address); err != nil {
			return fmt.Errorf("peer server: listening on %s: %w", s.Address, err)
		}
	}
	opts := []grpc.ServerOption{grpc.MaxRecvMsgSize(MaxMessageBytes), grpc.UnaryInterceptor(s.authorize)}
	if s.Security.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(s.Security.TLS)))
	}
	g := grpc.NewServer(opts...)
	s.Hub.Register(g)
	s.mu.Lock()
	s.addr = ln.Addr()
	s.mu.Unlock()
	close(s.ready)
	s.Log.Info("serving the peer port", "address", ln.Addr().String())
	done := make(chan error, 1)
	go func() { done <- g.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("peer server stopped: %w", err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { g.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		g.Stop()
	}
	if err := <-done; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// authorize refuses a call without the peer token (when the port has one).
func (s *Server) authorize(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if want := s.Security.Token; want != "" {
		md, _ := metadata.FromIncomingContext(ctx)
		got := md.Get(tokenHeader)
		if len(got) != 1 || subtle.ConstantTimeCompare([]byte(got[0]), []byte(want)) != 1 {
			return nil, status.Error(codes.Unauthenticated, "the peer port takes only the manager's replicas: send the peer token derived from the xDS Secret")
		}
	}
	return h(ctx, req)
}

// Dialer connects to peers with sec: TLS verifying the xDS certificate and the token on
// every call.
func Dialer(sec Security) (func(addr string) (*grpc.ClientConn, error), error) {
	creds := insecure.NewCredentials()
	if sec.TLS != nil {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(sec.CA) {
			return nil, errors.New("peer: the xDS CA certificate does not parse")
		}
		creds = credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: contract.XDSServerName, MinVersion: tls.VersionTLS12})
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.CallContentSubtype(contract.SignalCodecName), grpc.MaxCallSendMsgSize(MaxMessageBytes))}
	if sec.Token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(tokenCreds{token: sec.Token, secure: sec.TLS != nil}))
	}
	return func(addr string) (*grpc.ClientConn, error) { return grpc.NewClient("passthrough:///"+addr, opts...) }, nil
}

type tokenCreds struct {
	token  string
	secure bool
}

func (t tokenCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{tokenHeader: t.token}, nil
}

func (t tokenCreds) RequireTransportSecurity() bool { return t.secure }
