package tlsrec

import (
	"bytes"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"net"
	"sync"
)

// Taking a connection over from crypto/tls. Two things must hold for the record layer to
// carry on where crypto/tls stopped: the traffic secrets, which crypto/tls gives out only
// through Config.KeyLogWriter (the NSS key log lines an SSLKEYLOGFILE would hold; here they
// stay in memory, one Capture per connection), and the exact position in each direction's
// record stream. Writing is exact: after Handshake returns, crypto/tls has sent nothing
// under the application keys (servers here send no session tickets). Reading is made
// exact by Boundary, which never lets crypto/tls read past the record it is in: when
// the handshake ends, nothing of what the peer sent next sits in crypto/tls's buffers.

// Capture collects one handshake's TLS 1.3 application traffic secrets. Use it as the
// KeyLogWriter of a Config cloned for that connection only (Config).
type Capture struct {
	mu             sync.Mutex
	client, server []byte
}

// Config returns a clone of cfg that logs its traffic secrets to c.
func (c *Capture) Config(cfg *tls.Config) *tls.Config {
	cfg = cfg.Clone()
	cfg.KeyLogWriter = c
	return cfg
}

// Write takes one key log line: "<label> <client random hex> <secret hex>\n".
func (c *Capture) Write(p []byte) (int, error) {
	f := bytes.Fields(p)
	if len(f) != 3 {
		return len(p), nil
	}
	var dst *[]byte
	switch string(f[0]) {
	case "CLIENT_TRAFFIC_SECRET_0":
		dst = &c.client
	case "SERVER_TRAFFIC_SECRET_0":
		dst = &c.server
	default:
		return len(p), nil // handshake secrets: not needed
	}
	secret := make([]byte, hex.DecodedLen(len(f[2])))
	if _, err := hex.Decode(secret, f[2]); err != nil {
		return len(p), nil
	}
	c.mu.Lock()
	*dst = secret
	c.mu.Unlock()
	return len(p), nil
}

// Boundary is the connection under crypto/tls during a handshake that will be taken
// over: each Read returns at most the rest of the record being read, so crypto/tls never
// buffers the first record after its handshake.
type Boundary struct {
	net.Conn
	left int // bytes of the current record's body not yet read
	hdr  [HeaderLen]byte
	hdrN int // bytes of the next record's header read so far
}

func (b *Boundary) Read(p []byte) (int, error) {
	if b.left == 0 {
		n, err := b.Conn.Read(p[:min(len(p), HeaderLen-b.hdrN)])
		copy(b.hdr[b.hdrN:], p[:n])
		if b.hdrN += n; b.hdrN == HeaderLen {
			b.hdrN, b.left = 0, RecordLen(b.hdr[:])-HeaderLen
		}
		return n, err
	}
	n, err := b.Conn.Read(p[:min(len(p), b.left)])
	b.left -= n
	return n, err
}

// atBoundary reports whether the reads so far ended exactly at the end of a record.
func (b *Boundary) atBoundary() bool { return b.left == 0 && b.hdrN == 0 }

// ErrNotTaken explains why a connection stays with crypto/tls.
var ErrNotTaken = errors.New("tls: connection cannot be taken over")

// Take returns the record layer of tc, whose handshake completed over b with cap as its
// key log, to be used instead of tc from now on: tc must not be read or written again.
// It fails (wrapping ErrNotTaken) for anything but TLS 1.3, or if crypto/tls read past
// the handshake; tc is then still usable.
func Take(tc *tls.Conn, b *Boundary, cap *Capture, isClient bool) (*State, error) {
	cs := tc.ConnectionState()
	if !cs.HandshakeComplete || cs.Version != tls.VersionTLS13 {
		return nil, errors.Join(ErrNotTaken, errors.New("the handshake did not end in TLS 1.3"))
	}
	if !b.atBoundary() {
		return nil, errors.Join(ErrNotTaken, errors.New("a record after the handshake was read"))
	}
	cap.mu.Lock()
	client, server := cap.client, cap.server
	cap.mu.Unlock()
	if client == nil || server == nil {
		return nil, errors.Join(ErrNotTaken, errors.New("the traffic secrets were not logged"))
	}
	return NewState(cs.CipherSuite, client, server, isClient)
}
