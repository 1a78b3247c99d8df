package capture

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/identity"
	"github.com/weftmesh/weft/sidecar/identity/identitytest"
	"github.com/weftmesh/weft/testenv"
)

// Mutual TLS for captured TCP with real iptables capture on both ends: two network
// namespaces joined by a veth pair, a "pod" each. The caller pod's nat OUTPUT rule sends
// its connections to the Services' ClusterIPs (10.96.0.0/16) to its sidecar on 15001; the
// callee pod's nat PREROUTING rule sends every TCP connection arriving on its link to its
// sidecar on 15006 (Istio's rules, cut down). The callee runs redis-server on
// 127.0.0.1:6379 and a TCP echo on its app port 127.0.0.1:8080, behind a strict sidecar.
// Each sidecar runs in a child test process inside its namespace; certificates come from
// one CA in the parent, over a unix socket.

const (
	tcpMTLSChildEnv = "WEFT_TCPMTLS_NETNS_CHILD" // "caller" or "callee"
	tcpMTLSCAEnv    = "WEFT_TCPMTLS_CA"          // the CA's unix socket
	tcpMTLSCallerIP = "10.251.0.1"
	tcpMTLSCalleeIP = "10.251.0.2"
)

func TestTCPMTLSNetns(t *testing.T) {
	if os.Getuid() != 0 {
		testenv.Missing(t, "needs root for ip netns and iptables")
	}
	for _, tool := range []string{"ip", "iptables", "redis-server", "redis-cli"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Missing(t, tool+" not installed")
		}
	}
	id := strconv.Itoa(os.Getpid())
	cns, sns := "tcpmtls-c-"+id, "tcpmtls-s-"+id
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
	vc, vs := "tcpmtlsc"+id, "tcpmtlss"+id // at most 15 characters (IFNAMSIZ)
	run("ip", "link", "add", vc, "type", "veth", "peer", "name", vs)
	run("ip", "link", "set", vc, "netns", cns)
	run("ip", "link", "set", vs, "netns", sns)
	run("ip", "-n", cns, "addr", "add", tcpMTLSCallerIP+"/24", "dev", vc)
	run("ip", "-n", sns, "addr", "add", tcpMTLSCalleeIP+"/24", "dev", vs)
	run("ip", "-n", cns, "link", "set", vc, "up")
	run("ip", "-n", sns, "link", "set", vs, "up")
	for _, a := range []string{redisIP.String() + "/32", appIP.String() + "/32"} {
		run("ip", "-n", cns, "addr", "add", a, "dev", "lo")
	}
	run("ip", "netns", "exec", cns, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "10.96.0.0/16", "-j", "REDIRECT", "--to-ports", "15001")
	run("ip", "netns", "exec", sns, "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-i", vs, "-j", "REDIRECT", "--to-ports", "15006")

	sock := filepath.Join(t.TempDir(), "ca.sock")
	serveCA(t, sock)

	child := func(role string) *exec.Cmd {
		ns := cns
		if role == "callee" {
			ns = sns
		}
		cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^TestTCPMTLSNetnsChild$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), tcpMTLSChildEnv+"="+role, tcpMTLSCAEnv+"="+sock)
		return cmd
	}
	runPodPair(t, child, "TCPMTLS-READY", "--- PASS: TestTCPMTLSNetnsChild")
}

