package redisproxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/weftmesh/weft/sidecar/redisproxy/ring"
	"k8s.io/utils/clock"
)

// Proxy is a running Redis sharding proxy. It is safe for concurrent use.
type Proxy struct {
	snap   atomic.Pointer[snapshot]
	clock  clock.Clock
	mu     sync.Mutex // guards lns, clients, ups, shutdown
	lns    map[net.Listener]struct{}
	cls    map[*client]struct{}
	ups    map[string]*upstream
	wg     sync.WaitGroup
	closed bool
	nextID atomic.Uint64
	stats  *stats
	// meshTLS dials servers marked MeshTLS (meshtls.go); nil: plaintext.
	meshTLS atomic.Pointer[tls.Config]
	tlsSrc  TLSSource // nil: plaintext only (authz.go)
	// sniffing are accepted connections whose first byte or TLS handshake is awaited, and
	// refused ones being answered (authz.go); guarded by mu, closed by Shutdown.
	sniffing map[net.Conn]struct{}
}

// Option customises a Proxy.
type Option func(*Proxy)

// WithClock injects the clock that drives health probes (tests use a fake).
func WithClock(c clock.Clock) Option { return func(p *Proxy) { p.clock = c } }

// snapshot is one immutable configuration with its live routing state.
type snapshot struct {
	cfg      Config
	pools    map[string]*pool
	routes   []route // longest prefix first
	fold     bool    // case-insensitive prefixes
	catchAll *pool
	// refuseAll, when set, answers every command (authz.go): the control plane refused
	// this sidecar's identity for the pool.
	refuseAll string
}

type route struct {
	prefix string
	remove bool
	pool   *pool
}

// pool is one configured server pool in a snapshot.
type pool struct {
	name    string
	cfg     Pool
	servers []*upstream
	ring    atomic.Pointer[ring.Ring]
	mu      sync.Mutex // serialises ring rebuilds
}

// New validates cfg and returns a proxy ready to Serve.
func New(cfg Config, opts ...Option) (*Proxy, error) {
	p := &Proxy{clock: clock.RealClock{}, lns: map[net.Listener]struct{}{}, cls: map[*client]struct{}{}, ups: map[string]*upstream{}, stats: newStats()}
	for _, o := range opts {
		o(p)
	}
	if err := p.Update(cfg); err != nil {
		return nil, err
	}
	return p, nil
}

// Update swaps in a new configuration atomically. Client connections stay
// open; servers whose pool, name, address and credentials are unchanged keep
// their connections and health state; the rings are rebuilt.
func (p *Proxy) Update(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.ConnsPerServer <= 0 {
		cfg.ConnsPerServer = 1
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("redis proxy is shut down")
	}
	s := &snapshot{cfg: cfg, pools: map[string]*pool{}, fold: cfg.RoutesCaseInsensitive, refuseAll: judgedRefusal(cfg.Authz)}
	keep := map[string]*upstream{}
	names := make([]string, 0, len(cfg.Pools))
	for n := range cfg.Pools {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		pc := cfg.Pools[name]
		pl := &pool{name: name, cfg: pc}
		for _, sc := range pc.Servers {
			key := upstreamKey(name, sc, pc, cfg)
			u := p.ups[key]
			if u == nil || keep[key] != nil {
				u = &upstream{key: key, poolName: name, name: sc.Name, addr: sc.Addr, user: pc.UpstreamUsername,
					pass: pc.UpstreamPassword, opTimeout: cfg.OpTimeout, stop: make(chan struct{}),
					conns: make([]atomic.Pointer[sconn], cfg.ConnsPerServer), meshed: sc.MeshTLS, tlsCfg: &p.meshTLS}
				u.pool.Store(pl)
				go p.healthLoop(u)
			}
			u.pool.Store(pl)
			keep[key] = u
			pl.servers = append(pl.servers, u)
		}
		pl.rebuild()
		s.pools[name] = pl
	}
	for _, r := range cfg.Routes {
		s.routes = append(s.routes, route{prefix: r.Prefix, remove: r.RemovePrefix, pool: s.pools[r.Pool]})
	}
	sort.SliceStable(s.routes, func(i, j int) bool { return len(s.routes[i].prefix) > len(s.routes[j].prefix) })
	if cfg.CatchAll != "" {
		s.catchAll = s.pools[cfg.CatchAll]
	}
	p.snap.Store(s)
	for key, u := range p.ups {
		if keep[key] != u {
			u.closeAll()
		}
	}
	p.ups = keep
	return nil
}

