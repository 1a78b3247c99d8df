package connio

import (
	"io"
	"net"
	"testing"
)

// TestPrefixConnReplaysThenReads: the replayed bytes come first, in reads as small as the
// caller's buffer, then the connection's own; CloseWrite reaches a TCP connection's.
func TestPrefixConnReplaysThenReads(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = c.Write([]byte("world"))
		_, _ = io.Copy(io.Discard, c) // until the half-close
		_, _ = c.Write([]byte("!"))
		c.Close()
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	pc := &PrefixConn{Conn: raw, Pre: []byte("hello ")}
	one := make([]byte, 4)
	n, _ := pc.Read(one)
	if string(one[:n]) != "hell" {
		t.Fatalf("first read %q, want the prefix's first 4 bytes", one[:n])
	}
	if err := pc.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(pc)
	if err != nil {
		t.Fatal(err)
	}
	if string(rest) != "o world!" {
		t.Fatalf("then %q, want %q (the rest of the prefix, the connection's bytes, and the answer to the half-close)", rest, "o world!")
	}
}
