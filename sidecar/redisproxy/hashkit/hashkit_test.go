package hashkit

import "testing"

// TestApple checks every function against twemproxy's src/test_all.c vectors
// (themselves libmemcached's tests/hash_results.h) for the key "apple".
func TestApple(t *testing.T) {
	want := map[string]uint32{
		"one_at_a_time": 2297466611,
		"md5":           3195025439,
		"crc16":         3662830516,
		"crc32":         10542,
		"crc32a":        2838417488,
		"fnv1_32":       67176023,
		"fnv1a_32":      280767167,
		"fnv1_64":       473199127,
		"fnv1a_64":      1488911807,
		"hsieh":         3738850110,
		"jenkins":       1442444624,
		"murmur":        4142305122,
	}
	if len(want) != len(Names()) {
		t.Fatalf("vectors cover %d functions, hashkit has %d", len(want), len(Names()))
	}
	for name, w := range want {
		f, err := Lookup(name)
		if err != nil {
			t.Fatal(err)
		}
		if got := f([]byte("apple")); got != w {
			t.Errorf("%s(apple) = %d, want %d", name, got, w)
		}
	}
}

func TestKetamaPoint(t *testing.T) {
	// From twemproxy src/test_all.c.
	if got := KetamaPoint([]byte("server1-8"), 0); got != 3853726576 {
		t.Errorf("point 0 = %d", got)
	}
	if got := KetamaPoint([]byte("server1-8"), 3); got != 2667054752 {
		t.Errorf("point 3 = %d", got)
	}
}

func TestLookupUnknown(t *testing.T) {
	if _, err := Lookup("sha1"); err == nil {
		t.Fatal("want error for unknown hash")
	}
}

func BenchmarkFNV1a64(b *testing.B) {
	k := []byte("key:000000123456")
	for b.Loop() {
		FNV1a_64(k)
	}
}
