package redisproxy

import (
	"bytes"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/sidecar/redisproxy/redistest"
	"github.com/weftmesh/weft/sidecar/redisproxy/ring"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
)

func metrics(t *testing.T, p *Proxy) string {
	var b bytes.Buffer
	if err := p.WritePrometheus(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// keyOn returns a key the pool's full ring places on server idx.
func keyOn(t *testing.T, cfg Config, idx int, prefix string) string {
	pl := cfg.Pools[cfg.CatchAll]
	r, _ := ring.New(ringOptions(pl), ringServers(pl), nil, nil)
	for i := range 10000 {
		k := prefix + ":" + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676))
		if r.Pick([]byte(k)) == idx {
			return k
		}
	}
	t.Fatalf("no key on server %d", idx)
	return ""
}

func TestKilledShardRemap(t *testing.T) {
	shards := redistest.StartRedis(t, 3)
	cfg := poolOf(shards, func(p *Pool) {
		p.Hash = "murmur"
		p.EjectMode, p.FailureLimit, p.RetryTimeout = EjectRemap, 2, 100*time.Millisecond
	})
	p, addr := startProxy(t, cfg)
	c := redistest.Dial(t, addr)
	kb := keyOn(t, cfg, 1, "remap")
	expect(t, c, "+OK\r\n", "SET", kb, "before")
	shards[1].Kill()
	// The first failures are reported; after failureLimit the key remaps.
	first := expectPrefix(t, c, "-ERR", "GET", kb)
	if !strings.Contains(first, "shard-b") {
		t.Fatalf("error %q does not name the failed server", first)
	}
	poll.Until(t, 15*time.Second, func() bool {
		r, _ := c.Do("SET", kb, "after")
		return r == "+OK\r\n"
	}, "waiting for the key to remap to a live shard")
	m := metrics(t, p)
	for _, want := range []string{`weft_redis_server_up{pool="redis|default/cache",server="shard-b",address="` + shards[1].Addr + `"} 0`,
		`weft_redis_server_ejections_total{pool="redis|default/cache",server="shard-b",address="` + shards[1].Addr + `"} 1`} {
		if !strings.Contains(m, want) {
			t.Fatalf("metrics lack %s:\n%s", want, m)
		}
	}
	// Recovery: once shard-b answers a probe it is readmitted and owns kb again.
	shards[1].Restart()
	direct := redistest.Dial(t, shards[1].Addr)
	poll.Until(t, 15*time.Second, func() bool {
		c.Do("SET", kb, "back")
		r, _ := direct.Do("GET", kb)
		return r == redistest.Bulk("back")
	}, "waiting for shard-b to be readmitted")
}

func TestKilledShardFailMode(t *testing.T) {
	shards := redistest.StartRedis(t, 3)
	cfg := poolOf(shards, func(p *Pool) {
		p.Hash = "murmur"
		p.EjectMode, p.FailureLimit, p.RetryTimeout = EjectFail, 1, 100*time.Millisecond
	})
	_, addr := startProxy(t, cfg)
	c := redistest.Dial(t, addr)
	ka, kb := keyOn(t, cfg, 0, "fail"), keyOn(t, cfg, 1, "fail")
	shards[1].Kill()
	poll.Until(t, 15*time.Second, func() bool {
		r, _ := c.Do("GET", kb)
		return strings.HasPrefix(r, "-ERR server shard-b ("+shards[1].Addr+"), which owns this key, is down")
	}, "waiting for shard-b to be marked down")
	// Other shards are untouched and the down shard's keys never move.
	expect(t, c, "+OK\r\n", "SET", ka, "a")
	expectPrefix(t, c, "-ERR server shard-b", "SET", kb, "b")
	expectPrefix(t, c, "-ERR server shard-b", "MGET", ka, kb)
	expect(t, c, "*1\r\n"+redistest.Bulk("a"), "MGET", ka)
	shards[1].Restart()
	poll.Until(t, 15*time.Second, func() bool {
		r, _ := c.Do("SET", kb, "b")
		return r == "+OK\r\n"
	}, "waiting for shard-b to come back")
	expect(t, c, redistest.Bulk("b"), "GET", kb)
	if r := redistest.Dial(t, shards[1].Addr).MustDo(t, "GET", kb); r != redistest.Bulk("b") {
		t.Fatalf("key not on shard-b after recovery: %q", r)
	}
}

