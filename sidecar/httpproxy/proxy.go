// Package httpproxy is the sidecar's HTTP data plane: it serves the HTTP listeners of the
// current config (outbound 127.0.0.1:15001, inbound 0.0.0.0:15006), matches routes as
// Envoy does, and forwards to upstream clusters with timeouts, retries, fault injection,
// mirroring, circuit breaking and cold-start holding for functions without endpoints.
//
// It takes each new *config.Config through Apply and swaps route tables atomically;
// in-flight requests finish on the config they started with.
package httpproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"k8s.io/utils/clock"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/telemetry"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// Options configure a Proxy.
type Options struct {
	Upstreams *upstream.Manager
	// Holder holds requests for functions without ready endpoints; nil answers 503 at once.
	Holder Holder
	// Watcher hears ready-endpoint counts per cluster on every swap; may be nil.
	Watcher EndpointWatcher
	// Async queues asynchronous calls to functions; nil sends every call synchronously.
	Async  AsyncCaller
	Clock  clock.Clock
	Logger *slog.Logger
	// ListenAddress overrides a listener's address by listener name (tests use
	// 127.0.0.1:0).
	ListenAddress map[string]string
	// GoroutinePerConnection serves HTTP/1.1 with a goroutine per connection instead of
	// the event loop (loop.go).
	GoroutinePerConnection bool
	// Function is the MeshFunction (namespace/name) this pod serves, if any; answers of
	// the inbound listener name it.
	Function string
	// PodIP is this pod's IP: a useSourceIP hash policy hashes it for callers that reach
	// the sidecar over loopback (HTTP_PROXY), who are this pod's app (sourceip.go). Zero:
	// the loopback address is hashed.
	PodIP netip.Addr
	// Diverter takes the captured connections of other filter chains from the listeners
	// bound at capture listeners' addresses (capture.go); nil keeps every connection.
	Diverter Diverter
	// Telemetry receives a record of every HTTP exchange (Istio metrics, access log) and
	// sets the headers each hop adds (telemetry.go); nil: none.
	Telemetry *telemetry.Mesh
	// InboundTLS, when set, makes the bound inbound listener accept mutual TLS from other
	// sidecars (mtls.go); nil: plaintext only.
	InboundTLS InboundTLS
}

// Proxy serves the HTTP listeners of the config in force.
type Proxy struct {
	opts Options
	// breaker enforces containerConcurrency on the inbound listener (nil: no limit).
	breaker atomic.Pointer[breaker]
	// authz counts the inbound listeners' authorization decisions (authz.go).
	authz telemetry.AuthzCounters

	mu        sync.Mutex
	listeners map[string]*Listener
	draining  bool
}

