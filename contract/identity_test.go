package contract

import (
	"net/url"
	"testing"
)

func TestSPIFFEIDRoundTripAndRefusals(t *testing.T) {
	id := SPIFFEID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "web"}
	if got := id.String(); got != "spiffe://cluster.local/ns/shop/sa/web" {
		t.Errorf("String = %s", got)
	}
	back, err := ParseSPIFFEID(id.URL())
	if err != nil || back != id {
		t.Errorf("round trip: %+v %v", back, err)
	}
	for _, s := range []string{
		"https://cluster.local/ns/shop/sa/web", "spiffe:///ns/shop/sa/web", "spiffe://cluster.local/ns/shop",
		"spiffe://cluster.local/ns//sa/web", "spiffe://cluster.local/ns/shop/sa/web/extra", "spiffe://cluster.local/sa/web/ns/shop",
		"spiffe://u@cluster.local/ns/shop/sa/web", "spiffe://cluster.local/ns/shop/sa/web?x=1",
	} {
		u, _ := url.Parse(s)
		if _, err := ParseSPIFFEID(u); err == nil {
			t.Errorf("%s was accepted", s)
		}
	}
	if _, err := ParseSPIFFEID(nil); err == nil {
		t.Error("nil was accepted")
	}
}

func TestParseMTLSMode(t *testing.T) {
	for in, want := range map[string]string{"": MTLSPermissive, "permissive": MTLSPermissive, "strict": MTLSStrict} {
		if got, err := ParseMTLSMode(in); err != nil || got != want {
			t.Errorf("%q: %q %v, want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"STRICT", "disable", "off", " strict"} {
		if _, err := ParseMTLSMode(in); err == nil {
			t.Errorf("%q was accepted", in)
		}
	}
}
