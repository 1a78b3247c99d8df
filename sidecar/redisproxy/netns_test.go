package redisproxy

import (
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/identity/identitytest"
	"github.com/weftmesh/weft/sidecar/redisproxy/redistest"
	"github.com/weftmesh/weft/sidecar/redisproxy/resp"
	"github.com/weftmesh/weft/testenv"
)

// A sidecar-local pool that listens beyond loopback (listener.address 0.0.0.0): the pod's
// own app on loopback is judged as the pod's identity, another pod reaching the pool over
// the network is judged by its mutual-TLS peer (plaintext: no identity). The network
// caller needs an address that is not loopback, so the proxy and its clients run in a
// child test process inside a network namespace with 10.77.0.5 on its lo.

const redisNetnsChildEnv = "WEFT_REDISAUTHZ_NETNS_CHILD"

func TestRedisAuthzBeyondLoopbackInNetns(t *testing.T) {
	if os.Getuid() != 0 {
		testenv.Missing(t, "needs root for ip netns")
	}
	for _, tool := range []string{"ip", "redis-server"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Missing(t, tool+" not installed")
		}
	}
	ns := "redisauthz-" + strconv.Itoa(os.Getpid())
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	run("ip", "-n", ns, "link", "set", "lo", "up")
	run("ip", "-n", ns, "addr", "add", "10.77.0.5/32", "dev", "lo")
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^TestRedisAuthzNetnsChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), redisNetnsChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	t.Logf("child:\n%s", out)
	if err != nil || !strings.Contains(string(out), "--- PASS: TestRedisAuthzNetnsChild") {
		t.Fatalf("child test in netns %s failed: %v", ns, err)
	}
}

// TestRedisAuthzNetnsChild is the namespace's side of TestRedisAuthzBeyondLoopbackInNetns.
func TestRedisAuthzNetnsChild(t *testing.T) {
	if os.Getenv(redisNetnsChildEnv) == "" {
		t.Skip("run by TestRedisAuthzBeyondLoopbackInNetns inside its network namespace")
	}
	shards := redistest.StartRedis(t, 1)
	ca, err := identitytest.New(proxyID)
	if err != nil {
		t.Fatal(err)
	}
	allow := netRBAC(t, rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{
		"default/shared-users/0": {Permissions: []*rbacconfigv3.Permission{anyPerm()}, Principals: []*rbacconfigv3.Principal{
			authenticated(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: `spiffe://[^/]+/ns/default/sa/web`}}})}},
	})
	cfg := poolOf(shards)
	cfg.Authz = decodedAuthz(t, poolListener(t, contract.RedisAuthzMeta{Pool: "default/shared"}, allow))
	cfg.Authz.Caller = webID.String() // this pod's identity, for loopback connections
	p, err := New(cfg, WithTLS(idManager(t, ca)))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(ln)
	t.Cleanup(func() { _ = p.Shutdown(t.Context()) })
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)

	// The pod's own app, on loopback, plaintext: the pod's identity, admitted.
	own := redistest.Dial(t, "127.0.0.1:"+port)
	expect(t, own, "+PONG\r\n", "PING")

	fromNetwork := func() net.Conn {
		d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("10.77.0.5")}}
		c, err := d.Dial("tcp4", "10.77.0.5:"+port)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// Another pod, plaintext over the network: no identity, refused.
	plain := &tlsClient{c: fromNetwork(), r: nil}
	plain.r = resp.NewReader(plain.c)
	if got, _ := plain.do("PING"); got != "-NOPERM a caller without a mesh identity (plaintext connection) may not use RedisProxy default/shared: denied by MeshPolicy default/shared-users (no ALLOW rule admits it)\r\n" {
		t.Fatalf("plaintext network caller: %q", got)
	}
	// Over mutual TLS: web admitted, other refused.
	for _, c := range []struct {
		id   contract.SPIFFEID
		want string
	}{
		{webID, "+PONG\r\n"},
		{otherID, "-NOPERM this caller (spiffe://cluster.local/ns/default/sa/other) may not use RedisProxy default/shared: denied by MeshPolicy default/shared-users (no ALLOW rule admits it)\r\n"},
	} {
		tc := tlsClientOver(t, fromNetwork(), clientTLS(t, ca, c.id, []string{contract.ALPNTCP}))
		if got, err := tc.do("PING"); got != c.want {
			t.Fatalf("%s over mTLS from the network: %q (%v), want %q", c.id, got, err, c.want)
		}
	}
}
