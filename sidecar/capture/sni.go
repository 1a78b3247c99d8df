package capture

import "encoding/binary"

// serverName returns the SNI of the TLS ClientHello b starts with, or "" (not TLS, no SNI,
// or the hello is not whole in b). It reads only: the bytes pass through unchanged.
func serverName(b []byte) string {
	e, ok := helloExtension(b, 0)
	// server_name: list length (2), then entries of type (1), length (2), name
	if !ok || len(e) < 5 || e[2] != 0 {
		return ""
	}
	l := int(binary.BigEndian.Uint16(e[3:]))
	if 5+l > len(e) {
		return ""
	}
	return string(e[5 : 5+l])
}

// alpnOffers returns the ALPN protocols the TLS ClientHello b starts with offers (nil: not
// TLS, none offered, or the hello is not whole in b).
func alpnOffers(b []byte) []string {
	e, ok := helloExtension(b, 16)
	if !ok || len(e) < 2 {
		return nil
	}
	l := int(binary.BigEndian.Uint16(e))
	if 2+l > len(e) {
		return nil
	}
	var out []string
	for e = e[2 : 2+l]; len(e) > 0; {
		n := int(e[0])
		if 1+n > len(e) {
			return nil
		}
		out = append(out, string(e[1:1+n]))
		e = e[1+n:]
	}
	return out
}

// helloExtension returns the body of extension typ of the TLS ClientHello b starts with.
func helloExtension(b []byte, typ uint16) ([]byte, bool) {
	// TLS record: type 22 (handshake), version, length; then handshake type 1 (ClientHello).
	if len(b) < 9 || b[0] != 22 || b[5] != 1 {
		return nil, false
	}
	rec := int(binary.BigEndian.Uint16(b[3:5]))
	if len(b) < 5+rec {
		b = b[5:]
	} else {
		b = b[5 : 5+rec]
	}
	// handshake header (4), client version (2), random (32)
	p := 4 + 2 + 32
	if len(b) < p+1 {
		return nil, false
	}
	p += 1 + int(b[p]) // session id
	if len(b) < p+2 {
		return nil, false
	}
	p += 2 + int(binary.BigEndian.Uint16(b[p:])) // cipher suites
	if len(b) < p+1 {
		return nil, false
	}
	p += 1 + int(b[p]) // compression methods
	if len(b) < p+2 {
		return nil, false
	}
	end := p + 2 + int(binary.BigEndian.Uint16(b[p:]))
	p += 2
	for p+4 <= len(b) && p+4 <= end {
		t := binary.BigEndian.Uint16(b[p:])
		n := int(binary.BigEndian.Uint16(b[p+2:]))
		p += 4
		if p+n > len(b) {
			return nil, false
		}
		if t == typ {
			return b[p : p+n], true
		}
		p += n
	}
	return nil, false
}
