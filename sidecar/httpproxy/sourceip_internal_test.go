package httpproxy

import (
	"net/netip"
	"testing"
)

// sourceIP is what useSourceIP hashes: the peer's IP, except a loopback peer (the app in
// this pod, over HTTP_PROXY) stands for the pod's IP.
func TestSourceIP(t *testing.T) {
	pod := netip.MustParseAddr("10.244.1.7")
	for _, c := range []struct {
		remote string
		pod    netip.Addr
		want   string
	}{
		{"127.0.0.1:43122", pod, "10.244.1.7"},        // HTTP_PROXY: the app in this pod
		{"127.0.0.6:43122", pod, "10.244.1.7"},        // any of 127/8
		{"[::1]:43122", pod, "10.244.1.7"},            // IPv6 loopback
		{"10.244.3.9:51000", pod, "10.244.3.9"},       // captured or inbound: the peer itself
		{"10.244.3.9:51001", pod, "10.244.3.9"},       // the port never matters
		{"[::ffff:10.244.3.9]:80", pod, "10.244.3.9"}, // the loop's spelling of a mapped peer
		{"[fd00::5]:80", pod, "fd00::5"},
		{"127.0.0.1:43122", netip.Addr{}, "127.0.0.1"}, // no pod IP known: as Envoy would
		{"pipe", pod, "pipe"},
	} {
		if got := sourceIP(c.remote, c.pod); got != c.want {
			t.Errorf("sourceIP(%q, %v) = %q, want %q", c.remote, c.pod, got, c.want)
		}
	}
}
