package capture

import (
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/testenv"
)

// The network namespace test: an iptables REDIRECT (as the init container installs it)
// sends the app's outbound TCP to the sidecar, which reads SO_ORIGINAL_DST. The app runs
// as uid 1000 (the rule captures that uid only, so the sidecar's own connections, as root,
// are not captured again — the role uid 1337 plays in a pod). The sidecar and the
// Services' endpoints run in a child test process inside the namespace.

const (
	netnsChildEnv = "WEFT_CAPTURE_NETNS_CHILD"
	appUID        = "1000"
)

func TestCapturedInNetns(t *testing.T) {
	if os.Getuid() != 0 {
		testenv.Missing(t, "needs root for ip netns and iptables")
	}
	for _, tool := range []string{"ip", "iptables", "setpriv", "curl", "redis-server", "redis-cli"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Missing(t, tool+" not installed")
		}
	}
	ns := "capture-" + strconv.Itoa(os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	run("ip", "-n", ns, "link", "set", "lo", "up")
	for _, a := range []string{"10.96.0.10/32", "10.96.0.30/32", "10.200.0.5/32", "10.200.0.6/32", "10.200.0.7/32"} {
		run("ip", "-n", ns, "addr", "add", a, "dev", "lo")
	}
	run("ip", "netns", "exec", ns, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp",
		"-m", "owner", "--uid-owner", appUID, "-j", "REDIRECT", "--to-ports", "15001")
	// Any process's connection to 10.200.0.7:6999 goes to port 16999 (the inbound case:
	// a dual-stack listener holding an IPv4 connection as a v4-mapped socket).
	run("ip", "netns", "exec", ns, "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp",
		"-d", "10.200.0.7", "--dport", "6999", "-j", "REDIRECT", "--to-ports", "16999")
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^TestNetnsChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), netnsChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	t.Logf("child:\n%s", out)
	if err != nil || !strings.Contains(string(out), "--- PASS: TestNetnsChild") {
		t.Fatalf("child test in netns %s failed: %v", ns, err)
	}
}

// TestNetnsChild is the namespace's side of TestCapturedInNetns.
func TestNetnsChild(t *testing.T) {
	if os.Getenv(netnsChildEnv) == "" {
		t.Skip("run by TestCapturedInNetns inside its network namespace")
	}
	// SO_ORIGINAL_DST of an IPv4 connection accepted by a dual-stack ([::]) listener, as
	// the inbound listener on *:15006 is: the socket is IPv6 (v4-mapped), the NAT entry IPv4.
	dual, err := net.Listen("tcp", ":16999")
	if err != nil {
		t.Fatal(err)
	}
	defer dual.Close()
	dc, err := net.Dial("tcp4", "10.200.0.7:6999")
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	ac, err := dual.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	rc, err := ac.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var dst netip.AddrPort
	var ok bool
	_ = rc.Control(func(fd uintptr) { dst, ok = OriginalDst(int(fd)) })
	if !ok || dst != netip.MustParseAddrPort("10.200.0.7:6999") {
		t.Errorf("OriginalDst of a v4-mapped socket (local %s): %v %v, want 10.200.0.7:6999", ac.LocalAddr(), dst, ok)
	}

	port := freePort(t)
	rs := exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := rs.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rs.Process.Kill(); _ = rs.Wait() })
	waitDial(t, "127.0.0.1:"+port)

	// An HTTPS server outside the mesh (no Service), and a plain HTTP one.
	tlsLn, err := net.Listen("tcp", "10.200.0.5:8443")
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("secure hello sni=" + r.TLS.ServerName))
	}))
	ts.Listener = tlsLn
	ts.TLS = &tls.Config{}
	ts.StartTLS()
	t.Cleanup(ts.Close)
	extLn, err := net.Listen("tcp", "10.200.0.6:8080")
	if err != nil {
		t.Fatal(err)
	}
	ext := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("external host=" + r.Host)) })}
	go func() { _ = ext.Serve(extLn) }()
	t.Cleanup(func() { ext.Close() })

	m := mesh{reviews9080: named(t, "p9080"), reviews9090: named(t, "p9090"), redis: "127.0.0.1:" + port,
		listenAddr: "127.0.0.1:15001", bindExact: true}
	s := startSidecar(t, m, false, 0)

	app := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("setpriv", append([]string{"--reuid=" + appUID, "--regid=" + appUID, "--clear-groups"}, args...)...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH")} // no proxy settings at all
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("app %v: %v\n%s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	curl := func(args ...string) string {
		return app(append([]string{"curl", "-sS", "--max-time", "5"}, args...)...)
	}
	// An app with no proxy settings calls a ClusterIP and port: captured, routed by the
	// original destination's port.
	if got := curl("http://10.96.0.10:9080/"); got != "p9080 host=10.96.0.10:9080" {
		t.Errorf("captured 9080: %q", got)
	}
	if got := curl("http://10.96.0.10:9090/"); got != "p9090 host=10.96.0.10:9090" {
		t.Errorf("captured 9090: %q", got)
	}
	// HTTP_PROXY callers still work: their connection to 15001 is redirected to itself,
	// and the original destination is the listener's own address.
	if got := curl("-x", "http://127.0.0.1:15001", "http://reviews:9090/"); got != "p9090 host=reviews:9090" {
		t.Errorf("explicit proxy 9090: %q", got)
	}
	// redis-cli through the TCP chain of the redis Service's ClusterIP.
	rcli := func(args ...string) string {
		return app(append([]string{"redis-cli", "-h", "10.96.0.30", "-p", "6379"}, args...)...)
	}
	if got := rcli("PING"); got != "PONG" {
		t.Errorf("redis PING: %q", got)
	}
	if got := rcli("SET", "mesh", "captured"); got != "OK" {
		t.Errorf("redis SET: %q", got)
	}
	if got := rcli("GET", "mesh"); got != "captured" {
		t.Errorf("redis GET: %q", got)
	}
	// TLS originated by the app to a host outside the mesh passes through untouched; its
	// SNI is counted.
	if got := curl("-k", "--resolve", "secure.example:8443:10.200.0.5", "https://secure.example:8443/"); got != "secure hello sni=secure.example" {
		t.Errorf("TLS passthrough: %q", got)
	}
	// Plain HTTP to an unknown destination and port passes through.
	if got := curl("http://10.200.0.6:8080/x"); got != "external host=10.200.0.6:8080" {
		t.Errorf("passthrough: %q", got)
	}
	time.Sleep(50 * time.Millisecond) // the last connections' counters settle as they close
	st := stats(s)
	for _, want := range []string{
		`weft_tcp_tls_connections_total{cluster="PassthroughCluster",sni="secure.example"} 1`,
		`weft_tcp_connections_total{cluster="outbound|6379||redis.default.svc.cluster.local"} 3`,
		"weft_passthrough_connections_total 2",
	} {
		if !strings.Contains(st, want) {
			t.Errorf("stats lack %q:\n%s", want, grep(st, "weft_"))
		}
	}
}
