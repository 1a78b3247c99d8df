package capture

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/utils/clock"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/httpproxy"
	"github.com/weftmesh/weft/sidecar/identity/identitytest"
	"github.com/weftmesh/weft/sidecar/upstream"
	"github.com/weftmesh/weft/testenv"
)

// A pod that serves only TCP (no app port; docs/mtls.md, "TCP"): its inbound listener has
// no HTTP chain (internal/snapshot's services-tcp-only-inbound golden), so the capture
// plane binds it itself (bind.go).

// startTCPOnlyCallee runs the sidecar of a TCP-only pod from the translated golden, with
// mutual TLS from id (nil: none), its listeners at listen (nil: the translated addresses),
// the inbound listener's connection cap set to maxConns (0: as translated).
func startTCPOnlyCallee(t testing.TB, id InboundTLS, listen map[string]string, maxConns int) *callee {
	t.Helper()
	cfg, err := config.Build(loadTranslated(t, "mesh-services-tcp-only-inbound"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, cl := range cfg.CaptureListeners {
		if cl.Bind && maxConns > 0 {
			cl.Limits.MaxConnections = maxConns
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	ups := upstream.NewManager(ctx, clock.RealClock{})
	r := &ref{}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	capt := New(Options{Upstreams: ups, HTTP: r, Logger: quiet, InboundTLS: id, ListenAddress: listen})
	opts := httpproxy.Options{Upstreams: ups, Diverter: capt, Logger: quiet, ListenAddress: listen}
	if id != nil {
		opts.InboundTLS = id
	}
	px := httpproxy.New(opts)
	r.p = px
	if err := capt.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	if err := px.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		capt.Close()
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = px.Shutdown(sctx)
		cancel()
	})
	return &callee{&sidecar{px: px, capt: capt}}
}

// The TCP-only inbound listener is bound by the capture plane (no HTTP listener of that
// name), closes a connection sent to its own address (nothing serves :15006 there) and
// counts it, whatever the mode; a repeated config keeps its socket, a config without it
// closes it, and Close stops accepting.
func TestTCPOnlyInboundListenerBoundByCapture(t *testing.T) {
	ca, err := identitytest.New(tcpCalleeID)
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"none", contract.MTLSPermissive, contract.MTLSStrict} {
		t.Run(mode, func(t *testing.T) {
			var id InboundTLS
			if mode != "none" {
				id = idManager(t, ca, mode)
			}
			cl := startTCPOnlyCallee(t, id, map[string]string{contract.OutboundListenerName: "127.0.0.1:0", contract.InboundListenerName: "127.0.0.1:0"}, 0)
			if cl.px.Listener(contract.InboundListenerName) != nil {
				t.Fatal("the HTTP plane bound an inbound listener for a pod with no HTTP app")
			}
			a := cl.capt.Addr(contract.InboundListenerName)
			if a == nil {
				t.Fatal("the capture plane bound no inbound listener")
			}
			for i := range 3 {
				c, err := net.DialTimeout("tcp", a.String(), 2*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				// RESP, an HTTP request, a TLS record: nothing is answered.
				_, _ = c.Write([][]byte{[]byte("*1\r\n$4\r\nPING\r\n"), []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), {0x16, 3, 1, 0, 0}}[i])
				if n, err := c.Read(make([]byte, 64)); n != 0 || err == nil {
					t.Errorf("a direct connection to the TCP-only inbound listener got %d bytes, %v; want it closed", n, err)
				}
				c.Close()
			}
			eventually(t, func() bool { return counter(stats(cl.sidecar), "weft_capture_inbound_direct_refused_total") == 3 },
				"the three direct connections were not counted:\n"+grep(stats(cl.sidecar), "weft_capture_inbound"))

			cfg, err := config.Build(loadTranslated(t, "mesh-services-tcp-only-inbound"), nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := cl.capt.Apply(cfg); err != nil {
				t.Fatal(err)
			}
			if got := cl.capt.Addr(contract.InboundListenerName); got == nil || got.String() != a.String() {
				t.Errorf("the same config moved the listener: %v, was %v", got, a)
			}
			without, err := config.Build(loadTranslated(t, "mesh-services"), nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := cl.capt.Apply(without); err != nil {
				t.Fatal(err)
			}
			if cl.capt.Addr(contract.InboundListenerName) != nil {
				t.Error("a config without the inbound listener left it bound")
			}
			if c, err := net.DialTimeout("tcp", a.String(), time.Second); err == nil {
				c.Close()
				t.Error("the listener's old address still accepts")
			}
			if err := cl.capt.Apply(cfg); err != nil {
				t.Fatal(err)
			}
			b := cl.capt.Addr(contract.InboundListenerName)
			if b == nil {
				t.Fatal("the listener was not bound again")
			}
			cl.capt.Close()
			if c, err := net.DialTimeout("tcp", b.String(), time.Second); err == nil {
				c.Close()
				t.Error("the listener accepts after Close")
			}
			if err := cl.capt.Apply(cfg); err != nil || cl.capt.Addr(contract.InboundListenerName) != nil {
				t.Errorf("Apply after Close bound the listener again (%v)", err)
			}
		})
	}
}

// A config the capture plane cannot bind (the address is taken) is reported, and bound
// at the next Apply once the address is free.
func TestTCPOnlyInboundListenerBindFailure(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Build(loadTranslated(t, "mesh-services-tcp-only-inbound"), nil)
	if err != nil {
		t.Fatal(err)
	}
	c := New(Options{Upstreams: upstream.NewManager(t.Context(), clock.RealClock{}), HTTP: &ref{},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), ListenAddress: map[string]string{contract.InboundListenerName: taken.Addr().String()}})
	t.Cleanup(c.Close)
	if err := c.Apply(cfg); err == nil || !strings.Contains(err.Error(), contract.InboundListenerName) {
		t.Errorf("binding a taken address: %v, want an error naming the listener", err)
	}
	taken.Close()
	if err := c.Apply(cfg); err != nil || c.Addr(contract.InboundListenerName) == nil {
		t.Errorf("the next Apply did not bind the freed address: %v", err)
	}
}

// TestTCPOnlyCalleeNetns: redis-cli through a caller sidecar reaches redis-server behind
// the strict sidecar of a pod with NO app port, over mutual TLS only; a plaintext caller is
// refused; a direct connection to :15006 is closed and counted; the same pod's permissive
// sidecar (a second one, on 15007 for port 7379) passes a plaintext caller through. Real
// iptables in two network namespaces, as TestTCPMTLSNetns.
func TestTCPOnlyCalleeNetns(t *testing.T) {
	if os.Getuid() != 0 {
		testenv.Missing(t, "needs root for ip netns and iptables")
	}
	for _, tool := range []string{"ip", "iptables", "redis-server", "redis-cli"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Missing(t, tool+" not installed")
		}
	}
	id := strconv.Itoa(os.Getpid())
	cns, sns := "tcponly-c-"+id, "tcponly-s-"+id
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	for _, ns := range []string{cns, sns} {
		run("ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		run("ip", "-n", ns, "link", "set", "lo", "up")
	}
	vc, vs := "tcponlyc"+id, "tcponlys"+id
	if len(vc) > 15 {
		vc, vs = vc[:15], vs[:15]
	}
	run("ip", "link", "add", vc, "type", "veth", "peer", "name", vs)
	run("ip", "link", "set", vc, "netns", cns)
	run("ip", "link", "set", vs, "netns", sns)
	run("ip", "-n", cns, "addr", "add", tcpMTLSCallerIP+"/24", "dev", vc)
	run("ip", "-n", sns, "addr", "add", tcpMTLSCalleeIP+"/24", "dev", vs)
	run("ip", "-n", cns, "link", "set", vc, "up")
	run("ip", "-n", sns, "link", "set", vs, "up")
	run("ip", "-n", cns, "addr", "add", redisIP.String()+"/32", "dev", "lo")
	run("ip", "netns", "exec", cns, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "10.96.0.0/16", "-j", "REDIRECT", "--to-ports", "15001")
	run("ip", "netns", "exec", sns, "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-i", vs, "--dport", "7379", "-j", "REDIRECT", "--to-ports", "15007")
	run("ip", "netns", "exec", sns, "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-i", vs, "-j", "REDIRECT", "--to-ports", "15006")

	sock := filepath.Join(t.TempDir(), "ca.sock")
	serveCA(t, sock)
	child := func(role string) *exec.Cmd {
		ns := cns
		if role == "callee" {
			ns = sns
		}
		cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^TestTCPOnlyCalleeNetnsChild$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), tcpMTLSChildEnv+"="+role, tcpMTLSCAEnv+"="+sock)
		return cmd
	}
	runPodPair(t, child, "TCPONLY-READY", "--- PASS: TestTCPOnlyCalleeNetnsChild")
}

