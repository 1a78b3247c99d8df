package telemetry

import (
	"sync"
	"sync/atomic"
)

// table is a map that is read without locking: the event loops on every core look up
// their series in an immutable snapshot (no shared cache line written per request).
// Inserts go to a small map under mu and are folded into a new snapshot once they number
// a quarter of it, so building snapshots costs O(1) amortized per insert; a key not yet
// folded in is found under mu.
type table[K comparable, V any] struct {
	snap   atomic.Pointer[map[K]V]
	mu     sync.Mutex
	recent map[K]V
	n      atomic.Int64 // entries in all
}

// get returns the value under k.
func (t *table[K, V]) get(k K) (V, bool) {
	if p := t.snap.Load(); p != nil {
		if v, ok := (*p)[k]; ok {
			return v, true
		}
	}
	t.mu.Lock()
	v, ok := t.recent[k]
	t.mu.Unlock()
	return v, ok
}

// getOrAdd returns the value under k, or adds newV()'s when there are fewer than max
// entries; full is true when k was missing and the table full.
func (t *table[K, V]) getOrAdd(k K, max int, newV func() V) (v V, full bool) {
	if v, ok := t.get(k); ok {
		return v, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if v, ok := t.recent[k]; ok {
		return v, false
	}
	snap := t.snap.Load()
	if snap != nil {
		if v, ok := (*snap)[k]; ok {
			return v, false
		}
	}
	if int(t.n.Load()) >= max {
		return v, true
	}
	v = newV()
	if t.recent == nil {
		t.recent = map[K]V{}
	}
	t.recent[k] = v
	t.n.Add(1)
	size := 0
	if snap != nil {
		size = len(*snap)
	}
	if len(t.recent) > 16 && len(t.recent) > size/4 || size == 0 {
		next := make(map[K]V, size+len(t.recent))
		if snap != nil {
			for k, v := range *snap {
				next[k] = v
			}
		}
		for k, v := range t.recent {
			next[k] = v
		}
		t.snap.Store(&next)
		t.recent = nil
	}
	return v, false
}

// len is the number of entries.
func (t *table[K, V]) len() int { return int(t.n.Load()) }

// each calls f for every entry.
func (t *table[K, V]) each(f func(K, V)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := t.snap.Load(); p != nil {
		for k, v := range *p {
			f(k, v)
		}
	}
	for k, v := range t.recent {
		f(k, v)
	}
}
