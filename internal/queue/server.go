// Package queue runs the NATS JetStream that carries asynchronous function calls, or connects
// to an external NATS cluster instead, and sets up the streams both sides of the queue use.
//
// It takes flags-level options (store dir, listen address, token or external URL) and
// produces a running server (a controller-runtime Runnable), a JetStream client, the streams
// WEFT_CALLS and WEFT_DEAD, and per-function pending-message counts for the autoscaler.
//
// The subject layout (weft.calls.<namespace>.<name>, weft.dead.<namespace>.<name>) is shared
// with sidecar/async, which cannot import this package; change both together.
package queue

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/nats-server/v2/server"
)

// ServerOptions configure the embedded NATS server.
type ServerOptions struct {
	// Listen is host:port for client connections: the pod's 0.0.0.0:4222 in production,
	// 127.0.0.1:-1 (a random port) in tests.
	Listen string
	// StoreDir holds JetStream's file store. It should be a persistent volume: queued calls
	// live there.
	StoreDir string
	// Key derives every user's password (Credentials): the manager's AdminUser and one user
	// per identity (a function's pods, a namespace's other sidecars), each limited to what
	// Grants allow. Empty disables auth, which is only for tests.
	Key string
	// Policy restricts which identities may call which functions; nil: every identity may
	// call every function. It is read when a client connects, and every PolicyRefresh
	// (default 5s) the connections whose grant it changed are closed, to reconnect with
	// the new one.
	Policy        CallPolicy
	PolicyRefresh time.Duration
	// MaxPayload bounds one message. It must hold the largest async body (maxBodyBytes is at
	// most 8 MiB) plus its headers; 0 means DefaultMaxPayload.
	MaxPayload int32
	// ReadyTimeout bounds how long Start waits for the server to accept connections.
	ReadyTimeout time.Duration
	// Logger receives start/stop events; the NATS server's own logging stays off.
	Logger logr.Logger
}

// DefaultMaxPayload is 8 MiB of body plus 1 MiB for headers.
const DefaultMaxPayload = 9 << 20

// Server is the embedded NATS JetStream server. Start it as a manager Runnable; ClientURL is
// valid once Ready is closed.
type Server struct {
	opts  ServerOptions
	ready chan struct{}

	mu  sync.Mutex
	url string
}

// NewServer checks the options; nothing listens until Start.
func NewServer(opts ServerOptions) (*Server, error) {
	if opts.StoreDir == "" {
		return nil, errors.New("embedded NATS needs a store directory: set --nats-store-dir or use --nats-url for an external cluster")
	}
	if _, _, err := splitListen(opts.Listen); err != nil {
		return nil, err
	}
	if opts.MaxPayload == 0 {
		opts.MaxPayload = DefaultMaxPayload
	}
	if opts.PolicyRefresh <= 0 {
		opts.PolicyRefresh = 5 * time.Second
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 30 * time.Second
	}
	return &Server{opts: opts, ready: make(chan struct{})}, nil
}

func splitListen(listen string) (string, int, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", 0, fmt.Errorf("NATS listen address %q: %w (want host:port, e.g. 0.0.0.0:4222)", listen, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < -1 || p > 65535 {
		return "", 0, fmt.Errorf("NATS listen address %q: port must be -1 (random) or 0-65535", listen)
	}
	return host, p, nil
}

// Start runs the server until ctx is done, then shuts it down: clients are disconnected and
// JetStream flushes its store. It returns an error only if the server could not start.
func (s *Server) Start(ctx context.Context) error {
	host, port, _ := splitListen(s.opts.Listen)
	o := &server.Options{
		ServerName: "weft-manager",
		Host:       host,
		Port:       port,
		MaxPayload: s.opts.MaxPayload,
		JetStream:  true,
		StoreDir:   s.opts.StoreDir,
		NoSigs:     true,
		NoLog:      true,
	}
	var auth *authenticator
	if s.opts.Key != "" {
		auth = &authenticator{creds: NewCredentials(s.opts.Key), policy: s.opts.Policy}
		o.CustomClientAuthentication = auth
	}
	ns, err := server.NewServer(o)
	if err != nil {
		return fmt.Errorf("configuring embedded NATS: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(s.opts.ReadyTimeout) {
		ns.Shutdown()
		return fmt.Errorf("embedded NATS on %s did not accept connections within %s; check the address is free and the store dir %s is writable",
			s.opts.Listen, s.opts.ReadyTimeout, s.opts.StoreDir)
	}
	s.mu.Lock()
	s.url = localURL(ns.ClientURL())
	s.mu.Unlock()
	close(s.ready)
	s.opts.Logger.Info("embedded NATS JetStream started", "url", s.ClientURL(), "storeDir", s.opts.StoreDir)
	if auth != nil && s.opts.Policy != nil {
		t := time.NewTicker(s.opts.PolicyRefresh)
		defer t.Stop()
	wait:
		for {
			select {
			case <-ctx.Done():
				break wait
			case <-t.C:
				if n := auth.refresh(ns); n > 0 {
					s.opts.Logger.Info("async call policy changed; reconnecting the affected NATS clients", "clients", n)
				}
			}
		}
	}
	<-ctx.Done()
	ns.Shutdown()
	ns.WaitForShutdown()
	s.opts.Logger.Info("embedded NATS JetStream stopped")
	return nil
}

// NeedLeaderElection is false: the server holds the queue's data and must run from the
// start on the replica that owns its volume. Embedded NATS is single-node, so run one
// manager replica or use an external cluster (--nats-url) for high availability.
func (s *Server) NeedLeaderElection() bool { return false }

// Ready is closed once the server accepts connections.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// ClientURL is the URL in-process clients dial (a wildcard listen address becomes
// loopback). Empty before Ready.
func (s *Server) ClientURL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.url
}

func localURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	switch u.Hostname() {
	case "", "0.0.0.0", "::":
		u.Host = net.JoinHostPort("127.0.0.1", u.Port())
	}
	return u.String()
}
