package config

import (
	"errors"
	"fmt"
	"time"

	"github.com/weftmesh/weft/sidecar/redisproxy/ring"
)

// EjectMode says what happens to the keys of a server that is down.
type EjectMode string

const (
	// EjectNone keeps the server in the ring and lets requests fail as they
	// do (twemproxy auto_eject_hosts: false).
	EjectNone EjectMode = ""
	// EjectRemap rebuilds the ring from live servers, moving the dead
	// server's keys to the others (twemproxy auto_eject_hosts: true).
	EjectRemap EjectMode = "remap"
	// EjectFail keeps the ring intact and answers -ERR for the dead server's
	// keys, so no key ever moves (for Redis used as a store).
	EjectFail EjectMode = "fail"
)

// RedisConfig is everything the redis proxy (sidecar/redisproxy) needs; it is a plain value
// so it can be built by tests, by RedisConfigFromXDS, or by a static main.
type RedisConfig struct {
	// Listen is the client address from the xDS listener (informational: the
	// caller binds it and passes the listener to Serve).
	Listen string
	// StatPrefix is the xDS stat_prefix, for the caller's metric labels.
	StatPrefix string
	// OpTimeout bounds how long a server may take to answer (0: no limit).
	OpTimeout time.Duration
	// DownstreamPasswords, when non-empty, makes clients AUTH first; any of
	// them is accepted. DownstreamUsername, when set, must accompany it.
	DownstreamPasswords []string
	DownstreamUsername  string
	// Routes send keys by longest prefix to a pool; CatchAll takes the rest.
	Routes   []RedisRoute
	CatchAll string
	// RoutesCaseInsensitive matches route prefixes ignoring ASCII case.
	RoutesCaseInsensitive bool
	// Pools by name (the xDS cluster name).
	Pools map[string]RedisPool
	// ConnsPerServer is how many pipelined connections each server gets
	// (default 1, as twemproxy's server_connections).
	ConnsPerServer int
	// ClientOutputLimit bounds the bytes the proxy holds for one client:
	// replies it has not read yet plus a small cost per queued command
	// (0: redisproxy.DefaultClientOutputLimit). A client that gets another reply while
	// it holds more is closed, as Redis closes one past its
	// client-output-buffer-limit; others are unaffected. One reply larger
	// than the limit is still served. A client keeps the limit in force
	// when it connected.
	ClientOutputLimit int64
	// Authz, when set, are the MeshPolicies that target the pool (redisauthz.go): a
	// connection they refuse gets -NOPERM naming the policy for every command. When it
	// Refuses every connection the config has no pools.
	Authz *RedisAuthz
}

// RedisRoute sends keys starting with Prefix to Pool, optionally stripping it.
type RedisRoute struct {
	Prefix       string
	RemovePrefix bool
	Pool         string
}

// RedisPool is one set of sharded servers.
type RedisPool struct {
	Distribution ring.Distribution
	Hash         string
	HashTag      string
	Servers      []RedisServer
	// UpstreamUsername/UpstreamPassword are sent as AUTH on every new server
	// connection (empty password: no AUTH).
	UpstreamUsername string
	UpstreamPassword string
	EjectMode        EjectMode
	// FailureLimit consecutive failures eject a server (0: never).
	FailureLimit int
	// RetryTimeout is how long an ejected server waits before it is probed.
	RetryTimeout time.Duration
	// HealthCheck, when set, PINGs every server at an interval.
	HealthCheck *RedisHealthCheck
}

// RedisServer is a Redis server in a pool.
type RedisServer struct {
	Name   string // stable ring name
	Addr   string // host:port
	Weight uint32
	// MeshTLS: the server is a pod whose sidecar terminates mesh TLS on its port (EDS
	// tlsMode: weft in a cluster with the TLS match): dialed with mutual TLS, ALPN weft-tcp.
	MeshTLS bool
}

