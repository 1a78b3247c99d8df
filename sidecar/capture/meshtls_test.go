package capture

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/utils/clock"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/httpproxy"
	"github.com/weftmesh/weft/sidecar/identity"
	"github.com/weftmesh/weft/sidecar/identity/identitytest"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// Mutual TLS for captured TCP between two real sidecars (meshtls.go): the caller's
// capture plane takes the app's connection to the redis Service (a TCP chain whose
// endpoint is marked tlsMode: weft) and dials the endpoint with ALPN weft-tcp; a wire
// recorder sits between the sidecars; the callee's capture plane takes the connection as
// captured inbound to podIP:<app's port> and pipes the decrypted bytes to the app on
// 127.0.0.1:<that port>.

var (
	tcpCallerID = contract.SPIFFEID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "web"}
	tcpCalleeID = contract.SPIFFEID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "redis"}
	tcpPodIP    = netip.MustParseAddr("10.0.0.5")
)

// idManager runs an identity manager with certificates from ca until the test ends.
func idManager(t testing.TB, ca *identitytest.CA, mode string) *identity.Manager {
	t.Helper()
	m := identity.New(identity.Options{Signer: ca, TTL: time.Hour, Mode: mode, RetryMin: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(5 * time.Second)
	for m.Current() == nil {
		if time.Now().After(deadline) {
			t.Fatal("no workload certificate")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return m
}

// callee is a sidecar's inbound side (the translated inbound listener: app port 8080,
// every other port to the inbound passthrough) with mutual TLS from id.
type callee struct {
	*sidecar
}

func startCallee(t testing.TB, id InboundTLS) *callee {
	t.Helper()
	return startCalleeAt(t, id, map[string]string{contract.OutboundListenerName: "127.0.0.1:0", contract.InboundListenerName: "127.0.0.1:0"})
}

// startCalleeAt is startCallee with the listeners at listen (nil: the translated
// addresses, 0.0.0.0:15006 for the inbound listener).
func startCalleeAt(t testing.TB, id InboundTLS, listen map[string]string) *callee {
	t.Helper()
	cfg, err := config.Build(loadTranslated(t, "mesh-services-inbound"), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ups := upstream.NewManager(ctx, clock.RealClock{})
	r := &ref{}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	capt := New(Options{Upstreams: ups, HTTP: r, Logger: quiet, InboundTLS: id})
	px := httpproxy.New(httpproxy.Options{Upstreams: ups, Diverter: capt, Logger: quiet, ListenAddress: listen, InboundTLS: id})
	r.p = px
	capt.Apply(cfg)
	if err := px.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = px.Shutdown(sctx)
		cancel()
	})
	return &callee{&sidecar{px: px, capt: capt}}
}

// front stands in for the callee pod's iptables: a connection to the returned address is
// captured inbound as if it was sent to podIP:<appAddr's port>.
func (c *callee) front(t testing.TB, appAddr string) string {
	t.Helper()
	_, p, _ := net.SplitHostPort(appAddr)
	port, _ := strconv.Atoi(p)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			c.capt.ServeConn(contract.InboundListenerName, nc, netip.AddrPortFrom(tcpPodIP, uint16(port)))
		}
	}()
	return ln.Addr().String()
}

// wire relays connections to target and keeps every byte that passed, both ways, up to
// wireMax per direction.
type wire struct {
	addr string
	mu   sync.Mutex
	up   []byte // caller → callee, all connections in turn
	down []byte
}

const wireMax = 64 << 20

func recordWire(t testing.TB, target string) *wire {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	w := &wire{addr: ln.Addr().String()}
	go func() {
		for {
			a, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", target)
			if err != nil {
				a.Close()
				continue
			}
			var dirs sync.WaitGroup
			half := func(dst, src net.Conn, rec *[]byte) {
				defer dirs.Done()
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					if n > 0 {
						w.mu.Lock()
						if len(*rec)+n <= wireMax {
							*rec = append(*rec, buf[:n]...)
						}
						w.mu.Unlock()
						if _, werr := dst.Write(buf[:n]); werr != nil {
							break
						}
					}
					if err != nil {
						break
					}
				}
				_ = dst.(*net.TCPConn).CloseWrite()
			}
			dirs.Add(2)
			go half(b, a, &w.up)
			go half(a, b, &w.down)
			go func() { dirs.Wait(); a.Close(); b.Close() }()
		}
	}()
	return w
}

