package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftmesh/weft/testenv"
	"github.com/weftmesh/weft/testenv/netns"
)

// The netns tests build a pod and a peer in two network namespaces joined by a veth pair,
// run weft-init in the pod's namespace, and dial from real processes with real UIDs:
//
//	pod  iptables-<pid>-pod   10.250.0.2/24 on the veth; default route via the peer
//	     listeners: 127.0.0.1:15001 and :15006 answer "outbound|inbound <SO_ORIGINAL_DST>",
//	                :15020 answers "metrics", :8080 answers "app"
//	peer iptables-<pid>-peer  10.250.0.1/24; 10.96.0.10 and 10.97.0.5 on lo
//	     listeners: :80 and :5432 answer "direct <local address>"
//
// They need root (network namespaces, iptables); they skip without it.

const (
	podIP  = "10.250.0.2"
	peerIP = "10.250.0.1"
)

type testNet struct {
	pod, peer string
}

func requireNetAdmin(t *testing.T) {
	t.Helper()
	testenv.Root(t, "creates network namespaces and installs iptables rules in them",
		"ip", "iptables-restore", "iptables-save", "setpriv", "bash", "timeout")
}

func sh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newTestNet creates the two namespaces and removes them (and with them the veth pair and
// every rule) when the test ends.
func newTestNet(t *testing.T) *testNet {
	t.Helper()
	id := strconv.Itoa(os.Getpid() % 100000)
	n := &testNet{pod: "iptables-" + id + "-pod", peer: "iptables-" + id + "-peer"}
	for _, ns := range []string{n.pod, n.peer} {
		_ = exec.Command("ip", "netns", "del", ns).Run() // a leftover of a killed run
		sh(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	vp, vq := "iptv"+id+"a", "iptv"+id+"b"
	sh(t, "ip", "link", "add", vp, "netns", n.pod, "type", "veth", "peer", "name", vq, "netns", n.peer)
	sh(t, "ip", "-n", n.pod, "addr", "add", podIP+"/24", "dev", vp)
	sh(t, "ip", "-n", n.pod, "link", "set", vp, "up")
	sh(t, "ip", "-n", n.pod, "route", "add", "default", "via", peerIP)
	sh(t, "ip", "-n", n.peer, "addr", "add", peerIP+"/24", "dev", vq)
	sh(t, "ip", "-n", n.peer, "link", "set", vq, "up")
	for _, a := range []string{"10.96.0.10/32", "10.97.0.5/32"} {
		sh(t, "ip", "-n", n.peer, "addr", "add", a, "dev", "lo")
	}
	return n
}

// serve listens on addr in ns and answers every connection with one line from reply.
func serve(t *testing.T, ns, addr string, reply func(net.Conn) string) {
	t.Helper()
	var l net.Listener
	var err error
	netns.Do(t, ns, func() { l, err = net.Listen("tcp4", addr) })
	if err != nil {
		t.Fatalf("listening on %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_, _ = fmt.Fprintln(c, reply(c))
			c.Close()
		}
	}()
}

// originalDst reads SO_ORIGINAL_DST (SOL_IP, 80): the destination before the REDIRECT, a
// struct sockaddr_in (port big-endian at bytes 2-3, address at 4-7).
func originalDst(c net.Conn) string {
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return "error " + err.Error()
	}
	var addr netip.AddrPort
	var serr error
	_ = raw.Control(func(fd uintptr) {
		m, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, 80)
		if err != nil {
			serr = err
			return
		}
		b := m.Multiaddr
		addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4]))
	})
	if serr != nil {
		return "no-original-dst " + serr.Error()
	}
	return addr.String()
}

func (n *testNet) startPeers(t *testing.T) {
	serve(t, n.pod, "127.0.0.1:15001", func(c net.Conn) string { return "outbound " + originalDst(c) })
	serve(t, n.pod, "0.0.0.0:15006", func(c net.Conn) string { return "inbound " + originalDst(c) })
	serve(t, n.pod, "0.0.0.0:15020", func(net.Conn) string { return "metrics" })
	serve(t, n.pod, "0.0.0.0:8080", func(net.Conn) string { return "app" })
	for _, addr := range []string{"0.0.0.0:80", "0.0.0.0:5432"} {
		serve(t, n.peer, addr, func(c net.Conn) string { return "direct " + c.LocalAddr().String() })
	}
}

// dial connects from a real process in ns running as uid:gid, and returns the line the
// listener it reached sent back.
func dial(t *testing.T, ns string, uid, gid int, addr string) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns,
		"setpriv", "--reuid="+strconv.Itoa(uid), "--regid="+strconv.Itoa(gid), "--clear-groups", "--",
		"timeout", "5", "bash", "-c", `exec 3<>/dev/tcp/$0/$1 && head -n1 <&3`, host, port)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Sprintf("failed: %v %s", err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out))
}

// weftInit runs this test binary as weft-init in ns and returns its exit code and output.
func weftInit(t *testing.T, ns string, prefix []string, args ...string) (int, string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	argv := append([]string{"netns", "exec", ns}, prefix...)
	cmd := exec.Command("ip", append(append(argv, self), args...)...)
	cmd.Env = append(os.Environ(), "WEFT_INIT_AS_MAIN=1")
	out, err := cmd.CombinedOutput()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running weft-init: %v", err)
	}
	return code, string(out)
}

