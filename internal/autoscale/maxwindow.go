package autoscale

import "time"

// maxWindow is the scale-down delay: the maximum desired count over a
// sliding window, in TickInterval buckets like Knative's max.TimeWindow.
// With a 60 s delay a drop from 10 to 2 takes effect only once no tick in
// the last 60 s chose more than 2. It holds at most delay/2 s + 1 entries.
type maxWindow struct {
	size    time.Duration
	entries []maxEntry // ascending by at
}

type maxEntry struct {
	at time.Time
	v  int32
}

// newMaxWindow returns nil for no delay: a one-bucket window is not quite
// the same as none when two decisions land in one bucket (Knative keeps
// the larger), so no delay means no window at all.
func newMaxWindow(size time.Duration) *maxWindow {
	if size <= 0 {
		return nil
	}
	return &maxWindow{size: size}
}

// record adds v at now and returns the maximum over the window.
func (m *maxWindow) record(now time.Time, v int32) int32 {
	key := now.Truncate(TickInterval)
	drop := 0
	for drop < len(m.entries) && !m.entries[drop].at.After(key.Add(-m.size)) {
		drop++
	}
	m.entries = append(m.entries[:0], m.entries[drop:]...)
	if n := len(m.entries); n > 0 && !key.After(m.entries[n-1].at) {
		m.entries[n-1].v = max(m.entries[n-1].v, v)
	} else {
		m.entries = append(m.entries, maxEntry{at: key, v: v})
	}
	out := v
	for _, e := range m.entries {
		out = max(out, e.v)
	}
	return out
}
