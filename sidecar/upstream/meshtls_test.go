package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"k8s.io/utils/clock"
)

// clientOnly is the client side of mesh TLS with no certificate: enough to start a
// handshake, which the endpoints below break.
type clientOnly struct{}

func (clientOnly) ClientConfig(protos []string) *tls.Config {
	return &tls.Config{NextProtos: protos, InsecureSkipVerify: true} //nolint:gosec // the peer never completes a handshake
}

// A TLS handshake to a meshed endpoint that fails (the peer speaks plaintext, or hangs up)
// is a connect failure, as in Envoy: the connection was never made, so connect-failure
// retries take another host, and the caller is answered 503, not 504.
func TestMeshTLSHandshakeFailureIsAConnectFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.77:15006")
	if err != nil {
		t.Fatalf("listening on the sidecar inbound port of a loopback address: %v", err)
	}
	defer ln.Close()
	go func() {
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if i%2 == 0 {
				_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n")) // plaintext where TLS was asked
			}
			c.Close()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := NewManager(ctx, clock.RealClock{})
	m.SetMeshTLS(clientOnly{})
	c := &Cluster{mgr: m}
	h := &Host{Address: ln.Addr().String()}
	if !h.Meshed() {
		t.Fatalf("%s is not seen as a sidecar's inbound port", h.Address)
	}
	for i := 0; i < 2; i++ {
		conn, err := net.Dial("tcp", h.Address)
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.originateTLS(ctx, conn, h, 500*time.Millisecond, time.Time{})
		var op *net.OpError
		if got != nil || !errors.As(err, &op) || op.Op != "dial" {
			t.Fatalf("handshake %d: conn %v, err %v (%T); want a dial error", i, got, err, err)
		}
	}
}
