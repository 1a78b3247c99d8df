package redisproxy

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/sidecar/redisproxy/redistest"
	"github.com/weftmesh/weft/sidecar/redisproxy/ring"
)

// poolOf builds a single-pool config over the given shards named shard-a, …
func poolOf(shards []*redistest.Server, mut ...func(*Pool)) Config {
	pl := Pool{Distribution: ring.Ketama, Hash: "fnv1a_64"}
	for i, s := range shards {
		pl.Servers = append(pl.Servers, Server{Name: "shard-" + string(rune('a'+i)), Addr: s.Addr, Weight: 1})
	}
	for _, m := range mut {
		m(&pl)
	}
	return Config{CatchAll: "redis|default/cache", Pools: map[string]Pool{"redis|default/cache": pl}}
}

// startProxy serves cfg on a loopback port and shuts down when the test ends.
func startProxy(t *testing.T, cfg Config) (*Proxy, string) {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return p, ln.Addr().String()
}

func expect(t *testing.T, c *redistest.Client, want string, args ...string) {
	t.Helper()
	got, err := c.Do(args...)
	if err != nil {
		t.Fatalf("%q: %v", args, err)
	}
	if got != want {
		t.Fatalf("%q = %q, want %q", args, got, want)
	}
}

func expectPrefix(t *testing.T, c *redistest.Client, prefix string, args ...string) string {
	t.Helper()
	got, err := c.Do(args...)
	if err != nil {
		t.Fatalf("%q: %v", args, err)
	}
	if !strings.HasPrefix(got, prefix) {
		t.Fatalf("%q = %q, want prefix %q", args, got, prefix)
	}
	return got
}

// TestPlacementOnRealShards writes keys through the proxy and checks each is
// stored on the shard the ring names, and nowhere else.
func TestPlacementOnRealShards(t *testing.T) {
	shards := redistest.StartRedis(t, 3)
	cfg := poolOf(shards)
	_, addr := startProxy(t, cfg)
	c := redistest.Dial(t, addr)
	pl := cfg.Pools[cfg.CatchAll]
	r, _ := ring.New(pl.RingOptions(), pl.RingServers(), nil, nil)
	direct := make([]*redistest.Client, 3)
	for i, s := range shards {
		direct[i] = redistest.Dial(t, s.Addr)
	}
	used := map[int]bool{}
	for i := range 200 {
		k := "user:" + strconv.Itoa(i*7919)
		expect(t, c, "+OK\r\n", "SET", k, "v"+k)
		want := r.Pick([]byte(k))
		used[want] = true
		for j, d := range direct {
			got := d.MustDo(t, "GET", k)
			if j == want && got != redistest.Bulk("v"+k) {
				t.Fatalf("key %s missing from its shard %d: %q", k, j, got)
			}
			if j != want && got != "$-1\r\n" {
				t.Fatalf("key %s also on shard %d", k, j)
			}
		}
	}
	if len(used) != 3 {
		t.Fatalf("keys used only shards %v", used)
	}
}

func TestMultiKey(t *testing.T) {
	shards := redistest.StartRedis(t, 3)
	// murmur spreads k0…k39; fnv1a_64 would put most of them on one shard.
	_, addr := startProxy(t, poolOf(shards, func(p *Pool) { p.Hash = "murmur" }))
	c := redistest.Dial(t, addr)
	var args []string
	var want strings.Builder
	n := 40
	for i := range n {
		args = append(args, "k"+strconv.Itoa(i), "val\x00\r\n"+strconv.Itoa(i))
	}
	expect(t, c, "+OK\r\n", append([]string{"MSET"}, args...)...)
	// MGET in key order, with a missing key and a duplicate in the middle.
	mget := []string{"MGET"}
	fmt.Fprintf(&want, "*%d\r\n", n+2)
	for i := range n {
		mget = append(mget, "k"+strconv.Itoa(i))
		want.WriteString(redistest.Bulk("val\x00\r\n" + strconv.Itoa(i)))
		if i == n/2 {
			mget = append(mget, "missing", "k0")
			want.WriteString("$-1\r\n" + redistest.Bulk("val\x00\r\n0"))
		}
	}
	expect(t, c, want.String(), mget...)
	// Keys really are spread: every shard holds some.
	for i, s := range shards {
		if got := redistest.Dial(t, s.Addr).MustDo(t, "DBSIZE"); got == ":0\r\n" {
			t.Fatalf("shard %d holds no keys", i)
		}
	}
	expect(t, c, ":3\r\n", "EXISTS", "k1", "k2", "k1", "nope")
	expect(t, c, ":2\r\n", "TOUCH", "k3", "k4", "nope")
	expect(t, c, ":3\r\n", "DEL", "k1", "k2", "k5", "nope")
	expect(t, c, ":2\r\n", "UNLINK", "k6", "k7")
	expect(t, c, ":0\r\n", "EXISTS", "k1", "k2", "k5", "k6", "k7")
	expect(t, c, "-ERR wrong number of arguments for 'mset' command\r\n", "MSET", "a", "1", "b")
}

