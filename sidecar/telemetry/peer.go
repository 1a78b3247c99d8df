package telemetry

import (
	"net/url"
)

// PeerHeader carries the calling sidecar's workload to the called one, which labels its
// reporter="destination" metrics with it (Istio's x-envoy-peer-metadata). The outbound
// side sets it on every request it forwards; the inbound side reads it and removes it
// before the app sees the request. It is unauthenticated until Weft has mTLS: anything
// that reaches the inbound listener can claim any workload. It only ever becomes label
// values (checked by labelValue, interned under maxPeers), never a decision.
const PeerHeader = "X-Weft-Peer-Metadata"

// maxPeerHeader is the longest PeerHeader value read; longer ones count as an unknown peer.
const maxPeerHeader = 1024

// encodePeer is w as the PeerHeader value: a URL query string, keys sorted.
func encodePeer(w Workload) string {
	v := url.Values{}
	set := func(k, s string) {
		if s != "" && s != Unknown {
			v.Set(k, s)
		}
	}
	set("n", w.Name)
	set("ns", w.Namespace)
	set("app", w.App)
	set("v", w.Version)
	set("cs", w.CanonicalService)
	set("cr", w.CanonicalRevision)
	set("c", w.Cluster)
	return v.Encode()
}

// decodePeer parses a PeerHeader value. Values that are not plausible label values are
// Unknown; a header that does not parse, or is too long, is an unknown peer (ok false).
func decodePeer(s string) (w Workload, ok bool) {
	if len(s) > maxPeerHeader {
		return w, false
	}
	v, err := url.ParseQuery(s)
	if err != nil {
		return w, false
	}
	get := func(k string) string { return labelValue(v.Get(k)) }
	w = Workload{Name: get("n"), Namespace: get("ns"), App: get("app"), Version: get("v"),
		CanonicalService: get("cs"), CanonicalRevision: get("cr"), Cluster: get("c"), Principal: Unknown}
	return w, true
}

// labelValue is s if it looks like a Kubernetes name or label value (at most 253 bytes
// of letters, digits and ._-/:@), else Unknown: a forged header cannot inject odd text
// into the exposition, however it is escaped.
func labelValue(s string) string {
	if s == "" || len(s) > 253 {
		return Unknown
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '.', c == '_', c == '-', c == '/', c == ':', c == '@':
		default:
			return Unknown
		}
	}
	return s
}
