package capture

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/identity/identitytest"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// Mutual TLS on captured TCP when something goes wrong or is unusual: a connection cut mid
// transfer, a stalled or malformed handshake, idle connections, ALPN, server-first protocols.

// A connection cut mid-transfer on either side ends the other side's too.
func TestTCPMTLSCutMidTransfer(t *testing.T) {
	t.Run("app closes", func(t *testing.T) {
		// The callee's app reads a little, sends a little, and drops the connection.
		app := tcpServer(t, func(c net.Conn) {
			buf := make([]byte, 4096)
			_, _ = io.ReadFull(c, buf)
			_, _ = c.Write([]byte("partial"))
			_ = c.(*net.TCPConn).SetLinger(0)
			c.Close()
		})
		m := startTCPMesh(t, contract.MTLSStrict, app)
		c, err := net.Dial("tcp", m.callerFront)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go func() {
			chunk := make([]byte, 64<<10)
			for range 200 { // more than the app will read
				if _, err := c.Write(chunk); err != nil {
					return
				}
			}
		}()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(c)
		if isTimeout(err) {
			t.Fatal("the caller's connection stayed open after the app dropped its side")
		}
		if !strings.HasPrefix("partial", string(got)) {
			t.Errorf("got %q", got)
		}
	})
	t.Run("caller closes", func(t *testing.T) {
		ended := make(chan error, 1)
		app := tcpServer(t, func(c net.Conn) {
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err := io.Copy(io.Discard, c)
			ended <- err
		})
		m := startTCPMesh(t, contract.MTLSStrict, app)
		c, err := net.Dial("tcp", m.callerFront)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write(make([]byte, 256<<10))
		_ = c.(*net.TCPConn).SetLinger(0)
		c.Close() // a reset mid-stream
		select {
		case err := <-ended:
			if isTimeout(err) {
				t.Fatal("the app's connection stayed open after the caller reset its side")
			}
		case <-time.After(15 * time.Second):
			t.Fatal("the app's connection never ended")
		}
	})
}

