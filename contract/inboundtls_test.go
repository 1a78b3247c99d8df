package contract

import (
	"strings"
	"testing"
)

func TestInboundTLSPortsRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		p          InboundTLSPorts
		want       string
		has, hasnt []uint16
	}{
		{InboundTLSPorts{All: true}, "all", []uint16{1, 6379, 8080, 15022, 65535}, []uint16{15000, 15006, 15020, 15021, 15090}},
		{InboundTLSPorts{All: true, Except: []uint16{9001, 9000, 9000}}, "all.except.9000.9001", []uint16{6379}, []uint16{9000, 9001, 15001}},
		{InboundTLSPorts{Ports: []uint16{8080, 6379}}, "6379.8080", []uint16{6379, 8080}, []uint16{9000, 15006}},
	} {
		v, ok := tc.p.Encode()
		if !ok || v != tc.want {
			t.Errorf("Encode(%+v) = %q %v, want %q", tc.p, v, ok, tc.want)
		}
		p, ok := ParseInboundTLSPorts(v)
		if !ok {
			t.Fatalf("Parse(%q) refused", v)
		}
		for _, port := range tc.has {
			if !p.Has(port) {
				t.Errorf("%q lacks %d", v, port)
			}
		}
		for _, port := range tc.hasnt {
			if p.Has(port) {
				t.Errorf("%q has %d", v, port)
			}
		}
	}
	// Too many exclusions for a label value: no label (the app port alone is marked).
	var many []uint16
	for i := range 20 {
		many = append(many, uint16(10000+i))
	}
	if v, ok := (InboundTLSPorts{All: true, Except: many}).Encode(); ok {
		t.Errorf("encoded %d characters: %q", len(v), v)
	}
	for _, bad := range []string{"", "al", "all.", "all.except", "all.9000", "x.9000", "0", "65536", "80..81", "-1", strings.Repeat("1", 70)} {
		if p, ok := ParseInboundTLSPorts(bad); ok {
			t.Errorf("Parse(%q) = %+v, want refused", bad, p)
		}
	}
}
