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

func TestFindPeerField(t *testing.T) {
	head := []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-weft-peer-METADATA:  n=a&ns=b \r\nDate: x\r\n\r\n")
	start, end, v := findPeerField(head)
	if start < 0 || string(v) != "n=a&ns=b" {
		t.Fatalf("found %d..%d %q", start, end, v)
	}
	if cut := string(append(head[:start:start], head[end:]...)); cut != "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: x\r\n\r\n" {
		t.Errorf("after the cut: %q", cut)
	}
	for _, h := range []string{"HTTP/1.1 200 OK\r\nX-Other: X-Weft-Peer-Metadata: n=a\r\n\r\n", "HTTP/1.1 200 OK\r\nX-Weft-Peer-Metadatas: n\r\n\r\n"} {
		if s, _, _ := findPeerField([]byte(h)); s >= 0 {
			t.Errorf("found a peer line in %q", h)
		}
	}
}