// upstreamKey identifies a server across Updates; credentials are hashed so
// the key can be logged without leaking them.
func upstreamKey(poolName string, s Server, pc Pool, cfg Config) string {
	h := sha256.Sum256([]byte(pc.UpstreamUsername + "\x00" + pc.UpstreamPassword))
	return fmt.Sprintf("%s|%s|%s|%x|%d|%d|%t", poolName, s.Name, s.Addr, h[:8], cfg.OpTimeout, cfg.ConnsPerServer, s.MeshTLS)
}

// rebuild recomputes the ring from server liveness: in remap mode down
// servers leave the ring, otherwise the ring always holds every server.
func (pl *pool) rebuild() {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	var live []bool
	if pl.cfg.EjectMode == EjectRemap {
		live = make([]bool, len(pl.servers))
		for i, u := range pl.servers {
			live[i] = !u.down.Load()
		}
	}
	r, err := ring.New(pl.cfg.RingOptions(), pl.cfg.RingServers(), live, rand.Uint32)
	if err != nil {
		return // validated before; cannot happen
	}
	pl.ring.Store(r)
}

// resolve finds the pool for key and the key as that pool stores it.
func (s *snapshot) resolve(key []byte) (*pool, []byte) {
	for _, r := range s.routes {
		if len(key) < len(r.prefix) {
			continue
		}
		head := key[:len(r.prefix)]
		if string(head) == r.prefix || (s.fold && bytes.EqualFold(head, []byte(r.prefix))) {
			if r.remove {
				return r.pool, key[len(r.prefix):]
			}
			return r.pool, key
		}
	}
	return s.catchAll, key
}

// Serve accepts client connections on ln until ln is closed or the proxy
// shuts down.
func (p *Proxy) Serve(ln net.Listener) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return errors.New("redis proxy is shut down")
	}
	p.lns[ln] = struct{}{}
	p.mu.Unlock()
	for {
		c, err := ln.Accept()
		if err != nil {
			p.mu.Lock()
			closed := p.closed
			delete(p.lns, ln)
			p.mu.Unlock()
			if closed {
				return nil
			}
			return fmt.Errorf("accepting redis clients: %w", err)
		}
		if p.tlsSrc != nil {
			go p.sniff(c) // authz.go: TLS or plaintext, then startClient
			continue
		}
		p.startClient(c, "")
	}
}

// startClient serves an accepted connection whose verified peer is peer ("" for none),
// unless the pool's MeshPolicies refuse it (authz.go).
func (p *Proxy) startClient(c net.Conn, peer string) {
	if msg := p.admit(p.snap.Load(), c, peer); msg != "" {
		if !p.track(c) { // tracked so Shutdown closes it too
			c.Close()
			return
		}
		go func() { refuse(c, msg); p.untrack(c) }()
		return
	}
	cl := p.newClient(c)
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		c.Close()
		return
	}
	p.cls[cl] = struct{}{}
	p.wg.Add(1)
	p.mu.Unlock()
	go cl.serve()
}

func (p *Proxy) clientDone(cl *client) {
	p.mu.Lock()
	delete(p.cls, cl)
	p.mu.Unlock()
	p.wg.Done()
}

// Shutdown stops accepting clients, lets every client finish the replies it
// is owed, and closes all connections; it returns early with ctx's error.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	p.closed = true
	for ln := range p.lns {
		ln.Close()
	}
	p.closeSniffing()
	for cl := range p.cls {
		cl.stopReading()
	}
	p.mu.Unlock()
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	// Servers first: a client reader blocked on back-pressure is freed by the
	// error replies, and Close, which waits for that reader, can return.
	p.mu.Lock()
	for _, u := range p.ups {
		u.closeAll()
	}
	if err != nil {
		for cl := range p.cls {
			go cl.c.Close()
		}
	}
	p.mu.Unlock()
	return err
}