func TestPipelineKeepsOrder(t *testing.T) {
	shards := redistest.StartRedis(t, 3)
	_, addr := startProxy(t, poolOf(shards))
	c := redistest.Dial(t, addr)
	var cmds [][]string
	var want []string
	for i := range 500 {
		k := "p" + strconv.Itoa(i)
		switch i % 5 {
		case 0:
			cmds = append(cmds, []string{"SET", k, k})
			want = append(want, "+OK\r\n")
		case 1:
			cmds = append(cmds, []string{"GET", "p" + strconv.Itoa(i-1)})
			want = append(want, redistest.Bulk("p"+strconv.Itoa(i-1)))
		case 2:
			cmds = append(cmds, []string{"PING"})
			want = append(want, "+PONG\r\n")
		case 3:
			cmds = append(cmds, []string{"MGET", "p" + strconv.Itoa(i-3), "nope"})
			want = append(want, "*2\r\n"+redistest.Bulk("p"+strconv.Itoa(i-3))+"$-1\r\n")
		case 4:
			cmds = append(cmds, []string{"KEYS", "*"})
			want = append(want, "-ERR command 'keys' is not supported by the Weft Redis proxy: "+whyScan+"\r\n")
		}
	}
	if err := c.Send(cmds...); err != nil {
		t.Fatal(err)
	}
	for i, w := range want {
		got, err := c.Read()
		if err != nil || got != w {
			t.Fatalf("reply %d to %q = %q, %v; want %q", i, cmds[i], got, err, w)
		}
	}
}

func TestInlineCommands(t *testing.T) {
	shards := redistest.StartRedis(t, 2)
	_, addr := startProxy(t, poolOf(shards))
	c := redistest.Dial(t, addr)
	if err := c.WriteRaw("PING\r\n\r\nSET  inline\tvalue\r\nGET inline\nECHO hi\r\n"); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"+PONG\r\n", "+OK\r\n", redistest.Bulk("value"), redistest.Bulk("hi")} {
		if got, err := c.Read(); err != nil || got != w {
			t.Fatalf("got %q %v, want %q", got, err, w)
		}
	}
}

func TestProtocolErrorClosesWithReply(t *testing.T) {
	shards := redistest.StartRedis(t, 1)
	p, addr := startProxy(t, poolOf(shards))
	c := redistest.Dial(t, addr)
	if err := c.WriteRaw("*1\r\n$4\r\nPING\r\n*1\r\n:4\r\n"); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"+PONG\r\n", "-ERR Protocol error: expected '$', got ':'\r\n"} {
		if got, err := c.Read(); err != nil || got != w {
			t.Fatalf("got %q %v, want %q", got, err, w)
		}
	}
	if _, err := c.Read(); err == nil {
		t.Fatal("connection must close after a protocol error")
	}
	if !strings.Contains(metrics(t, p), "weft_redis_protocol_errors_total 1") {
		t.Fatal("protocol error not counted")
	}
}

// TestShutdownDeliversOwedReplies: replies already owed to a client are
// written before the connection closes.
func TestShutdownDeliversOwedReplies(t *testing.T) {
	shards := redistest.StartRedis(t, 1)
	p, err := New(poolOf(shards))
	if err != nil {
		t.Fatal(err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	served := make(chan error, 1)
	go func() { served <- p.Serve(ln) }()
	c := redistest.Dial(t, ln.Addr().String())
	expect(t, c, "+OK\r\n", "SET", "k", "v")
	if err := p.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve after Shutdown: %v", err)
	}
	if _, err := c.Read(); err == nil {
		t.Fatal("client connection still open after Shutdown")
	}
	if err := p.Update(poolOf(shards)); err == nil {
		t.Fatal("Update after Shutdown must fail")
	}
}

// TestDeepPipeline pipelines more commands than a client may have pending
// (maxInflight) in one write; the proxy must keep flushing upstream while it
// applies back-pressure, not deadlock.
func TestDeepPipeline(t *testing.T) {
	shards := redistest.StartRedis(t, 3)
	_, addr := startProxy(t, poolOf(shards, func(p *Pool) { p.Hash = "murmur" }))
	c := redistest.Dial(t, addr)
	n := 3*maxInflight + 17
	var cmds [][]string
	for i := range n {
		cmds = append(cmds, []string{"INCR", "ctr:" + strconv.Itoa(i%50)})
	}
	if err := c.Send(cmds...); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		want := ":" + strconv.Itoa(i/50+1) + "\r\n"
		if got, err := c.Read(); err != nil || got != want {
			t.Fatalf("reply %d = %q %v, want %q", i, got, err, want)
		}
	}
}

// TestSlowClientDoesNotStallOthers: replies are written by the goroutine reading the
// server connection, which every client of that server shares. A client that stops
// reading must cost it nothing: its replies are handed to a goroutine of its own once
// its socket is full, and other clients keep getting answers in the meantime.
func TestSlowClientDoesNotStallOthers(t *testing.T) {
	shards := redistest.StartRedis(t, 1)
	_, addr := startProxy(t, poolOf(shards))
	fast := redistest.Dial(t, addr)
	big := strings.Repeat("v", 256<<10)
	expect(t, fast, "+OK\r\n", "SET", "big", big)

	// 200 × 256 KB of replies is far more than the socket buffers hold.
	slow := redistest.Dial(t, addr)
	var cmds [][]string
	for range 200 {
		cmds = append(cmds, []string{"GET", "big"})
	}
	if err := slow.Send(cmds...); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let the proxy fill the slow client's socket
	for i := range 50 {
		k := "k" + strconv.Itoa(i)
		expect(t, fast, "+OK\r\n", "SET", k, k)
		expect(t, fast, redistest.Bulk(k), "GET", k)
	}
	// Everything owed to the slow client still arrives, whole and in order.
	want := redistest.Bulk(big)
	for i := range 200 {
		if got, err := slow.Read(); err != nil || got != want {
			t.Fatalf("slow client's reply %d: %d bytes, %v; want %d bytes", i, len(got), err, len(want))
		}
	}
}