// A handshake that stalls is bounded on both sides: a callee that accepts and never
// answers (the caller's sidecar closes its app's connection after the handshake budget),
// and a client that opens a TLS record and goes quiet (the callee closes it).
func TestTCPMTLSStalledHandshakeIsBounded(t *testing.T) {
	t.Run("callee silent", func(t *testing.T) {
		t.Parallel()
		stop := make(chan struct{})
		silent := tcpServer(t, func(net.Conn) { <-stop }) // accepts, never answers
		t.Cleanup(func() { close(stop) })
		ca, err := identitytest.New(tcpCallerID)
		if err != nil {
			t.Fatal(err)
		}
		s := startSidecar(t, mesh{redis: silent, meshTLS: idManager(t, ca, "")}, false, 0)
		c, err := net.Dial("tcp", s.front(t, redisIP.String()+":6379"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if d := expectClosed(t, c, upstreamHandshakeBudget+5*time.Second); d < upstreamHandshakeBudget-time.Second {
			t.Errorf("closed after %v, before the handshake budget (%v)", d, upstreamHandshakeBudget)
		}
	})
	t.Run("client silent", func(t *testing.T) {
		t.Parallel()
		ca, err := identitytest.New(tcpCalleeID)
		if err != nil {
			t.Fatal(err)
		}
		cl := startCallee(t, idManager(t, ca, contract.MTLSStrict))
		c, err := net.Dial("tcp", cl.front(t, echoServer(t)))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _ = c.Write([]byte{0x16, 3, 1, 0, 200}) // a handshake record header, then nothing
		if d := expectClosed(t, c, meshHandshakeBudget+5*time.Second); d < meshHandshakeBudget-time.Second {
			t.Errorf("closed after %v, before the handshake budget (%v)", d, meshHandshakeBudget)
		}
		eventually(t, func() bool { return counter(stats(cl.sidecar), "weft_capture_inbound_tls_handshake_errors_total") == 1 }, "stalled handshake not counted")
	})
}

// counter is the value of the sample named name (with its labels) in st, -1 when absent.
func counter(st, name string) int {
	for _, l := range strings.Split(st, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return -1
}

func eventually(t *testing.T, ok func() bool, msg string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !ok(); {
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestALPNOffers(t *testing.T) {
	var hello []byte
	srv, cli := net.Pipe()
	go func() {
		buf := make([]byte, 4096)
		n, _ := srv.Read(buf)
		hello = buf[:n]
		srv.Close()
	}()
	_ = tls.Client(cli, &tls.Config{ServerName: "x.example", NextProtos: []string{"http/1.1", upstream.ALPNMesh}, InsecureSkipVerify: true}).Handshake() //nolint:gosec // only the hello is read
	if got := alpnOffers(hello); strings.Join(got, ",") != "http/1.1,weft" {
		t.Errorf("alpnOffers: %q", got)
	}
	if got := serverName(hello); got != "x.example" {
		t.Errorf("serverName: %q", got)
	}
	// Truncated and garbage hellos offer nothing, without a panic.
	for i := range len(hello) {
		_ = alpnOffers(hello[:i])
	}
	if got := alpnOffers([]byte("GET / HTTP/1.1\r\n")); got != nil {
		t.Errorf("HTTP offers %q", got)
	}
}

// The caller's idle timeout holds over mutual TLS: a connection whose callee side keeps
// sending (TLS records the kernel counts on the socket under the TLS connection) stays,
// one with no byte either way is closed.
func TestTCPMTLSIdleTimeout(t *testing.T) {
	app := tcpServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if line == "tick\n" {
				for range 12 {
					time.Sleep(50 * time.Millisecond)
					if _, err := c.Write([]byte(".")); err != nil {
						return
					}
				}
				_, _ = c.Write([]byte("\n"))
				continue
			}
			_, _ = c.Write([]byte(line))
		}
	})
	m := startTCPMeshIdle(t, contract.MTLSStrict, app, 300*time.Millisecond)
	busy, err := net.Dial("tcp", m.callerFront)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, _ = busy.Write([]byte("tick\n")) // the caller then says nothing for 600 ms
	_ = busy.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := bufio.NewReader(busy).ReadString('\n'); err != nil || got != strings.Repeat(".", 12)+"\n" {
		t.Fatalf("a connection busy one way was cut: %q %v", got, err)
	}
	idle, err := net.Dial("tcp", m.callerFront)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	_, _ = idle.Write([]byte("hi\n"))
	_ = idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(idle)
	if got, _ := br.ReadString('\n'); got != "hi\n" {
		t.Fatalf("echo %q", got)
	}
	start := time.Now()
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("read a byte from an idle connection")
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("idle connection closed after %v, want about 300ms", el)
	}
	if n := counter(stats(m.caller), `weft_tcp_idle_timeouts_total{cluster="outbound|6379||redis.default.svc.cluster.local"}`); n < 1 {
		t.Errorf("idle timeouts counted: %d", n)
	}
}

// Forged and malformed first bytes: a permissive callee passes a fake TLS record (a
// header claiming more than a record may hold, then junk) through to the app byte for
// byte, since it is no sidecar's ClientHello; a strict one refuses it.
func TestTCPMTLSMalformedHello(t *testing.T) {
	junk := append([]byte{0x16, 0x03, 0x01, 0xff, 0xff, 0x01}, bytes.Repeat([]byte("junk"), 8<<10)...)
	p := startTCPMesh(t, contract.MTLSPermissive, "")
	if got := roundTrip(t, p.calleeFrontDst, junk); !bytes.Equal(got, junk) {
		t.Errorf("permissive: %d bytes back of %d", len(got), len(junk))
	}
	s := startTCPMesh(t, contract.MTLSStrict, "")
	c, err := net.Dial("tcp", s.calleeFrontDst)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write(junk)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if isTimeout(err) {
		t.Fatal("strict: still open after 5s")
	}
	if len(got) > 0 && (got[0] != 21 || len(got) > 7) { // at most one TLS alert record, then the close
		t.Errorf("strict: got %q, want the connection closed (a TLS alert at most)", got)
	}
	eventually(t, func() bool {
		return counter(stats(s.callee.sidecar), "weft_capture_inbound_tls_handshake_errors_total") == 1
	}, "strict: the junk handshake not counted")
}

// A sidecar's HTTP/1.1 over mutual TLS (ALPN http/1.1 plus the mark weft, as the HTTP
// upstream pool dials) to a captured non-app port of a permissive callee is terminated
// and reaches the app in plaintext; the same client without the mark would be taken for
// an app's own TLS and passed through.
func TestTCPMTLSPermissiveTerminatesMarkedHTTP(t *testing.T) {
	web := named(t, "metrics")
	m := startTCPMesh(t, contract.MTLSPermissive, web)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			cfg := m.callerID.ClientConfig([]string{"http/1.1", upstream.ALPNMesh})
			return tls.Dial("tcp", m.calleeFrontDst, cfg)
		}}}
	code, body := body(hc.Get("https://metrics.shop/"))
	if code != 200 || body != "metrics host=metrics.shop" {
		t.Errorf("HTTP over mesh TLS to a non-app port: %d %q", code, body)
	}
	if n := counter(stats(m.callee.sidecar), "weft_capture_inbound_tls_handshakes_total"); n != 1 {
		t.Errorf("handshakes: %d", n)
	}
}

// A server-first protocol (the server greets before the client says anything, as SMTP or
// MySQL): a meshed caller gets the greeting through strict and permissive callees (its
// sidecar opens with the ClientHello at once), and a plaintext caller of a permissive
// callee gets it after the sniff timeout at most, never a hang.
func TestTCPMTLSServerFirst(t *testing.T) {
	greeter := func(t *testing.T) string {
		return tcpServer(t, func(c net.Conn) {
			_, _ = c.Write([]byte("220 weft greeter\n"))
			_, _ = io.Copy(c, c)
		})
	}
	greeting := func(t *testing.T, addr string, within time.Duration) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(within))
		if got, err := bufio.NewReader(c).ReadString('\n'); got != "220 weft greeter\n" {
			t.Fatalf("greeting: %q %v", got, err)
		}
	}
	for _, mode := range []string{contract.MTLSStrict, contract.MTLSPermissive} {
		t.Run(mode, func(t *testing.T) {
			m := startTCPMesh(t, mode, greeter(t))
			greeting(t, m.callerFront, 5*time.Second)
			if mode == contract.MTLSPermissive {
				greeting(t, m.calleeFrontDst, contract.ProtocolSniffTimeout+3*time.Second)
			}
		})
	}
}
