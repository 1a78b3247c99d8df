package ring

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/weftmesh/weft/testenv"

	"github.com/weftmesh/weft/sidecar/redisproxy/redistest"
	"github.com/weftmesh/weft/sidecar/redisproxy/resp"
)

// placementKeys are the keys written through nutcracker: plain, numbered
// (fnv1a_64 clusters these), hash-tagged, and binary with bytes >= 0x80 that
// exercise C's signed-char sign extension.
func placementKeys() [][]byte {
	var keys [][]byte
	for i := range 150 {
		keys = append(keys, []byte("key:"+strconv.Itoa(i)))
	}
	for i := range 30 {
		keys = append(keys, []byte(fmt.Sprintf("user{%d}:profile", i%7)))
		keys = append(keys, []byte(fmt.Sprintf("session-%08x-%s", i*2654435761, strings.Repeat("z", i))))
	}
	for i := range 40 {
		keys = append(keys, []byte{0x80 + byte(i), 0xff, byte(i * 7), 'k', 0xc3, byte(255 - i)}[:1+i%6])
	}
	return keys
}

func nutcrackerCases() []golden {
	eq := []Server{{"shard-a", 1}, {"shard-b", 1}, {"shard-c", 1}}
	var cs []golden
	for _, h := range []string{"one_at_a_time", "md5", "crc16", "crc32", "crc32a", "fnv1_64",
		"fnv1a_64", "fnv1_32", "fnv1a_32", "hsieh", "murmur", "jenkins"} {
		cs = append(cs, golden{Name: "ketama-" + h, Options: Options{Ketama, h, ""}, Servers: eq})
	}
	w := []Server{{"shard-a", 1}, {"shard-b", 2}, {"shard-c", 3}}
	for _, h := range []string{"fnv1a_64", "md5", "murmur", "hsieh"} {
		cs = append(cs, golden{Name: "ketama-weighted-" + h, Options: Options{Ketama, h, ""}, Servers: w})
	}
	cs = append(cs,
		golden{Name: "ketama-tag-fnv1a_64", Options: Options{Ketama, "fnv1a_64", "{}"}, Servers: eq},
		golden{Name: "ketama-tag-dollar-md5", Options: Options{Ketama, "md5", "$$"}, Servers: w},
		golden{Name: "ketama-zero-points", Options: Options{Ketama, "md5", ""}, Servers: []Server{{"big", 100}, {"tiny", 1}, {"mid", 50}}},
		golden{Name: "modula-fnv1a_64", Options: Options{Modula, "fnv1a_64", ""}, Servers: w},
		golden{Name: "modula-jenkins", Options: Options{Modula, "jenkins", ""}, Servers: eq},
	)
	return cs
}