// tlsRecordsOnly checks that b is a sequence of whole TLS records (types 20-23, version
// 3.x) and returns how many application-data records it holds.
func tlsRecordsOnly(t *testing.T, what string, b []byte) int {
	t.Helper()
	apps := 0
	for off := 0; off < len(b); {
		if len(b)-off < 5 {
			t.Fatalf("%s: %d stray bytes at %d are no TLS record", what, len(b)-off, off)
		}
		typ, major := b[off], b[off+1]
		n := int(binary.BigEndian.Uint16(b[off+3:]))
		if typ < 20 || typ > 23 || major != 3 || n > 16384+256 {
			t.Fatalf("%s: bytes at %d are no TLS record (type %d, version %d.x, length %d)", what, off, typ, major, n)
		}
		if typ == 23 {
			apps++
		}
		off += 5 + n
		if off > len(b) {
			t.Fatalf("%s: the last record is cut short", what)
		}
	}
	return apps
}

// echoServer echoes every connection's bytes and shuts its write side at the caller's EOF.
func echoServer(t testing.TB) string {
	return tcpServer(t, func(c net.Conn) {
		_, _ = io.Copy(c, c)
		_ = c.(*net.TCPConn).CloseWrite()
	})
}

type tcpMesh struct {
	ca             *identitytest.CA
	callerID       *identity.Manager
	calleeID       *identity.Manager
	caller         *sidecar
	callee         *callee
	wire           *wire
	callerFront    string // the caller app dials this: captured to the redis Service
	app            string // the callee's app, 127.0.0.1:port
	calleeFrontDst string
}

// startTCPMesh runs caller and callee sidecars in front of the callee app at app (an echo
// server when empty); mode is the callee's peer authentication.
func startTCPMesh(t *testing.T, mode, app string) *tcpMesh {
	t.Helper()
	return startTCPMeshIdle(t, mode, app, 0)
}

// startTCPMeshIdle is startTCPMesh with the caller's TCP chain's idle timeout (0: 1 h).
func startTCPMeshIdle(t *testing.T, mode, app string, idle time.Duration) *tcpMesh {
	t.Helper()
	ca, err := identitytest.New(tcpCallerID)
	if err != nil {
		t.Fatal(err)
	}
	m := &tcpMesh{ca: ca}
	m.callerID = idManager(t, ca, "")
	ca.SetIdentity(tcpCalleeID)
	m.calleeID = idManager(t, ca, mode)
	if app == "" {
		app = echoServer(t)
	}
	m.app = app
	m.callee = startCallee(t, m.calleeID)
	m.calleeFrontDst = m.callee.front(t, app)
	m.wire = recordWire(t, m.calleeFrontDst)
	m.caller = startSidecar(t, mesh{redis: m.wire.addr, meshTLS: m.callerID, idle: idle}, false, 0)
	m.callerFront = m.caller.front(t, redisIP.String()+":6379")
	return m
}

// roundTrip sends payload through addr, half-closes, and returns what came back.
func roundTrip(t *testing.T, addr string, payload []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		_ = c.(*net.TCPConn).CloseWrite()
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading the echo: %v (after %d bytes)", err, len(got))
	}
	if err := <-werr; err != nil {
		t.Fatalf("writing: %v", err)
	}
	return got
}