// TestTCPOnlyCalleeNetnsChild is one pod's side of TestTCPOnlyCalleeNetns.
func TestTCPOnlyCalleeNetnsChild(t *testing.T) {
	switch os.Getenv(tcpMTLSChildEnv) {
	case "callee":
		tcpOnlyCallee(t)
	case "caller":
		tcpOnlyCaller(t)
	default:
		t.Skip("run by TestTCPOnlyCalleeNetns inside its network namespaces")
	}
}

func tcpOnlyCaller(t *testing.T) {
	id := remoteIdentity(t, "web", "")
	s := startSidecar(t, mesh{redis: tcpMTLSCalleeIP + ":6379", meshTLS: id, listenAddr: "127.0.0.1:15001", bindExact: true}, false, 0)
	rcli := func(host, port string, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "redis-cli", append([]string{"-h", host, "-p", port}, args...)...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	// Through the caller's sidecar (the redis Service's ClusterIP): mutual TLS to the
	// TCP-only pod, terminated by its capture plane, then redis-server on 127.0.0.1.
	for _, c := range [][2]string{{"PING", "PONG"}, {"SET weft-tcponly-marker behind-a-tcp-only-sidecar", "OK"}, {"GET weft-tcponly-marker", "behind-a-tcp-only-sidecar"}} {
		if got, err := rcli(redisIP.String(), "6379", strings.Fields(c[0])...); err != nil || got != c[1] {
			t.Errorf("redis-cli %s: %v %q, want %q", c[0], err, got, c[1])
		}
	}
	// No sidecar on this connection (the pod IP is outside 10.96.0.0/16): plaintext to
	// the strict pod, refused.
	if got, err := rcli(tcpMTLSCalleeIP, "6379", "PING"); err == nil && got == "PONG" {
		t.Error("plaintext redis-cli to the strict TCP-only pod got PONG")
	}
	// The permissive sidecar passes plaintext through to the app on 127.0.0.1:7379.
	if got, err := rcli(tcpMTLSCalleeIP, "7379", "PING"); err != nil || got != "PONG" {
		t.Errorf("plaintext redis-cli to the permissive TCP-only sidecar: %v %q, want PONG", err, got)
	}
	// The permissive sidecar's listener holds 2 connections: a third is closed at once
	// while the two still work, and once one ends a new one is served.
	ping := func(c net.Conn) (string, error) {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte("PING\r\n")); err != nil {
			return "", err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(line), err
	}
	var held []net.Conn
	for range 2 {
		// The redis-cli connections above may still count against the cap for a moment
		// after they closed (the sidecar sees the close a little later): retry a reset.
		var c net.Conn
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			var err error
			if c, err = net.DialTimeout("tcp", tcpMTLSCalleeIP+":7379", 5*time.Second); err != nil {
				t.Fatal(err)
			}
			got, err := ping(c)
			if got == "+PONG" {
				break
			}
			c.Close()
			if time.Now().After(deadline) {
				t.Fatalf("connection %d under the cap: %q %v", len(held)+1, got, err)
			}
		}
		defer c.Close()
		held = append(held, c)
	}
	if c, err := net.DialTimeout("tcp", tcpMTLSCalleeIP+":7379", 5*time.Second); err == nil {
		if got, err := ping(c); got == "+PONG" || err == nil {
			t.Errorf("a third connection over the cap of 2: %q %v, want it closed", got, err)
		}
		c.Close()
	}
	for i, c := range held {
		if got, err := ping(c); got != "+PONG" {
			t.Errorf("held connection %d after the refused one: %q %v", i+1, got, err)
		}
	}
	held[0].Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", tcpMTLSCalleeIP+":7379", 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := ping(c)
		c.Close()
		if got == "+PONG" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no connection served after one of the two held ones closed")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The inbound listener's own port: nothing serves it on a pod without an HTTP app.
	c, err := net.DialTimeout("tcp", tcpMTLSCalleeIP+":15006", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	_, _ = c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	if n, err := c.Read(make([]byte, 64)); n != 0 || err == nil {
		t.Errorf("a direct connection to :15006 got %d bytes, %v; want it closed", n, err)
	}
	c.Close()
	if st := stats(s); counter(st, `weft_tcp_mtls_connections_total{cluster="outbound|6379||redis.default.svc.cluster.local"}`) < 3 {
		t.Errorf("caller's mutual TLS connections:\n%s", grep(st, "mtls"))
	}
}

func tcpOnlyCallee(t *testing.T) {
	for _, port := range []string{"6379", "7379"} {
		rs := exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
		if err := rs.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = rs.Process.Kill(); _ = rs.Wait() })
		waitDial(t, "127.0.0.1:"+port)
	}
	strict := startTCPOnlyCallee(t, remoteIdentity(t, "redis", contract.MTLSStrict), nil, 0)
	// The permissive one holds at most 2 connections (tcpOnlyCaller opens a third).
	permissive := startTCPOnlyCallee(t, remoteIdentity(t, "redis", contract.MTLSPermissive),
		map[string]string{contract.InboundListenerName: "0.0.0.0:15007", contract.OutboundListenerName: "127.0.0.1:15011"}, 2)
	if strict.px.Listener(contract.InboundListenerName) != nil {
		t.Fatal("the HTTP plane bound the inbound listener of a TCP-only pod")
	}
	link := recordLink(t, tcpMTLSCalleeIP, 6379)
	fmt.Println("TCPONLY-READY")
	done := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("the parent never finished")
	}
	seen := link()
	tlsRecords, marker := 0, 0
	for _, p := range seen {
		if len(p) >= 3 && (p[0] == 0x16 || p[0] == 0x17) && p[1] == 3 {
			tlsRecords++
		}
		if bytes.Contains(p, []byte("weft-tcponly-marker")) {
			marker++
		}
	}
	t.Logf("link payloads to %s:6379: %d; TLS records at the start of a payload: %d; plaintext marker seen %d times",
		tcpMTLSCalleeIP, len(seen), tlsRecords, marker)
	if tlsRecords == 0 || marker != 0 {
		t.Error("want TLS records to 6379 and no plaintext marker on the link")
	}
	st := stats(strict.sidecar)
	if counter(st, "weft_capture_inbound_tls_handshakes_total") < 3 || counter(st, "weft_capture_inbound_plaintext_refused_total") < 1 ||
		counter(st, "weft_capture_inbound_direct_refused_total") < 1 {
		t.Errorf("strict sidecar's counters:\n%s", grep(st, "weft_capture_inbound"))
	}
	if pst := stats(permissive.sidecar); counter(pst, "weft_capture_inbound_plaintext_total") < 1 || counter(pst, "weft_capture_connections_overflow_total") < 1 {
		t.Errorf("permissive sidecar's counters:\n%s\n%s", grep(pst, "weft_capture_inbound"), grep(pst, "overflow"))
	}
}

