package autoscale

import (
	"cmp"
	"math"
	"slices"
	"time"
)

// Bounds on the requests caller sidecars report holding for a function.
const (
	// HeldTTL is how long a sidecar's held count stands without a refresh. Sidecars
	// refresh it every second while they hold (activator.DemandInterval), so a
	// sidecar that died or lost its connection stops counting within 3 s.
	HeldTTL = 3 * time.Second
	// MaxHeldPerCaller is the most one sidecar can report holding for one function:
	// the API's largest spec.activation.maxPending, so an honest sidecar never
	// reaches it. A larger count is clamped to it, a negative one to 0.
	MaxHeldPerCaller = 10000
	// MaxHeldCallers is how many sidecars' counts one function keeps. A poke from
	// one more sidecar while all are live counts as a plain poke (1 request in
	// its second) and is not stored, so a flood of forged callers costs at most
	// 1024 entries per known function.
	MaxHeldCallers = 1024
)

// heldCounts is one function's held requests per caller sidecar.
type heldCounts struct {
	callers map[string]heldEntry
	total   int // sum of callers' n
}

type heldEntry struct {
	n       int
	expires time.Time
}

type expiry struct {
	caller string
	at     time.Time
}

// set stores caller's count, clamped to [0, MaxHeldPerCaller], until now+HeldTTL;
// 0 removes it. It reports false when the caller is new and MaxHeldCallers are
// stored already.
func (h *heldCounts) set(now time.Time, caller string, n int) bool {
	n = min(max(n, 0), MaxHeldPerCaller)
	if n == 0 {
		h.remove(caller)
		return true
	}
	old, ok := h.callers[caller]
	if !ok && len(h.callers) >= MaxHeldCallers {
		return false
	}
	if h.callers == nil {
		h.callers = map[string]heldEntry{}
	}
	h.total += n - old.n
	h.callers[caller] = heldEntry{n: n, expires: now.Add(HeldTTL)}
	return true
}

func (h *heldCounts) remove(caller string) {
	if e, ok := h.callers[caller]; ok {
		h.total -= e.n
		delete(h.callers, caller)
	}
}

// expired returns the callers whose count expired at or before now, earliest first.
func (h *heldCounts) expired(now time.Time) []expiry {
	var out []expiry
	for c, e := range h.callers {
		if !e.expires.After(now) {
			out = append(out, expiry{c, e.expires})
		}
	}
	slices.SortFunc(out, func(x, y expiry) int { return cmp.Or(x.at.Compare(y.at), cmp.Compare(x.caller, y.caller)) })
	return out
}

// heldCap bounds the summed held count a decision uses. With a max scale it is
// MaxScale × target, the held load that max scale pods carry, so held requests
// alone never ask for more than max scale (Decide clamps to it as well): max 30
// at target 10 counts at most 300. Without one, it is MaxHeldCallers ×
// MaxHeldPerCaller, and the max scale-up rate bounds each decision (1000 × ready
// pods by default).
func (d *Decider) heldCap() int {
	if d.spec.MaxScale <= 0 {
		return MaxHeldCallers * MaxHeldPerCaller
	}
	return int(math.Ceil(float64(d.spec.MaxScale) * d.spec.TargetValue()))
}

// SetHeld records that caller (a sidecar's identity) holds n requests for the
// function at now. Held requests count as in-flight requests, as Knative's
// activator reports the requests it buffers: the sum over callers stands in
// every second until a caller sends a new count, sends 0 (its requests were
// released) or HeldTTL passes without a refresh. 200 held at target 10 (cc 10,
// utilization 100 %) give ceil(200 / 10) = 20 pods in the next Decide; at the
// default utilization of 70 % the target is 7 and they give ceil(200 / 7) = 29.
// n is clamped to [0, MaxHeldPerCaller]. It reports false when the caller is
// new and MaxHeldCallers counts are stored; the poke then counts as Poke does.
func (d *Decider) SetHeld(now time.Time, caller string, n int) bool {
	ok := true
	d.setLevel(now, func() { ok = d.held.set(now, caller, n) })
	if !ok {
		d.Poke(now)
	}
	return ok
}

// Held returns the summed held count as of the last call, clamped as Decide uses it.
func (d *Decider) Held() int { return min(d.held.total, d.heldCap()) }