// natTable is the pod's nat table without iptables-save's timestamped comments.
func natTable(t *testing.T, ns string) string {
	t.Helper()
	var keep []string
	for _, line := range strings.Split(sh(t, "ip", "netns", "exec", ns, "iptables-save", "-t", "nat"), "\n") {
		if !strings.HasPrefix(line, "#") {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n")
}

func TestCaptureInNetns(t *testing.T) {
	requireNetAdmin(t)
	n := newTestNet(t)
	n.startPeers(t)

	// Before capture every call goes where it is addressed.
	if got := dial(t, n.pod, 1000, 1000, "10.96.0.10:80"); got != "direct 10.96.0.10:80" {
		t.Fatalf("before weft-init: %q, want the peer to answer directly", got)
	}

	args := []string{"--exclude-outbound-ip-ranges=10.97.0.0/16", "--exclude-outbound-ports=5432"}
	if code, out := weftInit(t, n.pod, nil, args...); code != 0 {
		t.Fatalf("weft-init exit %d:\n%s", code, out)
	}
	first := natTable(t, n.pod)

	cases := []struct {
		name     string
		ns       string
		uid, gid int
		addr     string
		want     string
	}{
		{"app outbound is captured with its original destination", n.pod, 1000, 1000, "10.96.0.10:80", "outbound 10.96.0.10:80"},
		{"the sidecar's UID is not captured", n.pod, 1337, 1337, "10.96.0.10:80", "direct 10.96.0.10:80"},
		{"the sidecar's GID alone is not captured", n.pod, 2000, 1337, "10.96.0.10:80", "direct 10.96.0.10:80"},
		{"an excluded CIDR is not captured", n.pod, 1000, 1000, "10.97.0.5:80", "direct 10.97.0.5:80"},
		{"an excluded port is not captured", n.pod, 1000, 1000, "10.96.0.10:5432", "direct 10.96.0.10:5432"},
		{"localhost is not captured", n.pod, 1000, 1000, "127.0.0.1:8080", "app"},
		{"the app calling its own pod IP is not captured", n.pod, 1000, 1000, podIP + ":8080", "app"},
		{"the sidecar calling its own pod IP goes through inbound capture", n.pod, 1337, 1337, podIP + ":8080", "inbound " + podIP + ":8080"},
		{"the sidecar's hairpin keeps the inbound excludes", n.pod, 1337, 1337, podIP + ":15020", "metrics"},
		{"inbound to an app port is captured with its original port", n.peer, 0, 0, podIP + ":8080", "inbound " + podIP + ":8080"},
		{"inbound to the sidecar's metrics port is not captured", n.peer, 0, 0, podIP + ":15020", "metrics"},
	}
	check := func(t *testing.T) {
		for _, tc := range cases {
			if got := dial(t, tc.ns, tc.uid, tc.gid, tc.addr); got != tc.want {
				t.Errorf("%s: uid %d gid %d in %s dialing %s got %q, want %q", tc.name, tc.uid, tc.gid, tc.ns, tc.addr, got, tc.want)
			}
		}
	}
	check(t)

	// UDP (DNS included) is never touched.
	var pc net.PacketConn
	var err error
	netns.Do(t, n.peer, func() { pc, err = net.ListenPacket("udp4", "0.0.0.0:53") })
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	sh(t, "ip", "netns", "exec", n.pod, "setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "--",
		"bash", "-c", "echo query > /dev/udp/10.96.0.10/53")
	_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	if m, from, err := pc.ReadFrom(buf); err != nil || string(buf[:m]) != "query\n" {
		t.Errorf("UDP to 10.96.0.10:53: got %q from %v (%v), want it delivered directly", buf[:m], from, err)
	}

	// Running again changes nothing: no doubled jumps, the same rules, the same behaviour.
	if code, out := weftInit(t, n.pod, nil, args...); code != 0 {
		t.Fatalf("second weft-init exit %d:\n%s", code, out)
	}
	second := natTable(t, n.pod)
	if first != second {
		t.Errorf("the nat table changed on re-run:\nfirst:\n%s\nsecond:\n%s", first, second)
	}
	for _, jump := range []string{"-A OUTPUT -p tcp -j WEFT_OUTPUT", "-A PREROUTING -p tcp -j WEFT_INBOUND"} {
		if c := strings.Count(second, jump+"\n"); c != 1 {
			t.Errorf("%q appears %d times after two runs, want once:\n%s", jump, c, second)
		}
	}
	check(t)

	// Running with other settings replaces the rules: no inbound capture any more.
	if code, out := weftInit(t, n.pod, nil, "--include-inbound-ports="); code != 0 {
		t.Fatalf("third weft-init exit %d:\n%s", code, out)
	}
	if got := dial(t, n.peer, 0, 0, podIP+":8080"); got != "app" {
		t.Errorf("after --include-inbound-ports= inbound 8080 got %q, want the app directly", got)
	}
	if got := dial(t, n.pod, 1000, 1000, "10.97.0.5:80"); got != "outbound 10.97.0.5:80" {
		t.Errorf("after dropping the excludes 10.97.0.5:80 got %q, want it captured", got)
	}
	if tbl := natTable(t, n.pod); strings.Contains(tbl, "PREROUTING -p tcp -j WEFT_INBOUND") || strings.Contains(tbl, "10.97.0.0/16") {
		t.Errorf("stale rules left after re-run with other settings:\n%s", tbl)
	}
}

// TestRefusedRulesFailClearly: weft-init without NET_ADMIN (root, but every capability
// dropped, as in a container without the securityContext Weft injects) exits 1 and says why.
func TestRefusedRulesFailClearly(t *testing.T) {
	requireNetAdmin(t)
	n := newTestNet(t)
	code, out := weftInit(t, n.pod, []string{"setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"})
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, out)
	}
	if !strings.Contains(out, "weft-init:") || !strings.Contains(out, "nat table") {
		t.Fatalf("output does not say what failed:\n%s", out)
	}
	if tbl := natTable(t, n.pod); strings.Contains(tbl, "WEFT_") {
		t.Fatalf("rules were installed anyway:\n%s", tbl)
	}
}