// recordLink records the TCP payloads sent to ip:port on this namespace's links (an
// AF_PACKET socket) until the returned function is called, which returns them (at most
// 10 000).
func recordLink(t *testing.T, ip string, port uint16) func() [][]byte {
	t.Helper()
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, int(htons16(unix.ETH_P_IP)))
	if err != nil {
		t.Fatal(err)
	}
	want := net.ParseIP(ip).To4()
	var mu sync.Mutex
	var seen [][]byte
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		buf := make([]byte, 65536)
		tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil || n < 40 {
				continue
			}
			p := buf[:n]
			ihl := int(p[0]&0x0f) * 4
			if p[9] != unix.IPPROTO_TCP || len(p) < ihl+20 || !net.IP(p[16:20]).Equal(want) {
				continue
			}
			tcp := p[ihl:]
			off := int(tcp[12]>>4) * 4
			if total := min(int(binary.BigEndian.Uint16(p[2:4])), len(p)); ihl+off < total && binary.BigEndian.Uint16(tcp[2:4]) == port {
				mu.Lock()
				if len(seen) < 10000 {
					seen = append(seen, bytes.Clone(p[ihl+off:total]))
				}
				mu.Unlock()
			}
		}
	}()
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(stop); <-stopped; unix.Close(fd) }) })
	return func() [][]byte {
		time.Sleep(150 * time.Millisecond)
		once.Do(func() { close(stop); <-stopped; unix.Close(fd) })
		mu.Lock()
		defer mu.Unlock()
		return seen
	}
}
