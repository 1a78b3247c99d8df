package telemetry

import (
	"sync"
	"testing"
)

// Concurrent adders and readers agree on one value per key (a series is never created
// twice, which would split its counts), and the cap holds.
func TestTableConcurrentGetOrAdd(t *testing.T) {
	var tb table[int, *int]
	const keys, max = 500, 400
	var wg sync.WaitGroup
	got := make([][]*int, 4)
	for g := range 4 {
		got[g] = make([]*int, keys)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range keys {
				k := (i*7 + g*13) % keys
				v, full := tb.getOrAdd(k, max, func() *int { x := k; return &x })
				if !full {
					got[g][k] = v
				}
				if w, ok := tb.get(k); ok && !full && w != v {
					t.Errorf("key %d: get %p after getOrAdd %p", k, w, v)
				}
			}
		}()
	}
	wg.Wait()
	if tb.len() != max {
		t.Errorf("%d entries, cap %d", tb.len(), max)
	}
	for k := range keys {
		var first *int
		for g := range 4 {
			if v := got[g][k]; v != nil {
				if first != nil && v != first {
					t.Fatalf("key %d has two values", k)
				}
				first = v
			}
		}
	}
	n := 0
	tb.each(func(int, *int) { n++ })
	if n != max {
		t.Errorf("each visited %d, want %d", n, max)
	}
}