// originalDst6 reads IP6T_SO_ORIGINAL_DST (SOL_IPV6, 80), a struct sockaddr_in6; the port is
// in network byte order.
func originalDst6(c net.Conn) string {
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return "error " + err.Error()
	}
	var addr netip.AddrPort
	var serr error
	_ = raw.Control(func(fd uintptr) {
		m, err := unix.GetsockoptIPv6MTUInfo(int(fd), unix.SOL_IPV6, 80)
		if err != nil {
			serr = err
			return
		}
		port := m.Addr.Port
		var b [2]byte
		binary.NativeEndian.PutUint16(b[:], port)
		addr = netip.AddrPortFrom(netip.AddrFrom16(m.Addr.Addr), binary.BigEndian.Uint16(b[:]))
	})
	if serr != nil {
		return "no-original-dst " + serr.Error()
	}
	return addr.String()
}

// TestCaptureIPv6InNetns: with --ipv6 the same capture holds for IPv6, through
// ip6tables-restore, to listeners on [::1]:15001 and [::]:15006.
func TestCaptureIPv6InNetns(t *testing.T) {
	requireNetAdmin(t)
	for _, prog := range []string{"ip6tables-restore", "ip6tables-save"} {
		if _, err := exec.LookPath(prog); err != nil {
			testenv.Missing(t, fmt.Sprintf("needs %s: %v", prog, err))
		}
	}
	n := newTestNet(t)
	vp, vq := "iptv"+strconv.Itoa(os.Getpid()%100000)+"a", "iptv"+strconv.Itoa(os.Getpid()%100000)+"b"
	sh(t, "ip", "-n", n.pod, "addr", "add", "fd00:250::2/64", "dev", vp, "nodad")
	sh(t, "ip", "-n", n.pod, "-6", "route", "add", "default", "via", "fd00:250::1")
	sh(t, "ip", "-n", n.peer, "addr", "add", "fd00:250::1/64", "dev", vq, "nodad")
	sh(t, "ip", "-n", n.peer, "addr", "add", "fd00:96::10/128", "dev", "lo")

	serve6 := func(ns, addr string, reply func(net.Conn) string) {
		var l net.Listener
		var err error
		netns.Do(t, ns, func() { l, err = net.Listen("tcp6", addr) })
		if err != nil {
			t.Fatalf("listening on %s in %s: %v", addr, ns, err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				_, _ = fmt.Fprintln(c, reply(c))
				c.Close()
			}
		}()
	}
	serve6(n.pod, "[::1]:15001", func(c net.Conn) string { return "outbound " + originalDst6(c) })
	serve6(n.pod, "[::]:15006", func(c net.Conn) string { return "inbound " + originalDst6(c) })
	serve6(n.pod, "[::]:15020", func(net.Conn) string { return "metrics" })
	serve6(n.peer, "[::]:80", func(c net.Conn) string { return "direct " + c.LocalAddr().String() })

	if code, out := weftInit(t, n.pod, nil, "--ipv6"); code != 0 {
		t.Fatalf("weft-init --ipv6 exit %d:\n%s", code, out)
	}
	for _, tc := range []struct {
		ns   string
		uid  int
		addr string
		want string
	}{
		{n.pod, 1000, "[fd00:96::10]:80", "outbound [fd00:96::10]:80"},
		{n.pod, 1337, "[fd00:96::10]:80", "direct [fd00:96::10]:80"},
		{n.peer, 0, "[fd00:250::2]:8080", "inbound [fd00:250::2]:8080"},
		{n.peer, 0, "[fd00:250::2]:15020", "metrics"},
	} {
		if got := dial(t, tc.ns, tc.uid, tc.uid, tc.addr); got != tc.want {
			t.Errorf("uid %d in %s dialing %s got %q, want %q", tc.uid, tc.ns, tc.addr, got, tc.want)
		}
	}
}