func TestTCPMTLSBytesIntactAndTLSOnTheWire(t *testing.T) {
	for _, mode := range []string{contract.MTLSStrict, contract.MTLSPermissive} {
		t.Run(mode, func(t *testing.T) {
			m := startTCPMesh(t, mode, "")
			payload := make([]byte, 3<<20)
			_, _ = rand.Read(payload)
			marker := []byte("weft-plaintext-marker-0123456789")
			copy(payload[1000:], marker)
			got := roundTrip(t, m.callerFront, payload)
			if !bytes.Equal(got, payload) {
				t.Fatalf("echo: %d bytes back, want %d identical", len(got), len(payload))
			}
			// A small exchange on a second connection: the idle path, a write answered.
			if got := roundTrip(t, m.callerFront, []byte("PING\r\n")); string(got) != "PING\r\n" {
				t.Fatalf("second connection: %q", got)
			}
			time.Sleep(50 * time.Millisecond)
			m.wire.mu.Lock()
			up, down := m.wire.up, m.wire.down
			m.wire.mu.Unlock()
			if n := tlsRecordsOnly(t, "caller → callee", up); n < len(payload)/16384 {
				t.Errorf("caller → callee: %d application-data records for %d bytes", n, len(payload))
			}
			tlsRecordsOnly(t, "callee → caller", down)
			if bytes.Contains(up, marker) || bytes.Contains(down, marker) {
				t.Error("the plaintext marker is visible on the wire between the sidecars")
			}
			if len(up) < len(payload) {
				t.Errorf("only %d bytes on the wire for %d of payload", len(up), len(payload))
			}
			cst, est := stats(m.caller), stats(m.callee.sidecar)
			for _, want := range []string{`weft_tcp_mtls_connections_total{cluster="outbound|6379||redis.default.svc.cluster.local"} 2`,
				`weft_tcp_mtls_handshake_failures_total{cluster="outbound|6379||redis.default.svc.cluster.local"} 0`} {
				if !strings.Contains(cst, want) {
					t.Errorf("caller stats lack %q:\n%s", want, grep(cst, "mtls"))
				}
			}
			for _, want := range []string{"weft_capture_inbound_tls_handshakes_total 2", "weft_capture_inbound_plaintext_total 0",
				`weft_tcp_bytes_sent_total{cluster="InboundPassthroughCluster"} ` + strconv.Itoa(len(payload)+6)} {
				if !strings.Contains(est, want) {
					t.Errorf("callee stats lack %q:\n%s", want, grep(est, "weft_capture_inbound")+"\n"+grep(est, "InboundPassthrough"))
				}
			}
		})
	}
}

// expectClosed reads c until it ends, and fails if that takes longer than within or if
// any byte comes back.
func expectClosed(t *testing.T, c net.Conn, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(within))
	b, err := io.ReadAll(c)
	if isTimeout(err) {
		t.Fatalf("still open after %v", within)
	}
	if len(b) > 0 {
		t.Fatalf("got %q from a connection that should be refused", b)
	}
	return time.Since(start)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// A strict callee closes a plaintext caller's connection on a TCP port (nothing reaches
// the app); a permissive one passes it through.
func TestTCPMTLSStrictRefusesPlaintext(t *testing.T) {
	var mu sync.Mutex
	reached := 0
	app := tcpServer(t, func(c net.Conn) {
		mu.Lock()
		reached++
		mu.Unlock()
		_, _ = io.Copy(c, c)
		_ = c.(*net.TCPConn).CloseWrite()
	})
	m := startTCPMesh(t, contract.MTLSStrict, app)
	c, err := net.Dial("tcp", m.calleeFrontDst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte("*1\r\n$4\r\nPING\r\n"))
	expectClosed(t, c, 5*time.Second)
	if st := stats(m.callee.sidecar); !strings.Contains(st, "weft_capture_inbound_plaintext_refused_total 1") {
		t.Errorf("refusal not counted:\n%s", grep(st, "weft_capture_inbound"))
	}
	mu.Lock()
	if reached != 0 {
		t.Errorf("the app got %d connections from a refused plaintext caller", reached)
	}
	mu.Unlock()

	// Permissive: the same plaintext passes, as do sidecars' TLS connections.
	p := startTCPMesh(t, contract.MTLSPermissive, "")
	if got := roundTrip(t, p.calleeFrontDst, []byte("plain")); string(got) != "plain" {
		t.Errorf("permissive plaintext: %q", got)
	}
	if got := roundTrip(t, p.callerFront, []byte("meshed")); string(got) != "meshed" {
		t.Errorf("permissive meshed: %q", got)
	}
	st := stats(p.callee.sidecar)
	for _, want := range []string{"weft_capture_inbound_plaintext_total 1", "weft_capture_inbound_tls_handshakes_total 1"} {
		if !strings.Contains(st, want) {
			t.Errorf("permissive callee stats lack %q:\n%s", want, grep(st, "weft_capture_inbound"))
		}
	}
}

