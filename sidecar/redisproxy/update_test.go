package redisproxy

import (
	"strings"
	"testing"

	"github.com/weftmesh/weft/sidecar/redisproxy/redistest"
)

// TestUpdateKeepsClientsAndServers swaps the config under a connected client:
// the connection survives, unchanged servers keep their upstream state, and
// keys follow the new ring.
func TestUpdateKeepsClientsAndServers(t *testing.T) {
	shards := redistest.StartRedis(t, 3)
	two := poolOf(shards[:2], func(p *Pool) { p.Hash = "murmur" })
	p, addr := startProxy(t, two)
	c := redistest.Dial(t, addr)
	expect(t, c, "+OK\r\n", "SET", "x", "1")
	before := map[string]*upstream{}
	p.mu.Lock()
	for k, u := range p.ups {
		before[u.name] = u
		_ = k
	}
	p.mu.Unlock()

	three := poolOf(shards, func(p *Pool) { p.Hash = "murmur" })
	if err := p.Update(three); err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	for _, u := range p.ups {
		if b := before[u.name]; b != nil && b != u {
			t.Errorf("server %s was rebuilt although unchanged", u.name)
		}
	}
	n := len(p.ups)
	p.mu.Unlock()
	if n != 3 {
		t.Fatalf("%d upstreams after update, want 3", n)
	}
	kc := keyOn(t, three, 2, "upd")
	expect(t, c, "+OK\r\n", "SET", kc, "c") // same client connection
	if r := redistest.Dial(t, shards[2].Addr).MustDo(t, "GET", kc); r != redistest.Bulk("c") {
		t.Fatalf("key for shard-c not on shard-c: %q", r)
	}
	if err := p.Update(Config{}); err == nil || !strings.Contains(err.Error(), "no pools") {
		t.Fatalf("invalid config accepted: %v", err)
	}
	expect(t, c, "+PONG\r\n", "PING")
}

func TestStats(t *testing.T) {
	shards := redistest.StartRedis(t, 2)
	p, addr := startProxy(t, poolOf(shards))
	c := redistest.Dial(t, addr)
	c.MustDo(t, "SET", "a", "1")
	c.MustDo(t, "GET", "a")
	c.MustDo(t, "GET", "b")
	c.MustDo(t, "KEYS", "*")
	c.MustDo(t, "NOPE")
	m := metrics(t, p)
	for _, want := range []string{
		`weft_redis_commands_total{command="get"} 2`,
		`weft_redis_commands_total{command="set"} 1`,
		`weft_redis_command_errors_total{command="keys"} 1`,
		`weft_redis_commands_total{command="unknown"} 1`,
		`weft_redis_command_duration_seconds_count{command="get"} 2`,
		`weft_redis_command_duration_seconds_bucket{command="get",le="+Inf"} 2`,
		`weft_redis_client_connections 1`,
		`weft_redis_unsupported_commands_total 1`,
		`weft_redis_server_up{pool="redis|default/cache",server="shard-a",address="` + shards[0].Addr + `"} 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if t.Failed() {
		t.Log(m)
	}
}

// TestPoolWithoutServersAnswersErrUntilServersArrive: a pool discovered from a Service
// whose pods are not ready yet has no servers. The config is still taken (failing it would
// hold back every other update to the sidecar), its commands get -ERR naming the pool,
// and once servers arrive the same connection reaches them.
func TestPoolWithoutServersAnswersErrUntilServersArrive(t *testing.T) {
	shards := redistest.StartRedis(t, 2)
	empty := poolOf(nil)
	for _, mode := range []EjectMode{EjectRemap, EjectFail} {
		pl := empty.Pools[empty.CatchAll]
		pl.EjectMode = mode
		empty.Pools[empty.CatchAll] = pl
		if err := empty.Validate(); err != nil {
			t.Fatalf("eject mode %s: a pool without servers is refused: %v", mode, err)
		}
	}
	p, addr := startProxy(t, empty)
	c := redistest.Dial(t, addr)
	want := "-ERR pool redis|default/cache has no servers yet: its Service has no ready endpoints\r\n"
	expect(t, c, want, "GET", "k")
	expect(t, c, want, "SET", "k", "v")
	if r, _ := c.Do("MGET", "a", "b"); !strings.HasPrefix(r, "-ERR pool redis|default/cache has no servers yet") {
		t.Fatalf("MGET on an empty pool: %q", r)
	}
	expect(t, c, "+PONG\r\n", "PING")

	if err := p.Update(poolOf(shards)); err != nil {
		t.Fatal(err)
	}
	expect(t, c, "+OK\r\n", "SET", "k", "v")
	expect(t, c, redistest.Bulk("v"), "GET", "k")
}
