// Package tlsrec carries a TLS 1.3 connection on after crypto/tls has done its handshake:
// the record layer alone (RFC 8446 §5), from the traffic secrets the handshake produced, so
// that the sidecar's event loop can encrypt and decrypt records on sockets it reads and
// writes itself, as haproxy and Envoy do with OpenSSL/BoringSSL on their event loops. The
// handshake, certificate verification and ALPN stay crypto/tls's; what this package does
// after it is what crypto/tls does for an established connection: AEAD records with
// per-direction sequence numbers, alerts, and the post-handshake messages a peer may send
// (session tickets are ignored, key updates honoured).
//
// Used where kernel TLS would be used on a kernel that has it: the bytes on the wire are
// ordinary TLS 1.3, so either end may be plain crypto/tls.
package tlsrec

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"slices"
	"sync/atomic"

	"golang.org/x/crypto/chacha20poly1305"
)

// Record layer sizes (RFC 8446 §5.1, §5.2).
const (
	HeaderLen     = 5
	MaxPlaintext  = 16384
	maxCiphertext = MaxPlaintext + 256 // the largest record a peer may send
	// MaxRecord is the largest record on the wire, header included.
	MaxRecord = HeaderLen + maxCiphertext
	tagLen    = 16
)

// Record content types.
const (
	typeAlert       = 21
	typeHandshake   = 22
	typeApplication = 23
)

// Post-handshake message types.
const (
	msgNewSessionTicket = 4
	msgKeyUpdate        = 24
)

// ErrClosed is returned by Open after the peer's close_notify.
var ErrClosed = errors.New("tls: the peer closed the connection (close_notify)")

// RecordError is a record the peer must not have sent (a bad MAC, an oversized record, an
// alert, an unexpected message); the connection cannot go on.
type RecordError struct{ Msg string }

func (e *RecordError) Error() string { return "tls: " + e.Msg }

func recordErr(format string, a ...any) error { return &RecordError{Msg: fmt.Sprintf(format, a...)} }

// half is one direction's key schedule: the AEAD and IV of the current traffic secret and
// the sequence number of the next record.
type half struct {
	suite  uint16
	secret []byte
	aead   cipher.AEAD
	iv     [12]byte
	seq    uint64
	nonce  [12]byte
}

// State is an established TLS 1.3 connection's record layer. Open and Seal may run on two
// goroutines at once (one reading, one writing); each alone is for one goroutine at a time.
type State struct {
	in, out half
	// updateOut: the peer asked for a key update; Seal sends ours before its next record.
	updateOut atomic.Bool
}

// NewState builds the record layer of a connection whose handshake negotiated suite (a
// TLS 1.3 cipher suite) with these traffic secrets. isClient says which secret is ours.
func NewState(suite uint16, clientSecret, serverSecret []byte, isClient bool) (*State, error) {
	s := &State{}
	ours, theirs := serverSecret, clientSecret
	if isClient {
		ours, theirs = clientSecret, serverSecret
	}
	if err := s.in.set(suite, theirs); err != nil {
		return nil, err
	}
	if err := s.out.set(suite, ours); err != nil {
		return nil, err
	}
	return s, nil
}

func suiteHash(suite uint16) (func() hash.Hash, int, error) {
	switch suite {
	case tls.TLS_AES_128_GCM_SHA256:
		return sha256.New, 16, nil
	case tls.TLS_CHACHA20_POLY1305_SHA256:
		return sha256.New, 32, nil
	case tls.TLS_AES_256_GCM_SHA384:
		return sha512.New384, 32, nil
	}
	return nil, 0, fmt.Errorf("tls: cipher suite %#04x is not a TLS 1.3 suite", suite)
}

// set makes secret the direction's traffic secret, from sequence number 0.
func (h *half) set(suite uint16, secret []byte) error {
	newHash, keyLen, err := suiteHash(suite)
	if err != nil {
		return err
	}
	key, err := expandLabel(newHash, secret, "key", keyLen)
	if err != nil {
		return err
	}
	iv, err := expandLabel(newHash, secret, "iv", 12)
	if err != nil {
		return err
	}
	var aead cipher.AEAD
	if suite == tls.TLS_CHACHA20_POLY1305_SHA256 {
		aead, err = chacha20poly1305.New(key)
	} else {
		var block cipher.Block
		if block, err = aes.NewCipher(key); err == nil {
			aead, err = cipher.NewGCM(block)
		}
	}
	if err != nil {
		return err
	}
	h.suite, h.secret, h.aead, h.seq = suite, secret, aead, 0
	copy(h.iv[:], iv)
	return nil
}

// update moves the direction to its next traffic secret (RFC 8446 §7.2).
func (h *half) update() error {
	newHash, _, err := suiteHash(h.suite)
	if err != nil {
		return err
	}
	next, err := expandLabel(newHash, h.secret, "traffic upd", newHash().Size())
	if err != nil {
		return err
	}
	return h.set(h.suite, next)
}

// expandLabel is HKDF-Expand-Label (RFC 8446 §7.1) with an empty context.
func expandLabel(newHash func() hash.Hash, secret []byte, label string, n int) ([]byte, error) {
	info := make([]byte, 0, 4+6+len(label))
	info = binary.BigEndian.AppendUint16(info, uint16(n))
	info = append(info, byte(6+len(label)))
	info = append(info, "tls13 "...)
	info = append(info, label...)
	info = append(info, 0) // no context
	return hkdf.Expand(newHash, secret, string(info), n)
}

// next returns the nonce of the direction's next record and counts it.
func (h *half) next() []byte {
	h.nonce = h.iv
	var seq [8]byte
	binary.BigEndian.PutUint64(seq[:], h.seq)
	for i, b := range seq {
		h.nonce[4+i] ^= b
	}
	h.seq++
	return h.nonce[:]
}

