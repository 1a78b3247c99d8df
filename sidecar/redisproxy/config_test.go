package redisproxy

import "testing"

func TestResolveRoutes(t *testing.T) {
	a, b, all := &pool{name: "a"}, &pool{name: "b"}, &pool{name: "all"}
	s := &snapshot{routes: []route{{prefix: "user:vip:", pool: b}, {prefix: "user:", remove: true, pool: a}}, catchAll: all}
	cases := []struct {
		key, pool, stored string
		fold              bool
	}{
		{"user:1", "a", "1", false},
		{"user:vip:1", "b", "user:vip:1", false}, // longest prefix wins
		{"USER:1", "all", "USER:1", false},
		{"USER:1", "a", "1", true},
		{"use", "all", "use", false},
	}
	for _, c := range cases {
		s.fold = c.fold
		pl, k := s.resolve([]byte(c.key))
		if pl.name != c.pool || string(k) != c.stored {
			t.Errorf("%q (fold=%v) → pool %s key %q, want %s %q", c.key, c.fold, pl.name, k, c.pool, c.stored)
		}
	}
	s.catchAll = nil
	if pl, _ := s.resolve([]byte("other")); pl != nil {
		t.Error("no catch-all: want no pool")
	}
}
