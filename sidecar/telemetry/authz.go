package telemetry

import (
	"bufio"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
)

// MaxAuthzSeries bounds the (decision, policy) label sets of weft_authz_requests_total;
// past it decisions count under policy="overflow". A workload's policies are few (the
// control plane sends the MeshPolicies of its namespace that select it), so the bound is
// only met by a config far outside what MeshPolicy produces.
const MaxAuthzSeries = 256

// AuthzCounters counts the inbound listener's authorization decisions by decision
// (allow, deny) and by the MeshPolicy that decided (none when no policy applied): Istio
// exposes the same as Envoy's rbac.allowed / rbac.denied stats. Safe for concurrent use;
// a counted label set costs no allocation.
type AuthzCounters struct {
	series table[authzKey, *atomic.Uint64]
}

type authzKey struct {
	allowed bool
	policy  string
}

// Count adds one decision. policy is the deciding MeshPolicy (<namespace>/<name>), empty
// when none applied.
func (c *AuthzCounters) Count(allowed bool, policy string) {
	if policy == "" {
		policy = "none"
	}
	k := authzKey{allowed, policy}
	v, full := c.series.getOrAdd(k, MaxAuthzSeries, func() *atomic.Uint64 { return new(atomic.Uint64) })
	if full {
		v, _ = c.series.getOrAdd(authzKey{allowed, overflow}, MaxAuthzSeries+2, func() *atomic.Uint64 { return new(atomic.Uint64) })
	}
	v.Add(1)
}

// Value returns the count of one label set (tests and the CLI read it).
func (c *AuthzCounters) Value(allowed bool, policy string) uint64 {
	if policy == "" {
		policy = "none"
	}
	if v, ok := c.series.get(authzKey{allowed, policy}); ok {
		return v.Load()
	}
	return 0
}

// WritePrometheus writes weft_authz_requests_total{decision,policy}, sorted.
func (c *AuthzCounters) WritePrometheus(out io.Writer) {
	type row struct {
		labels string
		n      uint64
	}
	var rows []row
	c.series.each(func(k authzKey, v *atomic.Uint64) {
		d := "deny"
		if k.allowed {
			d = "allow"
		}
		var b strings.Builder
		b.WriteString(`decision="` + d + `",policy="`)
		writeEscaped(&b, k.policy)
		b.WriteString(`"`)
		rows = append(rows, row{b.String(), v.Load()})
	})
	slices.SortFunc(rows, func(a, b row) int { return strings.Compare(a.labels, b.labels) })
	w := bufio.NewWriter(out)
	defer w.Flush()
	header(w, "weft_authz_requests_total", "counter",
		"Inbound requests the sidecar authorized (decision=allow) or refused with 403 (decision=deny), by the MeshPolicy that decided (none: no policy applied).")
	for _, r := range rows {
		sample(w, "weft_authz_requests_total", r.labels, "", strconv.FormatUint(r.n, 10))
	}
}
