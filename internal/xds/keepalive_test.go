package xds

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc/keepalive"
)

// A sidecar that vanished without closing its connection (a frozen or partitioned pod) is
// found by the server's keepalive pings and dropped, so its stream stops counting in status.
// The peer here speaks just enough HTTP/2 to connect and then never answers a ping.
func TestKeepaliveDropsAPeerThatStopsAnswering(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(NewCache(), Options{Listener: ln, Keepalive: keepalive.ServerParameters{Time: 200 * time.Millisecond, Timeout: 200 * time.Millisecond}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = s.Start(ctx) }()
	<-s.Ready()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	// Read (so the server's writes never block) but never answer PINGs or SETTINGS.
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var sawPing bool
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			if !sawPing {
				t.Fatalf("connection ended (%v) before the server pinged", err)
			}
			var ne net.Error
			if errAsTimeout(err, &ne) {
				t.Fatal("the server kept a peer that never answered its pings for 30s")
			}
			return // closed by the server: the peer was dropped
		}
		if _, ok := f.(*http2.PingFrame); ok {
			sawPing = true
		}
	}
}

func errAsTimeout(err error, ne *net.Error) bool {
	var e net.Error
	ok := errors.As(err, &e)
	if ok {
		*ne = e
	}
	return ok && e.Timeout()
}
