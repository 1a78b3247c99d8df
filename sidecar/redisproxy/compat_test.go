package redisproxy

import (
	"strings"
	"testing"

	"github.com/weftmesh/weft/sidecar/redisproxy/redistest"
)

// sameAsRedis sends each command to a real redis-server and to the proxy,
// on one connection each, and requires the same reply.
func sameAsRedis(t *testing.T, redis, proxy *redistest.Client, cmds [][]string) {
	t.Helper()
	for _, cmd := range cmds {
		want := redis.MustDo(t, cmd...)
		if got := proxy.MustDo(t, cmd...); got != want {
			t.Errorf("%q: proxy %q, redis-server %q", cmd, got, want)
		}
	}
}

// TestAuthWithoutPasswordLikeRedis: with no password configured, Redis 7's
// default user is "nopass": AUTH default <anything> is +OK, the one-argument
// form is an error, another user is WRONGPASS.
func TestAuthWithoutPasswordLikeRedis(t *testing.T) {
	shards := redistest.StartRedis(t, 1)
	_, addr := startProxy(t, poolOf(shards))
	sameAsRedis(t, redistest.Dial(t, shards[0].Addr), redistest.Dial(t, addr), [][]string{
		{"AUTH", "default", "whatever"},
		{"AUTH", "DEFAULT", "whatever"},
		{"AUTH", "whatever"},
		{"AUTH", "other", "whatever"},
		{"AUTH", "default", "a", "b"},
		{"AUTH"},
		{"HELLO", "2", "AUTH", "other", "x"},
		{"HELLO", "2", "AUTH", "default"},
		{"HELLO", "2", "auth"},
	})
	c := redistest.Dial(t, addr)
	expectPrefix(t, c, "*14\r\n", "HELLO", "2", "AUTH", "default", "whatever")
}

// TestArityBeforeNoauth: Redis checks a command's arity before
// authentication, and unknown commands before both.
func TestArityBeforeNoauth(t *testing.T) {
	shards := redistest.StartRedis(t, 1, "--requirepass", "pw")
	cfg := poolOf(shards, func(p *Pool) { p.UpstreamPassword = "pw" })
	cfg.DownstreamPasswords = []string{"pw"}
	_, addr := startProxy(t, cfg)
	sameAsRedis(t, redistest.Dial(t, shards[0].Addr), redistest.Dial(t, addr), [][]string{
		{"GET"}, {"GET", "a", "b"}, {"SET", "k"}, {"BITOP", "AND"}, {"ECHO"}, {"AUTH"},
		{"FOO"}, {"FOO", "a", "b"}, {"GET", "a"}, {"PING", "a", "b", "c"},
		{"AUTH", "wrong"}, {"AUTH", "default", "wrong"}, {"AUTH", "pw"}, {"GET", "a"},
	})
}

// TestBitop: BITOP is routed when its keys share a server, with the reply
// Redis gives, and refused with CROSSSLOT like other multi-key commands
// when they do not.
func TestBitop(t *testing.T) {
	shards := redistest.StartRedis(t, 3)
	_, addr := startProxy(t, poolOf(shards, func(p *Pool) { p.HashTag = "{}" }))
	one := redistest.StartRedis(t, 1)[0]
	cmds := [][]string{
		{"SET", "a{t}", "abc"}, {"SET", "b{t}", "a c"},
		{"BITOP", "AND", "d{t}", "a{t}", "b{t}"}, {"GET", "d{t}"},
		{"BITOP", "NOT", "n{t}", "a{t}"}, {"GET", "n{t}"},
		{"BITOP", "XOR", "x{t}", "a{t}", "b{t}", "missing{t}"}, {"GET", "x{t}"},
		{"BITOP", "NOT", "n{t}", "a{t}", "b{t}"},
		{"BITOP", "NAND", "d{t}", "a{t}"},
		{"BITOP", "AND", "d{t}"},
	}
	sameAsRedis(t, redistest.Dial(t, one.Addr), redistest.Dial(t, addr), cmds)
	cfg := poolOf(shards)
	c := redistest.Dial(t, addr)
	a, b := keyOn(t, cfg, 0, "bitop"), keyOn(t, cfg, 1, "bitop")
	got := expectPrefix(t, c, "-CROSSSLOT", "BITOP", "OR", a, a, b)
	if !strings.Contains(got, "hash tag") {
		t.Fatalf("%q does not say how to fix it", got)
	}
}