// runPodPair starts the callee pod's child test, waits for its ready line, runs the caller
// pod's child test to its end, then closes the callee's stdin (it checks what its link
// carried and ends) and requires both to have passed.
func runPodPair(t *testing.T, child func(role string) *exec.Cmd, ready, pass string) {
	t.Helper()
	callee := child("callee")
	stdin, err := callee.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	pr, pw := io.Pipe()
	callee.Stdout, callee.Stderr = pw, pw
	if err := callee.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var calleeOut bytes.Buffer
	readyCh, scanned := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		once := sync.Once{}
		for sc.Scan() {
			mu.Lock()
			calleeOut.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if strings.Contains(sc.Text(), ready) {
				once.Do(func() { close(readyCh) })
			}
		}
	}()
	calleeText := func() string { mu.Lock(); defer mu.Unlock(); return calleeOut.String() }
	select {
	case <-readyCh:
	case <-time.After(30 * time.Second):
		_ = callee.Process.Kill()
		t.Fatalf("the callee pod never got ready:\n%s", calleeText())
	}
	out, err := child("caller").CombinedOutput()
	t.Logf("caller:\n%s", out)
	if err != nil || !strings.Contains(string(out), pass) {
		t.Errorf("caller pod: %v", err)
	}
	stdin.Close()
	werr := callee.Wait()
	pw.Close()
	<-scanned
	t.Logf("callee:\n%s", calleeText())
	if werr != nil || !strings.Contains(calleeText(), pass) {
		t.Errorf("callee pod: %v", werr)
	}
}

// serveCA signs CSRs for the children: POST /sign?sa=<service account>&ttl=<seconds>.
func serveCA(t *testing.T, path string) {
	t.Helper()
	ca, err := identitytest.New(tcpCallerID)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		csr, _ := io.ReadAll(io.LimitReader(r.Body, contract.MaxCSRBytes))
		mu.Lock()
		defer mu.Unlock()
		ca.SetIdentity(contract.SPIFFEID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: r.URL.Query().Get("sa")})
		res, err := ca.Sign(r.Context(), csr, time.Hour)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_ = json.NewEncoder(w).Encode(res)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
}

