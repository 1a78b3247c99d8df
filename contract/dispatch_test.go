package contract

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"
)

func TestParseCallsSubject(t *testing.T) {
	for subj, want := range map[string][3]string{
		"weft.calls.ns.fn":        {"ns", "fn", ""},
		"weft.calls.ns.fn.fn-001": {"ns", "fn", "fn-001"},
		"weft.calls.ns":           {},
		"weft.calls.ns.fn.r.x":    {},
		"weft.calls.ns..r":        {},
		"weft.dead.ns.fn":         {},
	} {
		ns, name, rev, ok := ParseCallsSubject(subj)
		if ok != (want[0] != "") || ns != want[0] || name != want[1] || rev != want[2] {
			t.Errorf("ParseCallsSubject(%q) = %q %q %q %v, want %v", subj, ns, name, rev, ok, want)
		}
	}
	if s := RevisionCallsSubject("ns", "fn", "r1"); s != "weft.calls.ns.fn.r1" {
		t.Errorf("RevisionCallsSubject = %q", s)
	}
}

// PickRevision maps [0, total) onto the revisions by percent, skipping 0 % ones.
func TestPickRevision(t *testing.T) {
	split := []RevisionTraffic{{"a", 90}, {"z", 0}, {"b", 10}}
	counts := map[string]int{}
	for n := range TrafficTotal(split) {
		counts[PickRevision(split, n)]++
	}
	if counts["a"] != 90 || counts["b"] != 10 || len(counts) != 2 {
		t.Errorf("draws over [0,100) = %v, want a 90, b 10", counts)
	}
	if PickRevision(nil, 0) != "" || TrafficPercent(split, "z") != 0 || TrafficPercent(split, "a") != 90 {
		t.Error("empty split or a 0 % revision picked")
	}
}

// The traffic metadata round-trips; a malformed one is an async-policy error (the cluster
// stays usable), never a panic.
func TestFunctionMetaTraffic(t *testing.T) {
	m := FunctionMeta{Namespace: "ns", Name: "fn", Traffic: []RevisionTraffic{{"fn-1", 90}, {"fn-2", 10}}}
	got, err := DecodeFunctionMeta(m.Encode())
	if err != nil || len(got.Traffic) != 2 || got.Traffic[0] != m.Traffic[0] || got.Traffic[1] != m.Traffic[1] {
		t.Fatalf("round trip: %+v, %v", got.Traffic, err)
	}
	bad := func(v any) *structpb.Struct {
		s := m.Encode()
		val, err := structpb.NewValue(v)
		if err != nil {
			t.Fatal(err)
		}
		s.Fields["traffic"] = val
		return s
	}
	many := make([]any, MaxTrafficTargets+1)
	for i := range many {
		many[i] = map[string]any{"revision": "r", "percent": 1}
	}
	for name, v := range map[string]any{
		"not a list":       "90/10",
		"percent too high": []any{map[string]any{"revision": "r", "percent": 101}},
		"fractional":       []any{map[string]any{"revision": "r", "percent": 9.5}},
		"wildcard name":    []any{map[string]any{"revision": "r.*", "percent": 10}},
		"no name":          []any{map[string]any{"percent": 10}},
		"too many":         many,
	} {
		got, err := DecodeFunctionMeta(bad(v))
		if !errors.Is(err, ErrAsyncPolicy) || got.Name != "fn" || got.Traffic != nil {
			t.Errorf("%s: %+v, %v; want an async-policy error with the rest decoded", name, got, err)
		}
	}
}
