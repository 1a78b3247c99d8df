package redisproxy

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/weftmesh/weft/sidecar/redisproxy/redistest"
)

func TestCommandTable(t *testing.T) {
	cases := []struct {
		name  string
		nargs int
		keys  []int
	}{
		{"GET", 2, []int{1}},
		{"mset", 5, []int{1, 3}},
		{"MGET", 4, []int{1, 2, 3}},
		{"rename", 3, []int{1, 2}},
		{"OBJECT", 3, []int{2}},
		{"sunionstore", 4, []int{1, 2, 3}},
	}
	for _, c := range cases {
		cmd := lookup([]byte(c.name))
		if cmd == nil {
			t.Fatalf("%s missing from the table", c.name)
		}
		got := cmd.keyIndexes(nil, c.nargs)
		if len(got) != len(c.keys) {
			t.Fatalf("%s: keys at %v, want %v", c.name, got, c.keys)
		}
		for i := range got {
			if got[i] != c.keys[i] {
				t.Fatalf("%s: keys at %v, want %v", c.name, got, c.keys)
			}
		}
	}
	if lookup([]byte("nosuchcommand")) != nil || lookup(bytes.Repeat([]byte("x"), 40)) != nil {
		t.Fatal("unknown names must not resolve")
	}
	if !lookup([]byte("set")).arityOK(5) || lookup([]byte("get")).arityOK(3) {
		t.Fatal("arity checks wrong")
	}
}

// TestUnroutableCommands sends every refused command and checks the reply
// names it and says why, and that the connection stays usable.
func TestUnroutableCommands(t *testing.T) {
	shards := redistest.StartRedis(t, 2)
	_, addr := startProxy(t, poolOf(shards, func(p *Pool) { p.Hash = "murmur" }))
	c := redistest.Dial(t, addr)
	n := 0
	for why, names := range unsupported {
		for _, name := range names {
			got := expectPrefix(t, c, "-ERR command '"+name+"' is not supported", strings.ToUpper(name), "x", "y")
			if !strings.Contains(got, why) {
				t.Fatalf("%s: reply %q does not say why", name, got)
			}
			expect(t, c, "+PONG\r\n", "PING")
			n++
		}
	}
	if n < 50 {
		t.Fatalf("only %d unroutable commands checked", n)
	}
	expect(t, c, "-ERR unknown command 'FROB', with args beginning with: 'a' \r\n", "FROB", "a")
	expect(t, c, "-ERR wrong number of arguments for 'get' command\r\n", "GET")
	expect(t, c, "-CROSSSLOT Keys in request don't hash to the same server (shard-a and shard-b); give them a common hash tag such as {user1}\r\n",
		"RENAME", crossPair(t, c)[0], crossPair(t, c)[1])
}

// crossPair finds two keys on different servers by asking the proxy.
func crossPair(t *testing.T, c *redistest.Client) [2]string {
	a := "key:0"
	for i := 1; i < 100; i++ {
		b := "key:" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		got, _ := c.Do("RENAME", a, b)
		if strings.HasPrefix(got, "-CROSSSLOT") && strings.Contains(got, "(shard-a and shard-b)") {
			return [2]string{a, b}
		}
	}
	t.Fatal("no key pair across shard-a and shard-b")
	return [2]string{}
}

func TestLocalCommands(t *testing.T) {
	shards := redistest.StartRedis(t, 2)
	_, addr := startProxy(t, poolOf(shards))
	c := redistest.Dial(t, addr)
	expect(t, c, "+PONG\r\n", "PING")
	expect(t, c, redistest.Bulk("hi"), "PING", "hi")
	expect(t, c, redistest.Bulk("a\r\nb"), "ECHO", "a\r\nb")
	expect(t, c, "+OK\r\n", "SELECT", "0")
	expectPrefix(t, c, "-ERR SELECT is not supported", "SELECT", "1")
	expectPrefix(t, c, "*14\r\n$6\r\nserver\r\n", "HELLO", "2")
	expectPrefix(t, c, "*14\r\n", "HELLO")
	expect(t, c, "-NOPROTO sorry, this protocol version is not supported.\r\n", "HELLO", "3")
	expectPrefix(t, c, "-ERR AUTH <password> called without any password configured", "AUTH", "x")
	expectPrefix(t, c, "-ERR EVAL with numkeys 0 cannot be routed", "EVAL", "return 1", "0")
	expect(t, c, ":7\r\n", "EVAL", "return 7", "1", "{t}a")
	expect(t, c, ":2\r\n", "EVAL", "return #KEYS", "2", "{t}a", "{t}b")
	expect(t, c, "+OK\r\n", "QUIT")
	if _, err := c.Read(); !errors.Is(err, io.EOF) {
		t.Fatalf("after QUIT the connection must close, got %v", err)
	}
}
