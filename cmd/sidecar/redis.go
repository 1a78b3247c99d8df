package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sort"
	"sync"

	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/redisproxy"
)

// redisPools runs one redis proxy per redis listener of the config in force: it starts a
// proxy when a listener appears, updates it in place (client connections stay) when its pool
// changes, and stops it when the listener goes away.
type redisPools struct {
	log *slog.Logger
	// bindAny replaces the listener's host with 0.0.0.0 (standalone proxies serve clients
	// outside the pod).
	bindAny bool
	// meshTLS dials servers behind sidecars with mutual TLS (nil: no identity, plaintext).
	meshTLS redisproxy.MeshTLS
	// tls, when set, serves mutual TLS next to plaintext on every pool listener, so
	// MeshPolicies judge callers that come over the network by their verified identity.
	tls redisproxy.TLSSource

	mu      sync.Mutex
	running map[string]*redisPool // by listener name
}

type redisPool struct {
	proxy *redisproxy.Proxy
	ln    net.Listener
	addr  string
}

func newRedisPools(log *slog.Logger, bindAny bool, meshTLS redisproxy.MeshTLS) *redisPools {
	return &redisPools{log: log, bindAny: bindAny, meshTLS: meshTLS, running: map[string]*redisPool{}}
}

// Apply brings the running proxies in line with cfg's redis listeners.
func (r *redisPools) Apply(cfg *config.Config) {
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := map[string]bool{}
	for _, rl := range cfg.RedisListeners {
		name := rl.Listener.GetName()
		seen[name] = true
		pc := rl.Decoded
		addr := pc.Listen
		if r.bindAny {
			if _, port, err := net.SplitHostPort(addr); err == nil {
				addr = net.JoinHostPort("0.0.0.0", port)
			}
		}
		if cur, ok := r.running[name]; ok && cur.addr == addr {
			if err := cur.proxy.Update(pc); err != nil {
				r.log.Error("updating redis pool", "listener", name, "err", err)
			}
			continue
		} else if ok {
			r.stop(name, cur)
		}
		if err := r.start(name, addr, pc); err != nil {
			r.log.Error("starting redis pool", "listener", name, "address", addr, "err", err)
		}
	}
	for name, cur := range r.running {
		if !seen[name] {
			r.stop(name, cur)
		}
	}
}

func (r *redisPools) start(name, addr string, pc redisproxy.Config) error {
	opts := []redisproxy.Option{redisproxy.WithMeshTLS(r.meshTLS)}
	if r.tls != nil {
		opts = append(opts, redisproxy.WithTLS(r.tls))
	}
	px, err := redisproxy.New(pc, opts...)
	if err != nil {
		return fmt.Errorf("redis listener %s: %w", name, err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		_ = px.Shutdown(context.Background())
		return fmt.Errorf("redis listener %s: binding %s: %w", name, addr, err)
	}
	r.running[name] = &redisPool{proxy: px, ln: ln, addr: addr}
	go func() {
		if err := px.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) {
			r.log.Error("redis pool stopped", "listener", name, "err", err)
		}
	}()
	r.log.Info("redis pool serving", "listener", name, "address", ln.Addr().String())
	return nil
}

func (r *redisPools) stop(name string, p *redisPool) {
	delete(r.running, name)
	go func() { _ = p.proxy.Shutdown(context.Background()) }()
}

// Shutdown stops every proxy, letting in-flight commands finish until ctx ends.
func (r *redisPools) Shutdown(ctx context.Context) {
	r.mu.Lock()
	pools := r.running
	r.running = map[string]*redisPool{}
	r.mu.Unlock()
	for _, p := range pools {
		_ = p.proxy.Shutdown(ctx)
	}
}

// WritePrometheus appends every pool's stats to /stats.
func (r *redisPools) WritePrometheus(w io.Writer) {
	r.mu.Lock()
	names := make([]string, 0, len(r.running))
	for n := range r.running {
		names = append(names, n)
	}
	sort.Strings(names)
	pools := make([]*redisPool, 0, len(names))
	for _, n := range names {
		pools = append(pools, r.running[n])
	}
	r.mu.Unlock()
	for _, p := range pools {
		if err := p.proxy.WritePrometheus(w); err != nil {
			return // the scraper went away
		}
	}
}
