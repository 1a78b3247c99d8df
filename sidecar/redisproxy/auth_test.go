package redisproxy

import (
	"strings"
	"testing"

	"github.com/weftmesh/weft/sidecar/redisproxy/redistest"
)

func TestDownstreamAndUpstreamAuth(t *testing.T) {
	shards := redistest.StartRedis(t, 2, "--requirepass", "up-s3cret")
	cfg := poolOf(shards, func(p *Pool) { p.UpstreamPassword = "up-s3cret" })
	cfg.DownstreamPasswords = []string{"down-one", "down-two"}
	p, addr := startProxy(t, cfg)
	c := redistest.Dial(t, addr)
	expect(t, c, "-NOAUTH Authentication required.\r\n", "GET", "k")
	expect(t, c, "-NOAUTH Authentication required.\r\n", "PING")
	expect(t, c, "-WRONGPASS invalid username-password pair or user is disabled.\r\n", "AUTH", "nope")
	expect(t, c, "-NOAUTH Authentication required.\r\n", "GET", "k")
	expect(t, c, "+OK\r\n", "AUTH", "down-two")
	expect(t, c, "+OK\r\n", "SET", "k", "v")
	expect(t, c, redistest.Bulk("v"), "GET", "k")
	// HELLO with AUTH authenticates a fresh connection.
	c2 := redistest.Dial(t, addr)
	expectPrefix(t, c2, "*14\r\n", "HELLO", "2", "AUTH", "default", "down-one")
	expect(t, c2, redistest.Bulk("v"), "GET", "k")
	if m := metrics(t, p); strings.Contains(m, "s3cret") || strings.Contains(m, "down-") {
		t.Fatal("metrics leak a password")
	}
}

func TestDownstreamUsername(t *testing.T) {
	shards := redistest.StartRedis(t, 1)
	cfg := poolOf(shards)
	cfg.DownstreamUsername, cfg.DownstreamPasswords = "app", []string{"pw"}
	_, addr := startProxy(t, cfg)
	c := redistest.Dial(t, addr)
	expect(t, c, "-WRONGPASS invalid username-password pair or user is disabled.\r\n", "AUTH", "pw")
	expect(t, c, "-WRONGPASS invalid username-password pair or user is disabled.\r\n", "AUTH", "other", "pw")
	expect(t, c, "+OK\r\n", "AUTH", "app", "pw")
	expect(t, c, "+PONG\r\n", "PING")
}

func TestWrongUpstreamPassword(t *testing.T) {
	shards := redistest.StartRedis(t, 1, "--requirepass", "right-s3cret")
	_, addr := startProxy(t, poolOf(shards, func(p *Pool) { p.UpstreamPassword = "wrong-s3cret" }))
	c := redistest.Dial(t, addr)
	got := expectPrefix(t, c, "-ERR cannot connect to server shard-a", "GET", "k")
	if !strings.Contains(got, "check the upstream credentials") || strings.Contains(got, "s3cret") {
		t.Fatalf("reply %q must explain the AUTH failure without the password", got)
	}
}
