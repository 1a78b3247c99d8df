package capture

import "encoding/binary"

// serverName returns the SNI of the TLS ClientHello b starts with, or "" (not TLS, no SNI,
// or the hello is not whole in b). It reads only: the bytes pass through unchanged.
func serverName(b []byte) string {
	// TLS record: type 22 (handshake), version, length; then handshake type 1 (ClientHello).
	if len(b) < 9 || b[0] != 22 || b[5] != 1 {
		return ""
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
		return ""
	}
	p += 1 + int(b[p]) // session id
	if len(b) < p+2 {
		return ""
	}
	p += 2 + int(binary.BigEndian.Uint16(b[p:])) // cipher suites
	if len(b) < p+1 {
		return ""
	}
	p += 1 + int(b[p]) // compression methods
	if len(b) < p+2 {
		return ""
	}
	end := p + 2 + int(binary.BigEndian.Uint16(b[p:]))
	p += 2
	for p+4 <= len(b) && p+4 <= end {
		typ := binary.BigEndian.Uint16(b[p:])
		n := int(binary.BigEndian.Uint16(b[p+2:]))
		p += 4
		if p+n > len(b) {
			return ""
		}
		if typ == 0 { // server_name: list length (2), then entries of type (1), length (2), name
			e := b[p : p+n]
			if len(e) < 5 || e[2] != 0 {
				return ""
			}
			l := int(binary.BigEndian.Uint16(e[3:]))
			if 5+l > len(e) {
				return ""
			}
			return string(e[5 : 5+l])
		}
		p += n
	}
	return ""
}
