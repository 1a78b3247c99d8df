package ring

import (
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/placement.json from a nutcracker run")

// TestPointsPerServer pins twemproxy's float32 point counts (reference §2.2).
func TestPointsPerServer(t *testing.T) {
	cases := []struct {
		weights []uint32
		want    []uint32
	}{
		{[]uint32{1, 1, 1}, []uint32{160, 160, 160}},
		{[]uint32{1, 2, 3, 1, 5}, []uint32{64, 132, 200, 64, 332}},
		{[]uint32{100, 1}, []uint32{316, 0}},
		{[]uint32{1, 3}, []uint32{80, 240}}, // a:1,c:3 after b is ejected
		{[]uint32{1, 2}, []uint32{104, 212}},
	}
	for _, c := range cases {
		var total uint32
		for _, w := range c.weights {
			total += w
		}
		for i, w := range c.weights {
			if got := PointsPerServer(w, total, len(c.weights)); got != c.want[i] {
				t.Errorf("weights %v: server %d has %d points, want %d", c.weights, i, got, c.want[i])
			}
		}
	}
	// Equal weights give 156, not 160, for these pool sizes.
	for _, n := range []int{25, 47, 50, 55, 61, 71, 94, 100} {
		if got := PointsPerServer(1, uint32(n), n); got != 156 {
			t.Errorf("n=%d: %d points, want 156", n, got)
		}
	}
	if got := PointsPerServer(1, 24, 24); got != 160 {
		t.Errorf("n=24: %d points, want 160", got)
	}
}

func TestHashTag(t *testing.T) {
	r, err := New(Options{Distribution: Ketama, HashTag: "{}"}, []Server{{"a", 1}, {"b", 1}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct{ key, hashed string }{
		{"user{42}:name", "42"},
		{"{42}", "42"},
		{"a{}b{x}", "a{}b{x}"}, // empty tag: whole key
		{"no-tag", "no-tag"},
		{"open{only", "open{only"},
		{"x}y{z}", "z"},
	}
	for _, c := range cases {
		if got, want := r.HashKey([]byte(c.key)), r.hash([]byte(c.hashed)); got != want {
			t.Errorf("%q hashed as something other than %q", c.key, c.hashed)
		}
	}
}

func TestNoLiveServer(t *testing.T) {
	for _, d := range []Distribution{Ketama, Modula, Random} {
		r, err := New(Options{Distribution: d}, []Server{{"a", 1}, {"b", 1}}, []bool{false, false}, func() uint32 { return 7 })
		if err != nil {
			t.Fatal(err)
		}
		if got := r.Pick([]byte("k")); got != -1 {
			t.Errorf("%s: Pick with no live server = %d, want -1", d, got)
		}
	}
}

func TestBadOptions(t *testing.T) {
	for _, o := range []Options{{Distribution: "rendezvous"}, {Hash: "sha1"}, {HashTag: "{"}} {
		if _, err := New(o, []Server{{"a", 1}}, nil, nil); err == nil {
			t.Errorf("%+v: want error", o)
		}
	}
	if _, err := New(Options{}, []Server{{"a", 0}}, nil, nil); err == nil {
		t.Error("weight 0: want error")
	}
}

// golden is a placement case recorded from nutcracker 0.5.0.
type golden struct {
	Name    string   `json:"name"`
	Options Options  `json:"options"`
	Servers []Server `json:"servers"`
	Live    []bool   `json:"live,omitempty"` // nil: all live
	Keys    [][2]any `json:"keys"`           // [hex key, server index]
}

// TestGoldenPlacement checks every key nutcracker placed in recorded runs
// (testdata/placement.json, written by TestAgainstNutcracker -update).
func TestGoldenPlacement(t *testing.T) {
	b, err := os.ReadFile("testdata/placement.json")
	if err != nil {
		t.Fatal(err)
	}
	var cases []golden
	if err := json.Unmarshal(b, &cases); err != nil {
		t.Fatal(err)
	}
	if len(cases) < 12 {
		t.Fatalf("only %d golden cases", len(cases))
	}
	for _, c := range cases {
		r, err := New(c.Options, c.Servers, c.Live, nil)
		if err != nil {
			t.Fatalf("%s: %v", c.Name, err)
		}
		bad := 0
		for _, kv := range c.Keys {
			key, _ := hex.DecodeString(kv[0].(string))
			want := int(kv[1].(float64))
			if got := r.Pick(key); got != want {
				bad++
				if bad < 5 {
					t.Errorf("%s: key %q on server %d, nutcracker put it on %d", c.Name, key, got, want)
				}
			}
		}
		if bad > 0 {
			t.Errorf("%s: %d of %d keys misplaced", c.Name, bad, len(c.Keys))
		}
	}
}

func BenchmarkPickKetama(b *testing.B) {
	r, _ := New(Options{Distribution: Ketama}, []Server{{"a", 1}, {"b", 1}, {"c", 1}}, nil, nil)
	k := []byte("key:000000123456")
	for b.Loop() {
		r.Pick(k)
	}
}

// TestRandomUsesLiveServersOnly: random ignores weights and keys, and never
// picks a dead server.
func TestRandomUsesLiveServersOnly(t *testing.T) {
	n := uint32(0)
	r, err := New(Options{Distribution: Random}, []Server{{"a", 1}, {"b", 9}, {"c", 1}}, []bool{true, false, true}, func() uint32 { n++; return n })
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]int{}
	for range 100 {
		seen[r.Pick([]byte("same-key"))]++
	}
	if seen[1] != 0 || seen[0] != 50 || seen[2] != 50 {
		t.Fatalf("random picks %v, want 50/0/50", seen)
	}
}
