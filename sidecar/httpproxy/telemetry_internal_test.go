package httpproxy

import "testing"

// Captured inbound HTTP may be served by a chain listener of the inbound capture listener
// (config.ChainListenerName); it reports as the destination and strips the peer header
// like the inbound listener itself.
func TestMeshInboundListeners(t *testing.T) {
	for name, want := range map[string]bool{"inbound_http": false, "inbound_http|8080": true, "inbound_http|\x00inline": true,
		"outbound_http": false, "outbound_http|9080": false, "inbound_httpx": false} {
		l := &Listener{Name: name}
		if got := l.meshInbound(); got != want {
			t.Errorf("%q: meshInbound %v, want %v", name, got, want)
		}
	}
	if !(&Listener{Name: "inbound_http", inbound: true}).meshInbound() {
		t.Error("the inbound listener itself is inbound")
	}
}
