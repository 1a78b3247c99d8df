package tlsrec

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"testing"
	"time"
)

// testCert is a self-signed certificate both ends present (the tests skip verification:
// what is under test is the record layer after the handshake).
func testCert(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tlsrec"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// pair is a TCP connection on loopback, both ends.
func pair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-ch
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func configs(t *testing.T) (client, server *tls.Config) {
	cert := testCert(t)
	server = &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAnyClientCert, SessionTicketsDisabled: true}
	client = &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true} //nolint:gosec // record layer test
	return client, server
}

// takeServer runs a server handshake on raw through Boundary and takes it over.
func takeServer(t *testing.T, raw net.Conn, cfg *tls.Config) (*Conn, error) {
	var cp Capture
	b := &Boundary{Conn: raw}
	tc := tls.Server(b, cp.Config(cfg))
	if err := tc.Handshake(); err != nil {
		return nil, err
	}
	st, err := Take(tc, b, &cp, false)
	if err != nil {
		return nil, err
	}
	return NewConn(raw, st, nil, nil), nil
}

func takeClient(t *testing.T, raw net.Conn, cfg *tls.Config) (*Conn, error) {
	var cp Capture
	b := &Boundary{Conn: raw}
	tc := tls.Client(b, cp.Config(cfg))
	if err := tc.Handshake(); err != nil {
		return nil, err
	}
	st, err := Take(tc, b, &cp, true)
	if err != nil {
		return nil, err
	}
	return NewConn(raw, st, nil, nil), nil
}

