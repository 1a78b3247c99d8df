package identity_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/identity"
	"github.com/weftmesh/weft/sidecar/identity/identitytest"
)

var (
	webID   = contract.SPIFFEID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "web"}
	cartID  = contract.SPIFFEID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "cart"}
	otherTD = contract.SPIFFEID{TrustDomain: "evil.example", Namespace: "shop", ServiceAccount: "web"}
)

func testCA(t *testing.T, id contract.SPIFFEID) *identitytest.CA {
	t.Helper()
	c, err := identitytest.New(id)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// started runs a Manager over signer until the test ends and waits for its first SVID.
func started(t *testing.T, signer identity.Signer, ttl time.Duration) *identity.Manager {
	t.Helper()
	m := identity.New(identity.Options{Signer: signer, TTL: ttl, RetryMin: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.After(5 * time.Second)
	for m.Current() == nil {
		select {
		case <-m.Renewed():
		case <-deadline:
			_, note := m.Status()
			t.Fatalf("no SVID after 5s: %s", note)
		}
	}
	return m
}

func TestManagerObtainsAndRenewsAtHalfLife(t *testing.T) {
	ca := testCA(t, webID)
	m := started(t, ca, time.Second)
	first := m.Current()
	if first.ID != webID {
		t.Errorf("ID = %s, want %s", first.ID, webID)
	}
	if ready, note := m.Status(); !ready || note != "" {
		t.Errorf("Status = %v %q, want ready without a note", ready, note)
	}
	if _, ttl := ca.Signed(); ttl != time.Second {
		t.Errorf("asked for %v, want the configured 1s", ttl)
	}
	// Half of 1 s: a new certificate (and a new key) within a second, well before expiry.
	select {
	case <-m.Renewed():
	case <-time.After(2 * time.Second):
		t.Fatal("no renewal within 2s of a 1s certificate")
	}
	second := m.Current()
	if second.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) == 0 {
		t.Error("renewal published the same certificate")
	}
	if second.Cert.PrivateKey == first.Cert.PrivateKey {
		t.Error("renewal reused the key")
	}
	if !time.Now().Before(first.Leaf.NotAfter) {
		t.Error("renewal came after the old certificate expired")
	}
}

// A CA that stops answering: the sidecar keeps its certificate (and stays ready) until it
// expires, saying why in Status; then it is not ready. Back, it recovers by itself.
func TestManagerKeepsLastCertificateWhenRenewalFails(t *testing.T) {
	ca := testCA(t, webID)
	m := started(t, ca, 2*time.Second)
	held := m.Current()
	ca.Fail(errors.New("control plane unreachable"))
	deadline := time.Now().Add(5 * time.Second)
	for {
		ready, note := m.Status()
		if ready && strings.Contains(note, "renewal failing") && strings.Contains(note, "control plane unreachable") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Status = %v %q, want ready with a renewal-failing note", ready, note)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if m.Current() != held {
		t.Error("a failed renewal replaced the certificate")
	}
	time.Sleep(time.Until(held.Leaf.NotAfter) + 50*time.Millisecond)
	if ready, note := m.Status(); ready || !strings.Contains(note, "expired") {
		t.Errorf("after expiry Status = %v %q, want not ready, expired", ready, note)
	}
	ca.Fail(nil)
	select {
	case <-m.Renewed():
	case <-time.After(2 * time.Second):
		t.Fatal("no recovery within 2s once the CA answers")
	}
	if ready, note := m.Status(); !ready || note != "" {
		t.Errorf("after recovery Status = %v %q", ready, note)
	}
}

// A CA answer that is not for our key, or does not chain to its bundle, is refused.
func TestManagerRefusesBrokenAnswers(t *testing.T) {
	ca := testCA(t, webID)
	other := testCA(t, webID)
	var otherChain string
	_ = started(t, identity.SignerFunc(func(ctx context.Context, csr []byte, ttl time.Duration) (*contract.SignResponse, error) {
		r, err := other.Sign(ctx, csr, ttl)
		otherChain = r.CertChain
		return r, err
	}), 0)
	for name, s := range map[string]identity.SignerFunc{
		"another key's certificate": func(ctx context.Context, csr []byte, ttl time.Duration) (*contract.SignResponse, error) {
			r, err := ca.Sign(ctx, csr, ttl)
			r.CertChain = otherChain
			return r, err
		},
		"a bundle it does not chain to": func(ctx context.Context, csr []byte, ttl time.Duration) (*contract.SignResponse, error) {
			r, err := ca.Sign(ctx, csr, ttl)
			o, _ := other.Sign(ctx, csr, ttl)
			r.TrustBundle = o.TrustBundle
			return r, err
		},
		"an unknown mode": func(ctx context.Context, csr []byte, ttl time.Duration) (*contract.SignResponse, error) {
			r, err := ca.Sign(ctx, csr, ttl)
			r.MTLSMode = "off"
			return r, err
		},
	} {
		m := identity.New(identity.Options{Signer: s, RetryMin: time.Hour})
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		m.Run(ctx)
		cancel()
		if ready, note := m.Status(); m.Current() != nil || ready || note == "" {
			t.Errorf("%s: Current=%v ready=%v note=%q, want refused", name, m.Current() != nil, ready, note)
		}
	}
}

// handshake runs a TLS handshake between a client and a server config over loopback and
// returns the server's view of the peer and both errors.
func handshake(t *testing.T, client, server *tls.Config) (cs tls.ConnectionState, cerr, serr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			serr = err
			return
		}
		defer c.Close()
		tc := tls.Server(c, server)
		serr = tc.Handshake()
		if serr == nil {
			cs = tc.ConnectionState()
			_, _ = tc.Write([]byte("x")) // TLS 1.3: the client sees a refused certificate on its first read
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := tls.Client(c, client)
	cerr = tc.Handshake()
	if cerr == nil {
		_ = tc.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, cerr = tc.Read(make([]byte, 1))
	}
	<-done
	return cs, cerr, serr
}

func TestMutualTLSBetweenTwoManagers(t *testing.T) {
	ca := testCA(t, webID)
	web := started(t, ca, 0)
	ca.SetIdentity(cartID)
	cart := started(t, ca, 0)

	cs, cerr, serr := handshake(t, web.ClientConfig(nil), cart.ServerConfig())
	if cerr != nil || serr != nil {
		t.Fatalf("handshake: client %v, server %v", cerr, serr)
	}
	if id, ok := identity.PeerID(&cs); !ok || id != webID {
		t.Errorf("server sees peer %v %v, want %s", id, ok, webID)
	}
	if cs.NegotiatedProtocol != "h2" {
		t.Errorf("ALPN %q, want h2", cs.NegotiatedProtocol)
	}
	_, cerr, _ = handshake(t, web.ClientConfig([]string{"http/1.1"}), cart.ServerConfig())
	if cerr != nil {
		t.Errorf("http/1.1-only client: %v", cerr)
	}

	// A client whose certificate comes from another CA, one of another trust domain, and
	// one without a certificate are refused by the server.
	foreign := started(t, testCA(t, webID), 0)
	ca.SetIdentity(otherTD) // same CA, so only the trust domain check can refuse it
	evil := started(t, ca, 0)
	for name, cfg := range map[string]*tls.Config{
		"another CA":           foreign.ClientConfig(nil),
		"no client cert":       {InsecureSkipVerify: true, NextProtos: []string{"h2"}}, //nolint:gosec // the attacker
		"another trust domain": evil.ClientConfig(nil),
	} {
		if _, _, serr := handshake(t, cfg, cart.ServerConfig()); serr == nil {
			t.Errorf("%s: the server accepted the client", name)
		}
	}
	// And the client refuses a server of another CA.
	if _, cerr, _ := handshake(t, web.ClientConfig(nil), foreign.ServerConfig()); cerr == nil {
		t.Error("the client accepted a server certificate of another CA")
	}
}