// New returns a proxy with no listeners; they start on the first Apply.
func New(opts Options) *Proxy {
	if opts.Clock == nil {
		opts.Clock = clock.RealClock{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Upstreams != nil {
		opts.Upstreams.LogSlow(opts.Logger)
	}
	return &Proxy{opts: opts, listeners: map[string]*Listener{}}
}

// Listener is one HTTP listener and its counters.
type Listener struct {
	Name string
	// inbound is set on the listener for the pod's own app, which enforces containerConcurrency.
	inbound bool
	// appSeen: the app has answered once; before that, a refused connection is waited out
	// (waitForApp).
	appSeen atomic.Bool
	proxy   *Proxy
	routes  atomic.Pointer[config.RouteTable]
	hl      atomic.Pointer[config.HTTPListener] // the config in force (capture.go)
	unbound bool                                // a capture chain's: binds nothing (capture.go)
	ln      net.Listener
	h2      *h2Server
	frames  frameSet   // h2c connections on the frame relay (frames.go)
	mtls    *mtlsFront // mutual TLS on the inbound listener (mtls.go); nil: none
	// loops serve the listener's HTTP/1.1 connections; none: a goroutine per connection. A
	// capture chain's start with its first connection (loopcapture.go), under loopMu.
	loops        []*hloop
	loopMu       sync.Mutex
	loopsStopped bool   // shutdown has begun: no loop starts
	loopsFailed  bool   // the loops could not start: a goroutine per connection
	nextLoop     uint32 // the loop the last captured connection joined
	addr         net.Addr
	cfgAddr      string

	mu       sync.Mutex
	conns    map[net.Conn]*connState // HTTP/1 connections and whether each serves a request now
	draining atomic.Bool
	idleCond *sync.Cond

	inflight     atomic.Int64
	requests     atomic.Uint64
	connections  atomic.Uint64
	handoffs     atomic.Uint64 // connections the event loop passed to the goroutine path
	capturedLoop atomic.Uint64 // captured connections that joined an event loop (loopcapture.go)
	// mutual TLS on the event loop (looptls.go): inbound connections that joined a loop,
	// and the loop's dials to meshed endpoints (all, and those that failed)
	loopTLSConns, loopTLSDials, loopTLSDialErrors atomic.Uint64

	callerResets atomic.Uint64 // requests cancelled upstream because the caller hung up
	// appStartTimeouts: requests refused because the app did not start within the caller's
	// hold (appstart.go).
	appStartTimeouts atomic.Uint64
	upgrades         atomic.Uint64 // Upgrade requests answered 101 and tunneled (upgrade.go)
	tunnels          atomic.Int64  // tunnels open now

	frontEnd // limits on downstream connections (frontlimits.go)
}

// Stats returns the requests in flight now and the requests served since start; an
// autoscale reporter derives requests per second from two readings.
func (l *Listener) Stats() (inflight int, requests uint64) {
	return int(l.inflight.Load()), l.requests.Load()
}

// Addr is the address the listener is bound to.
func (l *Listener) Addr() net.Addr { return l.addr }

// Listener returns the named listener, or nil.
func (p *Proxy) Listener(name string) *Listener {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.listeners[name]
}

// Apply brings upstreams, route tables and listeners in line with cfg, then tells the
// watcher each cluster's ready-endpoint count. It returns the first listener that failed
// to bind; the others still serve.
func (p *Proxy) Apply(cfg *config.Config) error {
	p.opts.Upstreams.Update(cfg.Clusters)
	p.mu.Lock()
	var errs []error
	seen := map[string]bool{}
	for _, hl := range cfg.HTTPListeners {
		seen[hl.Name] = true
		l := p.listeners[hl.Name]
		if l != nil && l.cfgAddr != hl.Address {
			go func() { _ = l.shutdown(context.Background()) }() // drains in the background; nothing waits for it
			l = nil
		}
		if l == nil {
			if p.draining {
				continue
			}
			nl, err := p.startUnbound(hl), error(nil)
			if hl.Address != "" {
				nl, err = p.start(hl)
			}
			if err != nil {
				errs = append(errs, err)
				continue
			}
			l = nl
			p.listeners[hl.Name] = l
		}
		l.routes.Store(hl.Routes)
		l.hl.Store(hl)
		l.setLimits(hl.Limits)
	}
	for name, l := range p.listeners {
		if !seen[name] {
			go func() { _ = l.shutdown(context.Background()) }() // drains in the background; nothing waits for it
			delete(p.listeners, name)
		}
	}
	p.mu.Unlock()
	if p.opts.Watcher != nil {
		for _, name := range p.opts.Upstreams.Names() {
			if c := p.opts.Upstreams.Get(name); c != nil {
				p.opts.Watcher.ClusterEndpointsChanged(name, c.ReadyCount())
			}
		}
	}
	return errors.Join(errs...)
}

func (p *Proxy) start(hl *config.HTTPListener) (*Listener, error) {
	addr := hl.Address
	if o, ok := p.opts.ListenAddress[hl.Name]; ok {
		addr = o
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listener %s: binding %s: %w", hl.Name, addr, err)
	}
	l := &Listener{Name: hl.Name, inbound: hl.Name == contract.InboundListenerName, proxy: p, addr: ln.Addr(), cfgAddr: hl.Address, ln: ln, conns: map[net.Conn]*connState{}}
	l.idleCond = sync.NewCond(&l.mu)
	l.setLimits(hl.Limits)
	l.h2 = newH2Server(l, ln.Addr(), l.lim)
	mode := "goroutine per connection"
	if l.inbound && p.opts.InboundTLS != nil {
		mode = p.startMTLS(l, ln) // mtls.go
	} else if p.opts.GoroutinePerConnection {
		go l.serve(ln)
	} else if err := l.startLoops(ln, loopCount()); err != nil {
		p.opts.Logger.Warn("HTTP event loop unavailable; serving a goroutine per connection", "listener", hl.Name, "error", err)
		go l.serve(ln)
	} else {
		mode = "event loop"
	}
	p.opts.Logger.Info("listening", "listener", hl.Name, "address", ln.Addr().String(), "mode", mode)
	return l, nil
}

// Shutdown stops accepting on every listener and waits for in-flight requests until ctx
// ends: the SIGTERM drain.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	p.draining = true
	ls := make([]*Listener, 0, len(p.listeners))
	for _, l := range p.listeners {
		ls = append(ls, l)
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	errs := make([]error, len(ls))
	for i, l := range ls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = l.shutdown(ctx)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// shutdown stops accepting, closes idle connections, lets each active one finish its
// request (answered with Connection: close) and waits for them until ctx ends.
func (l *Listener) shutdown(ctx context.Context) error {
	loops := l.stopLoops()
	for _, h := range loops {
		h.drain()
	}
	_ = l.ln.Close()
	var loopErr error
	for _, h := range loops {
		select {
		case <-h.done:
		case <-ctx.Done():
			h.ev.Stop()
			<-h.done
			loopErr = fmt.Errorf("listener %s: connections still busy at the drain deadline: %w", l.Name, ctx.Err())
		}
	}
	if loopErr != nil {
		return loopErr
	}
	l.mu.Lock()
	l.draining.Store(true)
	for c, st := range l.conns {
		if !st.active.Load() {
			// Only the read side: an idle connection may still owe the response its
			// reader writes on the way into the next read (connio.Conn). The reader
			// then sees EOF and closes the connection itself.
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.CloseRead()
			} else {
				_ = c.Close()
			}
		}
	}
	l.mu.Unlock()
	h2err := make(chan error, 1)
	go func() {
		err := l.frames.drain(ctx)
		if herr := l.h2.srv.Shutdown(ctx); herr != nil {
			err = herr
		}
		h2err <- err
	}()
	stop := context.AfterFunc(ctx, func() {
		l.mu.Lock()
		l.idleCond.Broadcast()
		l.mu.Unlock()
	})
	defer stop()
	l.mu.Lock()
	for len(l.conns) > 0 && ctx.Err() == nil {
		l.idleCond.Wait()
	}
	left := len(l.conns)
	l.mu.Unlock()
	if left > 0 {
		return fmt.Errorf("listener %s: %d connections still busy at the drain deadline: %w", l.Name, left, ctx.Err())
	}
	return <-h2err
}