// TestAgainstNutcracker writes keys through a real nutcracker over three real
// redis-servers, reads back which shard holds each key, and compares with
// Ring.Pick. With -update it records the placements as golden vectors.
func TestAgainstNutcracker(t *testing.T) {
	if _, err := os.Stat("/usr/sbin/nutcracker"); err != nil {
		if _, err2 := os.Stat("/usr/bin/nutcracker"); err2 != nil {
			testenv.Missing(t, "nutcracker not installed: `apt-get install -y nutcracker` to verify placement against twemproxy")
		}
	}
	shards := redistest.StartRedis(t, 3)
	keys := placementKeys()
	var recorded []golden
	for _, c := range nutcrackerCases() {
		listen := "127.0.0.1:" + strconv.Itoa(redistest.FreePort(t))
		var y strings.Builder
		fmt.Fprintf(&y, "pool:\n  listen: %s\n  redis: true\n  distribution: %s\n  hash: %s\n", listen, c.Options.Distribution, c.Options.Hash)
		if c.Options.HashTag != "" {
			fmt.Fprintf(&y, "  hash_tag: %q\n", c.Options.HashTag)
		}
		y.WriteString("  servers:\n")
		for i, s := range c.Servers {
			fmt.Fprintf(&y, "    - %s:%d %s\n", shards[i].Addr, s.Weight, s.Name)
		}
		t.Run(c.Name, func(t *testing.T) {
			for _, s := range shards {
				redistest.Dial(t, s.Addr).MustDo(t, "FLUSHALL")
			}
			redistest.StartNutcracker(t, y.String(), listen)
			nc := redistest.Dial(t, listen)
			var cmds [][]string
			for _, k := range keys {
				cmds = append(cmds, []string{"SET", string(k), "v"})
			}
			if err := nc.Send(cmds...); err != nil {
				t.Fatal(err)
			}
			for range cmds {
				if r, err := nc.Read(); err != nil || r != "+OK\r\n" {
					t.Fatalf("SET through nutcracker: %q %v", r, err)
				}
			}
			where := map[string]int{}
			for i, s := range shards {
				r := redistest.Dial(t, s.Addr).MustDo(t, "KEYS", "*")
				_ = resp.ArrayElements([]byte(r), func(e []byte) {
					k := e[bytes.IndexByte(e, '\n')+1 : len(e)-2]
					where[string(k)] = i
				})
			}
			r, err := New(c.Options, c.Servers, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			g := c
			for _, k := range keys {
				want, ok := where[string(k)]
				if !ok {
					t.Fatalf("key %q not found on any shard", k)
				}
				if got := r.Pick(k); got != want {
					t.Errorf("key %q: ring picks %d (%s), nutcracker put it on %d (%s)", k, got, c.Servers[got].Name, want, c.Servers[want].Name)
				}
				g.Keys = append(g.Keys, [2]any{hex.EncodeToString(k), want})
			}
			recorded = append(recorded, g)
		})
	}
	recorded = append(recorded, ejectedCase(t, keys))
	if *update {
		b, _ := json.MarshalIndent(recorded, "", " ")
		if err := os.WriteFile("testdata/placement.json", append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// ejectedCase kills one of three shards behind a nutcracker with
// auto_eject_hosts, lets nutcracker eject it, and records where the keys go
// on the rebuilt ring (weights 1,1,2: the surviving weight-1 server drops
// from 120 to 104 points, so keys also move between survivors).
func ejectedCase(t *testing.T, keys [][]byte) golden {
	g := golden{Name: "ketama-ejected-md5", Options: Options{Ketama, "md5", ""},
		Servers: []Server{{"shard-a", 1}, {"shard-b", 1}, {"shard-c", 2}}, Live: []bool{true, false, true}}
	t.Run(g.Name, func(t *testing.T) {
		shards := redistest.StartRedis(t, 3)
		listen := "127.0.0.1:" + strconv.Itoa(redistest.FreePort(t))
		var y strings.Builder
		fmt.Fprintf(&y, "pool:\n  listen: %s\n  redis: true\n  distribution: ketama\n  hash: md5\n  auto_eject_hosts: true\n  server_failure_limit: 1\n  server_retry_timeout: 600000\n  servers:\n", listen)
		for i, s := range g.Servers {
			fmt.Fprintf(&y, "    - %s:%d %s\n", shards[i].Addr, s.Weight, s.Name)
		}
		redistest.StartNutcracker(t, y.String(), listen)
		shards[1].Kill()
		full, _ := New(g.Options, g.Servers, nil, nil)
		var onB []byte
		for _, k := range keys {
			if full.Pick(k) == 1 {
				onB = k
				break
			}
		}
		// The first request to the dead shard fails and ejects it.
		for i := 0; ; i++ {
			r, err := redistest.Dial(t, listen).Do("SET", string(onB), "v")
			if err == nil && r == "+OK\r\n" {
				break
			}
			if i > 50 {
				t.Fatalf("nutcracker never ejected the dead shard: %q %v", r, err)
			}
		}
		nc := redistest.Dial(t, listen)
		for _, k := range keys {
			if r := nc.MustDo(t, "SET", string(k), "v"); r != "+OK\r\n" {
				t.Fatalf("SET %q through nutcracker after ejection: %q", k, r)
			}
		}
		where := map[string]int{}
		for _, i := range []int{0, 2} {
			r := redistest.Dial(t, shards[i].Addr).MustDo(t, "KEYS", "*")
			_ = resp.ArrayElements([]byte(r), func(e []byte) {
				where[string(e[bytes.IndexByte(e, '\n')+1:len(e)-2])] = i
			})
		}
		live, _ := New(g.Options, g.Servers, g.Live, nil)
		moved := 0
		for _, k := range keys {
			want, ok := where[string(k)]
			if !ok {
				t.Fatalf("key %q on no live shard", k)
			}
			if got := live.Pick(k); got != want {
				t.Errorf("key %q: rebuilt ring picks %d, nutcracker put it on %d", k, got, want)
			}
			if full.Pick(k) != 1 && full.Pick(k) != want {
				moved++
			}
			g.Keys = append(g.Keys, [2]any{hex.EncodeToString(k), want})
		}
		t.Logf("%d keys moved between surviving servers", moved)
	})
	return g
}