func TestActiveHealthCheck(t *testing.T) {
	shards := redistest.StartRedis(t, 2)
	cfg := poolOf(shards, func(p *Pool) {
		p.EjectMode = EjectFail
		p.HealthCheck = &HealthCheck{Interval: 30 * time.Millisecond, Timeout: time.Second, HealthyThreshold: 2, UnhealthyThreshold: 2}
	})
	p, _ := startProxy(t, cfg)
	up := `weft_redis_server_up{pool="redis|default/cache",server="shard-b",address="` + shards[1].Addr + `"} `
	shards[1].Kill()
	poll.Until(t, 15*time.Second, func() bool { return strings.Contains(metrics(t, p), up+"0") }, "waiting for probes to mark shard-b down without traffic")
	shards[1].Restart()
	poll.Until(t, 15*time.Second, func() bool { return strings.Contains(metrics(t, p), up+"1") }, "waiting for probes to mark shard-b up")
}

// TestOpTimeoutKeepsOrder uses a server that accepts and never answers.
func TestOpTimeoutKeepsOrder(t *testing.T) {
	hole, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hole.Close()
	go func() {
		for {
			c, err := hole.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	shards := redistest.StartRedis(t, 1)
	cfg := Config{OpTimeout: 150 * time.Millisecond, Routes: []Route{{Prefix: "slow:", Pool: "slow"}}, CatchAll: "fast",
		Pools: map[string]Pool{
			"slow": {Servers: []Server{{Name: "blackhole", Addr: hole.Addr().String(), Weight: 1}}},
			"fast": {Servers: []Server{{Name: "real", Addr: shards[0].Addr, Weight: 1}}},
		}}
	_, addr := startProxy(t, cfg)
	c := redistest.Dial(t, addr)
	if err := c.Send([]string{"SET", "k", "v"}, []string{"GET", "slow:x"}, []string{"GET", "k"}, []string{"PING"}); err != nil {
		t.Fatal(err)
	}
	want := []string{"+OK\r\n", "-ERR server blackhole (" + hole.Addr().String() + ") did not answer within 150ms; the command may or may not have run\r\n", redistest.Bulk("v"), "+PONG\r\n"}
	for i, w := range want {
		if got, err := c.Read(); err != nil || got != w {
			t.Fatalf("reply %d = %q, %v; want %q", i, got, err, w)
		}
	}
}

// TestLoadingRepliesEject: a server that answers -LOADING to everything is
// ejected after failureLimit replies and, since its probes fail too, stays
// out.
func TestLoadingRepliesEject(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
					c.Write([]byte("-LOADING Redis is loading the dataset in memory\r\n"))
				}
			}()
		}
	}()
	cfg := Config{CatchAll: "p", Pools: map[string]Pool{"p": {EjectMode: EjectFail, FailureLimit: 2, RetryTimeout: 20 * time.Millisecond,
		Servers: []Server{{Name: "loading", Addr: ln.Addr().String(), Weight: 1}}}}}
	_, addr := startProxy(t, cfg)
	c := redistest.Dial(t, addr)
	expectPrefix(t, c, "-LOADING", "GET", "k")
	expectPrefix(t, c, "-LOADING", "GET", "k")
	for range 5 {
		expectPrefix(t, c, "-ERR server loading ("+ln.Addr().String()+"), which owns this key, is down", "GET", "k")
		time.Sleep(30 * time.Millisecond)
	}
}