// echo copies what c reads back to it until EOF, then closes its side.
func echo(c net.Conn) {
	_, _ = io.Copy(c, c)
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// roundTrip writes msg on c, half-closes, and reads the echo to EOF.
func roundTrip(t *testing.T, c net.Conn, msg []byte) {
	t.Helper()
	go func() {
		_, _ = c.Write(msg)
		_ = c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read the echo: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo of %d bytes came back as %d bytes (equal: %v)", len(msg), len(got), bytes.Equal(got, msg))
	}
}

// A taken-over end interoperates with plain crypto/tls in both roles, over records of
// every size up to several full records.
func TestTakenOverTalksToCryptoTLS(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 5000) // 80,000 bytes: five records and a bit
	for _, role := range []string{"server taken", "client taken"} {
		t.Run(role, func(t *testing.T) {
			ccfg, scfg := configs(t)
			craw, sraw := pair(t)
			var client net.Conn
			done := make(chan error, 1)
			if role == "server taken" {
				go func() {
					c, err := takeServer(t, sraw, scfg)
					if err == nil {
						echo(c)
					}
					done <- err
				}()
				tc := tls.Client(craw, ccfg)
				client = tc
			} else {
				go func() {
					tc := tls.Server(sraw, scfg)
					echo(tc)
					done <- nil
				}()
				c, err := takeClient(t, craw, ccfg)
				if err != nil {
					t.Fatal(err)
				}
				client = c
			}
			roundTrip(t, client, append([]byte("x"), big...))
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A client that writes its first request right behind its Finished: Boundary keeps
// crypto/tls from reading it, so Take succeeds and the request is read from the taken
// state. Without Boundary the server's buffer would have held it.
func TestBoundaryKeepsTheFirstRequestOutOfCryptoTLS(t *testing.T) {
	ccfg, scfg := configs(t)
	craw, sraw := pair(t)
	go func() {
		tc := tls.Client(craw, ccfg)
		if tc.Handshake() == nil {
			_, _ = tc.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
		}
	}()
	time.Sleep(50 * time.Millisecond) // the request is in the socket before the server reads
	c, err := takeServer(t, sraw, scfg)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "GET / HTTP/1.1\r\n\r\n" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
}

// A server that sends session tickets (crypto/tls's default): the taken client drops them.
func TestSessionTicketsAreIgnored(t *testing.T) {
	ccfg, scfg := configs(t)
	scfg.SessionTicketsDisabled = false
	craw, sraw := pair(t)
	go func() { echo(tls.Server(sraw, scfg)) }()
	c, err := takeClient(t, craw, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c, []byte("after the tickets"))
}

// TLS 1.2 is left to crypto/tls.
func TestTLS12IsNotTaken(t *testing.T) {
	ccfg, scfg := configs(t)
	ccfg.MaxVersion = tls.VersionTLS12
	craw, sraw := pair(t)
	go func() { _ = tls.Client(craw, ccfg).Handshake() }()
	_, err := takeServer(t, sraw, scfg)
	if !errors.Is(err, ErrNotTaken) {
		t.Fatalf("Take of a TLS 1.2 connection: %v, want ErrNotTaken", err)
	}
}

// A key update the taken end asks for is answered by crypto/tls with its own, which the
// taken end follows: data flows both ways under the new keys.
func TestKeyUpdateBothWays(t *testing.T) {
	ccfg, scfg := configs(t)
	craw, sraw := pair(t)
	go func() { echo(tls.Server(sraw, scfg)) }()
	c, err := takeClient(t, craw, ccfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("one")); err != nil {
		t.Fatal(err)
	}
	one := make([]byte, 3)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, one); err != nil || string(one) != "one" {
		t.Fatalf("echo of one: %q, %v", one, err)
	}
	// Ask for an update: our direction moves on at once, the peer's when it answers.
	c.wmu.Lock()
	c.pending = c.st.seal(nil, []byte{msgKeyUpdate, 0, 0, 1, 1}, typeHandshake)
	if err := c.st.out.update(); err != nil {
		t.Fatal(err)
	}
	c.wmu.Unlock()
	secretBefore := c.st.in.secret
	roundTrip(t, c, []byte("two"))
	if bytes.Equal(c.st.in.secret, secretBefore) {
		t.Fatal("the peer's key update was not followed")
	}
}

func statePair(t *testing.T, suite uint16) (a, b *State) {
	t.Helper()
	cs, ss := bytes.Repeat([]byte{1}, 48), bytes.Repeat([]byte{2}, 48)
	if suite != tls.TLS_AES_256_GCM_SHA384 {
		cs, ss = cs[:32], ss[:32]
	}
	a, err := NewState(suite, cs, ss, true)
	if err != nil {
		t.Fatal(err)
	}
	b, err = NewState(suite, cs, ss, false)
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}

// Every TLS 1.3 suite seals and opens, including a key update asked for mid-stream.
func TestSuitesRoundTrip(t *testing.T) {
	for _, suite := range []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384, tls.TLS_CHACHA20_POLY1305_SHA256} {
		a, b := statePair(t, suite)
		msg := bytes.Repeat([]byte("m"), 40000)
		wire := a.Seal(nil, msg)
		if n := len(wire) - len(msg); n != 3*Overhead {
			t.Fatalf("suite %#x: %d bytes of overhead for 3 records, want %d", suite, n, 3*Overhead)
		}
		got, used, err := b.Open(nil, wire)
		if err != nil || used != len(wire) || !bytes.Equal(got, msg) {
			t.Fatalf("suite %#x: open: %v, used %d of %d, equal %v", suite, err, used, len(wire), bytes.Equal(got, msg))
		}
		// b asks a for a key update; a answers before its next data.
		req := b.seal(nil, []byte{msgKeyUpdate, 0, 0, 1, 1}, typeHandshake)
		if err := b.out.update(); err != nil {
			t.Fatal(err)
		}
		if _, _, err := a.Open(nil, req); err != nil || !a.updateOut.Load() {
			t.Fatalf("suite %#x: key update request: %v, answer pending %v", suite, err, a.updateOut.Load())
		}
		wire = a.Seal(nil, []byte("after"))
		got, _, err = b.Open(nil, wire)
		if err != nil || string(got) != "after" {
			t.Fatalf("suite %#x: after the update: %q, %v", suite, got, err)
		}
	}
}

// What a hostile or broken peer sends after the handshake is refused with a RecordError,
// and nothing of the bad record is returned.
func TestOpenRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		wire func(a *State) []byte
	}{
		{"flipped ciphertext bit", func(a *State) []byte { w := a.Seal(nil, []byte("hello")); w[HeaderLen+1] ^= 1; return w }},
		{"wrong version", func(a *State) []byte { w := a.Seal(nil, []byte("hello")); w[2] = 4; return w }},
		{"plaintext record after the handshake", func(*State) []byte { return []byte{typeApplication - 1, 3, 3, 0, 1, 0} }},
		{"handshake record in clear", func(*State) []byte { return []byte{typeHandshake, 3, 3, 0, 1, 0} }},
		{"record over the size limit", func(*State) []byte { return []byte{typeApplication, 3, 3, 0x48, 0x01} }},
		{"record shorter than its tag", func(*State) []byte { return []byte{typeApplication, 3, 3, 0, 3, 1, 2, 3} }},
		{"only padding", func(a *State) []byte { return a.seal(nil, nil, 0) }},
		{"fatal alert", func(a *State) []byte { return a.seal(nil, []byte{2, 40}, typeAlert) }},
		{"unknown inner type", func(a *State) []byte { return a.seal(nil, []byte("x"), 99) }},
		{"unknown post-handshake message", func(a *State) []byte { return a.seal(nil, []byte{13, 0, 0, 0}, typeHandshake) }},
		{"split post-handshake message", func(a *State) []byte { return a.seal(nil, []byte{msgNewSessionTicket, 0, 0, 9, 1}, typeHandshake) }},
		{"plaintext over 16 KiB", func(a *State) []byte { return a.seal(nil, make([]byte, MaxPlaintext+1), typeApplication) }},
		{"replayed record", func(a *State) []byte { w := a.Seal(nil, []byte("once")); return append(w, w...) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := statePair(t, tls.TLS_AES_128_GCM_SHA256)
			wire := tc.wire(a)
			got, _, err := b.Open(nil, wire)
			var re *RecordError
			if !errors.As(err, &re) {
				t.Fatalf("Open: %v, want a RecordError", err)
			}
			if tc.name == "replayed record" {
				if string(got) != "once" {
					t.Fatalf("the first copy should open: %q", got)
				}
			} else if len(got) != 0 {
				t.Fatalf("Open returned %q from a refused record", got)
			}
		})
	}
}