// Seal appends to dst the records that carry p as application data, at most MaxPlaintext
// bytes each (preceded by a key update when the peer asked for one).
func (s *State) Seal(dst, p []byte) []byte {
	if s.updateOut.Load() {
		dst = s.seal(dst, []byte{msgKeyUpdate, 0, 0, 1, 0}, typeHandshake) // update_not_requested
		s.updateOut.Store(false)
		if err := s.out.update(); err != nil {
			panic(err) // the suite was valid when the state was built
		}
	}
	for len(p) > 0 {
		n := min(len(p), MaxPlaintext)
		dst = s.seal(dst, p[:n], typeApplication)
		p = p[n:]
	}
	return dst
}

// SealClose appends a close_notify alert.
func (s *State) SealClose(dst []byte) []byte {
	return s.seal(dst, []byte{1, 0}, typeAlert) // warning, close_notify
}

// seal appends one record of content type typ carrying p, encrypted in place.
func (s *State) seal(dst, p []byte, typ byte) []byte {
	start := len(dst)
	n := len(p) + 1 + tagLen
	dst = slices.Grow(dst, HeaderLen+n)
	dst = append(dst, typeApplication, 3, 3, byte(n>>8), byte(n))
	dst = append(dst, p...)
	dst = append(dst, typ)
	body := dst[start+HeaderLen:]
	sealed := s.out.aead.Seal(body[:0], s.out.next(), body, dst[start:start+HeaderLen])
	return dst[:start+HeaderLen+len(sealed)]
}

// RecordLen is the length, header included, of the record src begins with; 0 if src
// does not yet hold its header.
func RecordLen(src []byte) int {
	if len(src) < HeaderLen {
		return 0
	}
	return HeaderLen + int(binary.BigEndian.Uint16(src[3:5]))
}

// Open decrypts the whole records at the start of src, appending the application data they
// carry to dst, and returns dst and how many bytes of src it used (a partial record is left
// for the next call). After the peer's close_notify it returns ErrClosed; a record that
// cannot be accepted is a *RecordError. What was decrypted before either is in dst.
func (s *State) Open(dst, src []byte) ([]byte, int, error) {
	used := 0
	for {
		rest := src[used:]
		if len(rest) < HeaderLen {
			return dst, used, nil
		}
		if rest[0] != typeApplication || rest[1] != 3 || rest[2] != 3 {
			return dst, used, recordErr("unexpected record type %d (version %d.%d) after the handshake", rest[0], rest[1], rest[2])
		}
		n := RecordLen(rest)
		if n-HeaderLen > maxCiphertext {
			return dst, used, recordErr("record of %d bytes exceeds the limit of %d", n-HeaderLen, maxCiphertext)
		}
		if n-HeaderLen < tagLen+1 {
			return dst, used, recordErr("record of %d bytes is too short", n-HeaderLen)
		}
		if len(rest) < n {
			return dst, used, nil
		}
		at := len(dst)
		opened, err := s.in.aead.Open(dst, s.in.next(), rest[HeaderLen:n], rest[:HeaderLen])
		if err != nil {
			return dst, used, recordErr("record authentication failed: %v", err)
		}
		dst = opened
		used += n
		// The content type is the last byte that is not padding (RFC 8446 §5.4).
		end := len(dst)
		for end > at && dst[end-1] == 0 {
			end--
		}
		if end == at {
			return dst[:at], used, recordErr("record has no content type")
		}
		typ := dst[end-1]
		body := dst[at : end-1]
		if len(body) > MaxPlaintext {
			return dst[:at], used, recordErr("record plaintext of %d bytes exceeds %d", len(body), MaxPlaintext)
		}
		switch typ {
		case typeApplication:
			dst = dst[:end-1]
			continue
		case typeAlert:
			dst = dst[:at]
			if len(body) == 2 && body[1] == 0 {
				return dst, used, ErrClosed
			}
			if len(body) == 2 {
				return dst, used, recordErr("the peer sent alert %d", body[1])
			}
			return dst, used, recordErr("malformed alert")
		case typeHandshake:
			err := s.postHandshake(body)
			dst = dst[:at]
			if err != nil {
				return dst, used, err
			}
		default:
			return dst[:at], used, recordErr("unexpected inner content type %d", typ)
		}
	}
}

// postHandshake handles the handshake messages of one record: session tickets are
// dropped (this side never resumes), a key update moves the peer's direction to its next
// secret and, when asked, ours at the next Seal. A message split across records is
// refused: no peer of ours sends one.
func (s *State) postHandshake(b []byte) error {
	for len(b) > 0 {
		if len(b) < 4 {
			return recordErr("truncated post-handshake message")
		}
		n := int(b[1])<<16 | int(b[2])<<8 | int(b[3])
		if len(b) < 4+n {
			return recordErr("post-handshake message split across records")
		}
		typ, body := b[0], b[4:4+n]
		b = b[4+n:]
		switch typ {
		case msgNewSessionTicket:
		case msgKeyUpdate:
			if n != 1 || body[0] > 1 {
				return recordErr("malformed key update")
			}
			if len(b) > 0 {
				return recordErr("data after a key update in the same record")
			}
			if err := s.in.update(); err != nil {
				return err
			}
			if body[0] == 1 {
				s.updateOut.Store(true)
			}
		default:
			return recordErr("unexpected post-handshake message %d", typ)
		}
	}
	return nil
}

// Overhead is what one record adds to its plaintext on the wire.
const Overhead = HeaderLen + 1 + tagLen