// An app's own TLS (no Weft ALPN in its ClientHello) to a permissive callee passes
// through to the app untouched: the sidecar terminates only sidecars' TLS.
func TestTCPMTLSPermissivePassesAppTLS(t *testing.T) {
	ca, err := identitytest.New(tcpCalleeID)
	if err != nil {
		t.Fatal(err)
	}
	srvID := idManager(t, ca, "") // any certificate will do for the app's own server
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	cert := srvID.Current().Cert
	tl := tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{"h2", "http/1.1"}})
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64)
				n, _ := c.Read(buf)
				_, _ = c.Write(append([]byte("app-tls:"), buf[:n]...))
			}()
		}
	}()
	calleeID := idManager(t, ca, contract.MTLSPermissive)
	cl := startCallee(t, calleeID)
	front := cl.front(t, ln.Addr().String())
	c, err := tls.Dial("tcp", front, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}}) //nolint:gosec // the app's own TLS, not the mesh's
	if err != nil {
		t.Fatalf("app TLS through a permissive callee: %v", err)
	}
	defer c.Close()
	_, _ = c.Write([]byte("hi"))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, _ := c.Read(buf)
	if got := string(buf[:n]); got != "app-tls:hi" {
		t.Errorf("app TLS: %q", got)
	}
	if st := stats(cl.sidecar); !strings.Contains(st, "weft_capture_inbound_tls_handshakes_total 0") {
		t.Errorf("the sidecar terminated an app's TLS:\n%s", grep(st, "weft_capture_inbound"))
	}
}

// A caller whose certificate comes from another CA is refused by the callee, and the
// caller's sidecar closes its app's connection and counts the failed handshake.
func TestTCPMTLSRefusesForeignCA(t *testing.T) {
	m := startTCPMesh(t, contract.MTLSStrict, "")
	other, err := identitytest.New(tcpCallerID)
	if err != nil {
		t.Fatal(err)
	}
	foreign := idManager(t, other, "")
	rogue := startSidecar(t, mesh{redis: m.calleeFrontDst, meshTLS: foreign}, false, 0)
	c, err := net.Dial("tcp", rogue.front(t, redisIP.String()+":6379"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte("secret"))
	expectClosed(t, c, 15*time.Second)
	// Each of the caller's three connect attempts fails its handshake.
	if st := stats(rogue); counter(st, `weft_tcp_mtls_handshake_failures_total{cluster="outbound|6379||redis.default.svc.cluster.local"}`) == 0 ||
		counter(st, `weft_tcp_mtls_connections_total{cluster="outbound|6379||redis.default.svc.cluster.local"}`) != 0 {
		t.Errorf("caller did not count the failed handshakes:\n%s", grep(st, "mtls"))
	}
	eventually(t, func() bool {
		return counter(stats(m.callee.sidecar), "weft_capture_inbound_tls_handshake_errors_total") > 0
	}, "callee did not count the refusal")
	if st := stats(m.callee.sidecar); counter(st, "weft_capture_inbound_tls_handshakes_total") != 0 {
		t.Errorf("callee completed a handshake with a foreign certificate:\n%s", grep(st, "weft_capture_inbound"))
	}
}

// upstreamHandshakeBudget is upstream's handshakeTimeout (the caller's handshake budget
// with the test clusters' 2 s connect timeout).
const upstreamHandshakeBudget = 10 * time.Second
