package sandbox

import (
	"net/netip"
	"testing"
)

// Addresses are handed out round robin: a freed address is not reused while fresh ones
// remain, so a caller's stale connection or ARP entry for a deleted pod reaches nobody.
func TestAllocateDoesNotReuseAFreedAddressAtOnce(t *testing.T) {
	n := NewNetwork("weft0", netip.MustParsePrefix("10.9.0.0/29")) // .1 bridge, .2-.6 pods, .7 broadcast
	var got []string
	for i := 0; i < 3; i++ {
		a, err := n.allocate()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, a.String())
	}
	n.release(netip.MustParseAddr("10.9.0.2"))
	a, _ := n.allocate()
	if got[0] != "10.9.0.2" || got[2] != "10.9.0.4" || a.String() != "10.9.0.5" {
		t.Fatalf("allocated %v then %s; want .2 .3 .4 then .5 (not the freed .2)", got, a)
	}
	b, _ := n.allocate()
	c, err := n.allocate()
	if b.String() != "10.9.0.6" || err != nil || c.String() != "10.9.0.2" {
		t.Fatalf("then %s and %s (%v); want .6, then wrap around to the freed .2", b, c, err)
	}
	if _, err := n.allocate(); err == nil {
		t.Fatal("a full network handed out another address")
	}
}