// RedisHealthCheck configures active PING probes.
type RedisHealthCheck struct {
	Interval           time.Duration
	Timeout            time.Duration
	HealthyThreshold   int
	UnhealthyThreshold int
}

// Validate reports configuration that cannot work, naming what to fix.
func (c *RedisConfig) Validate() error {
	if c.Authz.Refuses() {
		return nil // no pool is served: every command is refused
	}
	if len(c.Pools) == 0 {
		return errors.New("redis proxy config has no pools: add at least one server pool")
	}
	if len(c.Routes) == 0 && c.CatchAll == "" {
		return errors.New("redis proxy config has neither routes nor a catch-all pool")
	}
	check := func(p string) error {
		if _, ok := c.Pools[p]; !ok {
			return fmt.Errorf("route refers to pool %q, which is not configured", p)
		}
		return nil
	}
	if c.CatchAll != "" {
		if err := check(c.CatchAll); err != nil {
			return err
		}
	}
	for _, r := range c.Routes {
		if err := check(r.Pool); err != nil {
			return err
		}
	}
	if c.DownstreamUsername != "" && len(c.DownstreamPasswords) == 0 {
		return errors.New("downstream username is set but no downstream password: set a password or drop the username")
	}
	for name, p := range c.Pools {
		// A pool may have no servers: one discovered from a Service whose pods are not
		// ready yet. Its commands get -ERR until servers arrive; failing the whole config
		// instead would hold back every other update to the sidecar.
		switch p.EjectMode {
		case EjectNone, EjectRemap, EjectFail:
		default:
			return fmt.Errorf("pool %q: eject mode %q: use remap or fail", name, p.EjectMode)
		}
		seen := map[string]bool{}
		for _, s := range p.Servers {
			if seen[s.Name] {
				return fmt.Errorf("pool %q: ring name %q is used twice; ring names must be unique", name, s.Name)
			}
			seen[s.Name] = true
			if s.Addr == "" {
				return fmt.Errorf("pool %q: server %q has no address", name, s.Name)
			}
		}
		if _, err := ring.New(p.RingOptions(), p.RingServers(), nil, func() uint32 { return 0 }); err != nil {
			return fmt.Errorf("pool %q: %w", name, err)
		}
	}
	return nil
}

// RingOptions are the pool's sharding options for ring.New.
func (p RedisPool) RingOptions() ring.Options {
	return ring.Options{Distribution: p.Distribution, Hash: p.Hash, HashTag: p.HashTag}
}

// RingServers are the pool's servers for ring.New (weight 0 counts as 1).
func (p RedisPool) RingServers() []ring.Server {
	out := make([]ring.Server, len(p.Servers))
	for i, s := range p.Servers {
		w := s.Weight
		if w == 0 {
			w = 1
		}
		out[i] = ring.Server{Name: s.Name, Weight: w}
	}
	return out
}

const redacted = "[redacted]"

// Redacted returns a copy with every password replaced, for config dumps and
// logs: secrets never leave the proxy.
func (c RedisConfig) Redacted() RedisConfig {
	out := c
	out.DownstreamPasswords = make([]string, len(c.DownstreamPasswords))
	for i := range out.DownstreamPasswords {
		out.DownstreamPasswords[i] = redacted
	}
	out.Pools = make(map[string]RedisPool, len(c.Pools))
	for n, p := range c.Pools {
		out.Pools[n] = p.redacted()
	}
	return out
}

func (p RedisPool) redacted() RedisPool {
	if p.UpstreamPassword != "" {
		p.UpstreamPassword = redacted
	}
	return p
}

// String prints the config with passwords redacted, so %v is safe to log.
func (c RedisConfig) String() string {
	type plain RedisConfig // no String method: avoids recursion
	return fmt.Sprintf("%+v", plain(c.Redacted()))
}

// String prints the pool with its upstream password redacted.
func (p RedisPool) String() string {
	type plain RedisPool
	return fmt.Sprintf("%+v", plain(p.redacted()))
}
