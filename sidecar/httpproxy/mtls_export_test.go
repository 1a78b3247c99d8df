package httpproxy

import (
	"net/http"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/identity"
)

// MTLSPeers lists the SPIFFE IDs of the inbound listener's open mutual TLS connections.
func (p *Proxy) MTLSPeers() []contract.SPIFFEID {
	l := p.Listener(contract.InboundListenerName)
	if l == nil || l.mtls == nil {
		return nil
	}
	var ids []contract.SPIFFEID
	l.mtls.peers.Range(func(_, v any) bool { ids = append(ids, v.(contract.SPIFFEID)); return true })
	return ids
}

// PeerOfRequest is the peer identity.PeerFrom finds on a request from remote once the
// inbound listener has put it on the context.
func (p *Proxy) PeerOfRequest(remote string) (contract.SPIFFEID, bool) {
	l := p.Listener(contract.InboundListenerName)
	if l == nil || l.mtls == nil {
		return contract.SPIFFEID{}, false
	}
	r, _ := http.NewRequest(http.MethodGet, "/", nil)
	r.RemoteAddr = remote
	return identity.PeerFrom(l.mtls.withPeer(r).Context())
}

// MTLSCounts are the inbound listener's mutual TLS counters.
func (p *Proxy) MTLSCounts() (handshakes, handshakeErrors, plaintext, refused uint64) {
	l := p.Listener(contract.InboundListenerName)
	if l == nil || l.mtls == nil {
		return
	}
	f := l.mtls
	return f.handshakes.Load(), f.handshakeErrors.Load(), f.plaintext.Load(), f.refusedPlaintext.Load()
}

// LoopTLSCounts are a listener's mutual TLS event loop counters: inbound connections that
// joined a loop, the loop's dials, and its failed dials.
func (p *Proxy) LoopTLSCounts(listener string) (conns, dials, dialErrors uint64) {
	l := p.Listener(listener)
	if l == nil {
		return
	}
	return l.loopTLSConns.Load(), l.loopTLSDials.Load(), l.loopTLSDialErrors.Load()
}
