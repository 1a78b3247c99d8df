package redisproxy

import "github.com/weftmesh/weft/sidecar/config"

// The proxy's configuration is decoded and validated by sidecar/config (from xDS, or built
// by tests and a static main); these names keep the proxy's code reading as before.
type (
	// Config is everything the proxy needs.
	Config = config.RedisConfig
	// Route sends keys by prefix to a pool.
	Route = config.RedisRoute
	// Pool is one set of sharded servers.
	Pool = config.RedisPool
	// Server is a Redis server in a pool.
	Server = config.RedisServer
	// HealthCheck configures active PING probes.
	HealthCheck = config.RedisHealthCheck
	// EjectMode says what happens to the keys of a server that is down.
	EjectMode = config.EjectMode
)

// Eject modes (see config.EjectMode).
const (
	EjectNone  = config.EjectNone
	EjectRemap = config.EjectRemap
	EjectFail  = config.EjectFail
)

// DefaultClientOutputLimit is ClientOutputLimit when unset: 64 MiB, room for
// the replies of a 100,000-command pipeline.
// (Redis's normal clients have no limit; its replica and pub/sub limits are
// 256 MiB and 32 MiB.)
const DefaultClientOutputLimit = 64 << 20

func clientOutputLimit(c *Config) int64 {
	if c.ClientOutputLimit <= 0 {
		return DefaultClientOutputLimit
	}
	return c.ClientOutputLimit
}