// A partial record waits for the rest; close_notify ends the stream.
func TestOpenPartialAndClose(t *testing.T) {
	a, b := statePair(t, tls.TLS_AES_128_GCM_SHA256)
	wire := a.Seal(nil, []byte("hello"))
	wire = a.SealClose(wire)
	var got []byte
	used := 0
	for i := 1; i <= len(wire); i++ { // one byte more each time
		var n int
		var err error
		got, n, err = b.Open(got, wire[used:i])
		used += n
		if errors.Is(err, ErrClosed) {
			if i != len(wire) || string(got) != "hello" {
				t.Fatalf("closed at byte %d of %d with %q", i, len(wire), got)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Fatal("close_notify was not seen")
}

// A stream cut inside a record is an error, not a clean end.
func TestConnCutInsideARecord(t *testing.T) {
	a, b := statePair(t, tls.TLS_AES_128_GCM_SHA256)
	wire := a.Seal(nil, []byte("hello"))
	craw, sraw := pair(t)
	c := NewConn(sraw, b, nil, nil)
	go func() {
		_, _ = craw.Write(wire[:len(wire)-3])
		craw.Close()
	}()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("read of a cut record: %v, want io.ErrUnexpectedEOF", err)
	}
}

// Bytes read and sealed before a hand-over are carried by NewConn: the pending output goes
// out first, the buffered input is read first.
func TestConnCarriesWhatTheLoopHeld(t *testing.T) {
	a, b := statePair(t, tls.TLS_AES_128_GCM_SHA256)
	craw, sraw := pair(t)
	// b's side was holding half of a record from a, and had sealed "first " for a.
	in := a.Seal(nil, []byte("buffered"))
	held := b.Seal(nil, []byte("first "))
	c := NewConn(sraw, b, in[:7], held)
	go func() { _, _ = craw.Write(in[7:]) }()
	buf := make([]byte, 64)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "buffered" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	if _, err := c.Write([]byte("second")); err != nil {
		t.Fatal(err)
	}
	_ = craw.SetReadDeadline(time.Now().Add(5 * time.Second))
	var wire, got []byte
	p := make([]byte, 4096)
	for string(got) != "first second" {
		n, err := craw.Read(p)
		if err != nil {
			t.Fatalf("got %q: %v", got, err)
		}
		wire = append(wire, p[:n]...)
		var used int
		if got, used, err = a.Open(got, wire); err != nil {
			t.Fatalf("got %q: %v", got, err)
		}
		wire = wire[used:]
	}
}
