package tlsrec

import (
	"bytes"
	"crypto/tls"
	"testing"
)

// FuzzOpen feeds Open whatever a hostile peer could send after the handshake, prefixed or
// not by genuine records: it must never panic, never return more than the genuine records
// carry, and whatever it returns must be a prefix of their plaintext.
func FuzzOpen(f *testing.F) {
	f.Add([]byte{}, uint8(0))
	f.Add([]byte{typeApplication, 3, 3, 0, 17}, uint8(1))
	f.Add(bytes.Repeat([]byte{0xff}, 40), uint8(2))
	f.Fuzz(func(t *testing.T, junk []byte, genuine uint8) {
		cs, ss := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
		a, _ := NewState(tls.TLS_AES_128_GCM_SHA256, cs, ss, true)
		b, _ := NewState(tls.TLS_AES_128_GCM_SHA256, cs, ss, false)
		var want, wire []byte
		for i := range int(genuine % 4) {
			msg := bytes.Repeat([]byte{byte('a' + i)}, 10*i+1)
			want = append(want, msg...)
			wire = a.Seal(wire, msg)
		}
		wire = append(wire, junk...)
		got, used, _ := b.Open(nil, wire)
		if used > len(wire) || len(got) > len(want) || !bytes.Equal(got, want[:len(got)]) {
			t.Fatalf("Open returned %q (used %d of %d), genuine plaintext %q", got, used, len(wire), want)
		}
	})
}