// remoteIdentity runs an identity manager whose certificates the parent's CA signs.
func remoteIdentity(t *testing.T, sa, mode string) *identity.Manager {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", os.Getenv(tcpMTLSCAEnv))
		}}}
	signer := identity.SignerFunc(func(ctx context.Context, csrPEM []byte, _ time.Duration) (*contract.SignResponse, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://ca/sign?sa="+sa, bytes.NewReader(csrPEM))
		if err != nil {
			return nil, err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			return nil, fmt.Errorf("CA: %s: %s", resp.Status, b)
		}
		var res contract.SignResponse
		return &res, json.NewDecoder(resp.Body).Decode(&res)
	})
	m := identity.New(identity.Options{Signer: signer, TTL: time.Hour, Mode: mode, RetryMin: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	eventually(t, func() bool { return m.Current() != nil }, "no workload certificate from the parent's CA")
	return m
}

// TestTCPMTLSNetnsChild is one pod's side of TestTCPMTLSNetns.
func TestTCPMTLSNetnsChild(t *testing.T) {
	switch os.Getenv(tcpMTLSChildEnv) {
	case "callee":
		netnsCallee(t)
	case "caller":
		netnsCaller(t)
	default:
		t.Skip("run by TestTCPMTLSNetns inside its network namespaces")
	}
}

func netnsCaller(t *testing.T) {
	id := remoteIdentity(t, "web", "")
	s := startSidecar(t, mesh{redis: tcpMTLSCalleeIP + ":6379", app7000TCP: tcpMTLSCalleeIP + ":8080", meshTLS: id,
		listenAddr: "127.0.0.1:15001", bindExact: true}, false, 0)
	rcli := func(host string, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "redis-cli", append([]string{"-h", host, "-p", "6379"}, args...)...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	// redis-cli to the redis Service's ClusterIP: captured, mutual TLS to the callee pod.
	for _, c := range [][2]string{{"PING", "PONG"}, {"SET weft-netns-marker behind-strict-sidecar", "OK"}, {"GET weft-netns-marker", "behind-strict-sidecar"}} {
		if got, err := rcli(redisIP.String(), strings.Fields(c[0])...); err != nil || got != c[1] {
			t.Errorf("redis-cli %s: %v %q, want %q", c[0], err, got, c[1])
		}
	}
	// A TCP chain to the callee's app port: weft-tcp terminated by its inbound listener
	// (the app port stays there), then the app's echo on 127.0.0.1:8080.
	c, err := net.DialTimeout("tcp", appIP.String()+":7000", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	msg := "weft-netns-marker to the app port\n"
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	if got, err := bufio.NewReader(c).ReadString('\n'); got != msg {
		t.Errorf("TCP to the app port over weft-tcp: %q %v", got, err)
	}
	c.Close()
	// A caller without a sidecar (this process's own connection is not captured: the pod
	// IP is outside 10.96.0.0/16): plaintext, refused by the strict callee.
	if got, err := rcli(tcpMTLSCalleeIP, "PING"); err == nil && got == "PONG" {
		t.Error("plaintext redis-cli to the strict callee pod got PONG")
	}
	st := stats(s)
	if counter(st, `weft_tcp_mtls_connections_total{cluster="outbound|6379||redis.default.svc.cluster.local"}`) < 3 ||
		counter(st, `weft_tcp_mtls_connections_total{cluster="app-tcp"}`) != 1 {
		t.Errorf("caller's mutual TLS connections:\n%s", grep(st, "mtls"))
	}
}

func netnsCallee(t *testing.T) {
	rs := exec.Command("redis-server", "--port", "6379", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := rs.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rs.Process.Kill(); _ = rs.Wait() })
	waitDial(t, "127.0.0.1:6379")
	ln, err := net.Listen("tcp", "127.0.0.1:8080") // the app port: a TCP echo
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	cl := startCalleeAt(t, remoteIdentity(t, "redis", contract.MTLSStrict), nil)

	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, int(htons16(unix.ETH_P_IP)))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	type payload struct {
		port uint16
		b    []byte
	}
	var mu sync.Mutex
	var seen []payload
	stop := make(chan struct{})
	go func() {
		buf := make([]byte, 65536)
		for {
			select {
			case <-stop:
				return
			default:
			}
			tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
			_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil || n < 40 {
				continue
			}
			p := buf[:n]
			ihl := int(p[0]&0x0f) * 4
			if p[9] != unix.IPPROTO_TCP || len(p) < ihl+20 || !net.IP(p[16:20]).Equal(net.ParseIP(tcpMTLSCalleeIP).To4()) {
				continue
			}
			tcp := p[ihl:]
			port := binary.BigEndian.Uint16(tcp[2:4])
			off := int(tcp[12]>>4) * 4
			if total := min(int(binary.BigEndian.Uint16(p[2:4])), len(p)); ihl+off < total && (port == 6379 || port == 8080) {
				mu.Lock()
				if len(seen) < 10000 {
					seen = append(seen, payload{port, bytes.Clone(p[ihl+off : total])})
				}
				mu.Unlock()
			}
		}
	}()
	fmt.Println("TCPMTLS-READY")
	done := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("the parent never finished")
	}
	close(stop)
	time.Sleep(150 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	tlsRecords, marker := map[uint16]int{}, 0
	for _, p := range seen {
		if len(p.b) >= 3 && (p.b[0] == 0x16 || p.b[0] == 0x17) && p.b[1] == 3 {
			tlsRecords[p.port]++
		}
		if bytes.Contains(p.b, []byte("weft-netns-marker")) {
			marker++
		}
	}
	t.Logf("link payloads to %s: %d; TLS records at the start of a payload: 6379 %d, 8080 %d; plaintext marker seen %d times",
		tcpMTLSCalleeIP, len(seen), tlsRecords[6379], tlsRecords[8080], marker)
	if tlsRecords[6379] == 0 || tlsRecords[8080] == 0 || marker != 0 {
		t.Error("want TLS records to 6379 and 8080 and no plaintext marker on the link")
	}
	st := stats(cl.sidecar)
	var b strings.Builder
	cl.px.WriteMTLSStats(&b)
	if counter(st, "weft_capture_inbound_tls_handshakes_total") < 3 || counter(st, "weft_capture_inbound_plaintext_refused_total") < 1 ||
		counter(b.String(), "weft_inbound_tls_handshakes_total") < 1 {
		t.Errorf("callee counters:\n%s\n%s", grep(st, "weft_capture_inbound"), b.String())
	}
}

func htons16(v uint16) uint16 { return v<<8 | v>>8 }
