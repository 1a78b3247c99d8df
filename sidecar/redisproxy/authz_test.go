package redisproxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	redisv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/redis_proxy/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/identity"
	"github.com/weftmesh/weft/sidecar/identity/identitytest"
	"github.com/weftmesh/weft/sidecar/redisproxy/redistest"
	"github.com/weftmesh/weft/sidecar/redisproxy/resp"
)

var (
	webID      = contract.SPIFFEID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "web"}
	otherID    = contract.SPIFFEID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "other"}
	intruderID = contract.SPIFFEID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "intruder"}
	proxyID    = contract.SPIFFEID{TrustDomain: "cluster.local", Namespace: "default", ServiceAccount: "sessions-redis-proxy"}
)

// The shapes internal/snapshot emits (redispolicy.go), built here as the wire has them.
func anyPrincipal() *rbacconfigv3.Principal {
	return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Any{Any: true}}
}

func anyPerm() *rbacconfigv3.Permission {
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Any{Any: true}}
}

func authenticated(sm *matcherv3.StringMatcher) *rbacconfigv3.Principal {
	return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Authenticated_{Authenticated: &rbacconfigv3.Principal_Authenticated{PrincipalName: sm}}}
}

func netRBAC(t *testing.T, action rbacconfigv3.RBAC_Action, ps map[string]*rbacconfigv3.Policy) *listenerv3.Filter {
	a, err := anypb.New(&netrbacv3.RBAC{Rules: &rbacconfigv3.RBAC{Action: action, Policies: ps}, StatPrefix: "redis_default_sessions."})
	if err != nil {
		t.Fatal(err)
	}
	return &listenerv3.Filter{Name: contract.NetworkRBACFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a}}
}

// poolListener is a redis listener with filters fs before redis_proxy and the authz metadata.
func poolListener(t *testing.T, md contract.RedisAuthzMeta, fs ...*listenerv3.Filter) *listenerv3.Listener {
	rp, err := anypb.New(&redisv3.RedisProxy{StatPrefix: "redis_default_sessions", Settings: &redisv3.RedisProxy_ConnPoolSettings{},
		PrefixRoutes: &redisv3.RedisProxy_PrefixRoutes{CatchAllRoute: &redisv3.RedisProxy_PrefixRoutes_Route{Cluster: "redis|default/sessions"}}})
	if err != nil {
		t.Fatal(err)
	}
	fs = append(fs, &listenerv3.Filter{Name: contract.RedisFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: rp}})
	return &listenerv3.Listener{Name: "redis|default/sessions", FilterChains: []*listenerv3.FilterChain{{Filters: fs}},
		Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{contract.RedisAuthzMetadataKey: md.Encode()}}}
}

// TestRedisAuthzJudgedRefusal: a sidecar-local pool the control plane refused for this
// sidecar's identity arrives without clusters or secrets; every command, forged identity
// claims included, gets -NOPERM naming the policy and the identity, and nothing reaches
// the server. The admitted sidecar's pool works against the same real redis-server.
func TestRedisAuthzJudgedRefusal(t *testing.T) {
	shards := redistest.StartRedis(t, 1)
	never := &rbacconfigv3.Policy{Principals: []*rbacconfigv3.Principal{anyPrincipal()},
		Permissions: []*rbacconfigv3.Permission{{Rule: &rbacconfigv3.Permission_NotRule{NotRule: anyPerm()}}}}
	l := poolListener(t, contract.RedisAuthzMeta{Pool: "default/sessions", Judged: true, Caller: otherID.String()},
		netRBAC(t, rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{"default/sessions-users/none": never}))
	cfg, err := config.RedisConfigWithSecrets(l, nil, nil, nil) // no clusters, endpoints or secrets: none are needed
	if err != nil {
		t.Fatalf("decoding the refusing listener: %v", err)
	}
	if !cfg.Authz.Refuses() || len(cfg.Pools) != 0 {
		t.Fatalf("want a refusing config without pools, got %+v", cfg)
	}
	p, addr := startProxy(t, cfg)
	c := redistest.Dial(t, addr)
	want := "-NOPERM this workload (spiffe://cluster.local/ns/default/sa/other) may not use RedisProxy default/sessions: denied by MeshPolicy default/sessions-users (no ALLOW rule admits it)\r\n"
	for _, cmd := range [][]string{{"PING"}, {"SET", "judged-k", "v"}, {"GET", "judged-k"},
		{"CLIENT", "SETNAME", webID.String()}, {"AUTH", webID.String()}, {"HELLO", "2", "AUTH", "default", "x"}, {"SET", "judged-k", "v"}} {
		expect(t, c, want, cmd...)
	}
	expect(t, c, "+OK\r\n", "QUIT")
	direct := redistest.Dial(t, shards[0].Addr)
	expect(t, direct, "$-1\r\n", "GET", "judged-k")
	if m := metrics(t, p); !strings.Contains(m, `weft_redis_authz_connections_total{pool="default/sessions",decision="deny",policy="default/sessions-users"} 1`) {
		t.Errorf("metrics:\n%s", m)
	}

	// The admitted view: the pool with its server.
	_, okAddr := startProxy(t, poolOf(shards))
	ok := redistest.Dial(t, okAddr)
	expect(t, ok, "+PONG\r\n", "PING")
	expect(t, ok, "+OK\r\n", "SET", "judged-k", "v")
	expect(t, ok, redistest.Bulk("v"), "GET", "judged-k")
}

// tlsClient speaks RESP over tls.
type tlsClient struct {
	c net.Conn
	r *resp.Reader
}

func (c *tlsClient) do(args ...string) (string, error) {
	bs := make([][]byte, len(args))
	for i, a := range args {
		bs[i] = []byte(a)
	}
	if _, err := c.c.Write(resp.AppendCommand(nil, bs...)); err != nil {
		return "", err
	}
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	raw, err := c.r.ReadReply()
	return string(bytes.Clone(raw)), err
}

// standalone runs a standalone proxy with mutual TLS and the policies: ALLOW default/web
// and namespace ops, DENY the exact intruder ID.
func standalone(t *testing.T) (addr string, ca *identitytest.CA, p *Proxy, shard *redistest.Server) {
	t.Helper()
	shards := redistest.StartRedis(t, 1)
	ca, err := identitytest.New(proxyID)
	if err != nil {
		t.Fatal(err)
	}
	proxyIdentity := idManager(t, ca)
	allow := netRBAC(t, rbacconfigv3.RBAC_ALLOW, map[string]*rbacconfigv3.Policy{
		"default/sessions-users/0": {Permissions: []*rbacconfigv3.Permission{anyPerm()}, Principals: []*rbacconfigv3.Principal{{Identifier: &rbacconfigv3.Principal_OrIds{OrIds: &rbacconfigv3.Principal_Set{Ids: []*rbacconfigv3.Principal{
			authenticated(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: `spiffe://[^/]+/ns/default/sa/web`}}}),
			authenticated(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: `spiffe://[^/]+/ns/ops/sa/[^/]+`}}}),
		}}}}}},
	})
	deny := netRBAC(t, rbacconfigv3.RBAC_DENY, map[string]*rbacconfigv3.Policy{
		"default/no-intruders/0": {Permissions: []*rbacconfigv3.Permission{anyPerm()}, Principals: []*rbacconfigv3.Principal{
			authenticated(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: intruderID.String()}})}},
	})
	l := poolListener(t, contract.RedisAuthzMeta{Pool: "default/sessions"}, deny, allow)
	if _, err := config.RedisConfigWithSecrets(l, nil, nil, nil); err == nil {
		t.Fatal("a standalone (not judged) listener decoded without its clusters")
	}
	cfg := poolOf(shards)
	cfg.Authz = decodedAuthz(t, l) // the listener's decoded rules, with poolOf's pool
	p, err = New(cfg, WithTLS(proxyIdentity))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = p.Shutdown(ctx)
	})
	return ln.Addr().String(), ca, p, shards[0]
}

// decodedAuthz decodes l's authorization through the sidecar's decoder (a listener that
// refuses everyone decodes without clusters; here the rules are wrapped in a judged
// listener only to reach the decoder, then made per-connection again).
func decodedAuthz(t *testing.T, l *listenerv3.Listener) *config.RedisAuthz {
	t.Helper()
	md, _ := contract.DecodeRedisAuthzMeta(l.GetMetadata().GetFilterMetadata()[contract.RedisAuthzMetadataKey])
	fs := l.GetFilterChains()[0].GetFilters()
	judged := poolListener(t, contract.RedisAuthzMeta{Pool: md.Pool, Judged: true, Caller: ""}, fs[:len(fs)-1]...) // the RBAC filters
	cfg, err := config.RedisConfigWithSecrets(judged, nil, nil, nil)
	if err != nil || cfg.Authz == nil {
		t.Fatalf("decoding the rules: %v", err)
	}
	a := *cfg.Authz
	a.Judged, a.Caller = false, ""
	return &a
}

func idManager(t testing.TB, ca *identitytest.CA) *identity.Manager {
	t.Helper()
	m := identity.New(identity.Options{Signer: ca, TTL: time.Hour, RetryMin: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond})
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

// certFor is a client certificate of id from ca, with ca's bundle.
func clientTLS(t testing.TB, ca *identitytest.CA, id contract.SPIFFEID, alpn []string) *tls.Config {
	t.Helper()
	ca.SetIdentity(id)
	m := idManager(t, ca)
	cfg := m.ClientConfig(alpn)
	if alpn == nil {
		cfg.NextProtos = nil
	}
	return cfg
}

// tlsClientOver runs the TLS handshake over an open connection.
func tlsClientOver(t *testing.T, c net.Conn, cfg *tls.Config) *tlsClient {
	t.Helper()
	tc := tls.Client(c, cfg)
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	return &tlsClient{c: tc, r: resp.NewReader(tc)}
}

func dialTLS(t *testing.T, addr string, cfg *tls.Config) (*tlsClient, error) {
	t.Helper()
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return &tlsClient{c: c, r: resp.NewReader(c)}, nil
}

// TestRedisAuthzStandaloneMTLS: the standalone proxy's listener takes mutual TLS and
// plaintext; each connection is judged on its verified peer.
func TestRedisAuthzStandaloneMTLS(t *testing.T) {
	addr, ca, p, shard := standalone(t)

	web, err := dialTLS(t, addr, clientTLS(t, ca, webID, []string{contract.ALPNTCP}))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := web.do("PING"); got != "+PONG\r\n" {
		t.Fatalf("web over mTLS (ALPN weft-tcp): %q %v", got, err)
	}
	if got, _ := web.do("SET", "sa-k", "v"); got != "+OK\r\n" {
		t.Fatalf("web SET: %q", got)
	}
	noALPN, err := dialTLS(t, addr, clientTLS(t, ca, webID, nil))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := noALPN.do("GET", "sa-k"); got != "$1\r\nv\r\n" {
		t.Fatalf("web without ALPN: %q", got)
	}

	refused := func(name string, c *tlsClient, want string, args ...string) {
		t.Helper()
		got, err := c.do(args...)
		if got != want {
			t.Fatalf("%s: %q (%v), want %q", name, got, err, want)
		}
		if _, err := c.r.ReadReply(); !errors.Is(err, io.EOF) && err == nil {
			t.Fatalf("%s: the connection stays open after the refusal", name)
		}
	}
	other, err := dialTLS(t, addr, clientTLS(t, ca, otherID, []string{contract.ALPNTCP}))
	if err != nil {
		t.Fatal(err)
	}
	refused("other", other, "-NOPERM this caller (spiffe://cluster.local/ns/default/sa/other) may not use RedisProxy default/sessions: denied by MeshPolicy default/sessions-users (no ALLOW rule admits it)\r\n", "CLIENT", "SETNAME", webID.String())
	intruder, err := dialTLS(t, addr, clientTLS(t, ca, intruderID, []string{contract.ALPNTCP}))
	if err != nil {
		t.Fatal(err)
	}
	refused("intruder", intruder, "-NOPERM this caller (spiffe://cluster.local/ns/default/sa/intruder) may not use RedisProxy default/sessions: denied by MeshPolicy default/no-intruders (its DENY rule matches)\r\n", "AUTH", webID.String())

	plain, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	refused("plaintext", &tlsClient{c: plain, r: resp.NewReader(plain)}, "-NOPERM a caller without a mesh identity (plaintext connection) may not use RedisProxy default/sessions: denied by MeshPolicy default/sessions-users (no ALLOW rule admits it)\r\n", "PING")

	// No client certificate, or one from another CA: refused at the handshake.
	noCert := clientTLS(t, ca, webID, []string{contract.ALPNTCP})
	noCert.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }
	if c, err := dialTLS(t, addr, noCert); err == nil {
		if got, err := c.do("PING"); err == nil {
			t.Fatalf("a client without a certificate got %q", got)
		}
	}
	foreign, err := identitytest.New(webID)
	if err != nil {
		t.Fatal(err)
	}
	foreignCfg := clientTLS(t, foreign, webID, []string{contract.ALPNTCP})
	foreignCfg.VerifyConnection = nil // the client trusts anything; the proxy must not
	if c, err := dialTLS(t, addr, foreignCfg); err == nil {
		if got, err := c.do("PING"); err == nil {
			t.Fatalf("a certificate of another CA got %q", got)
		}
	}

	// Nothing the refused clients sent reached the server.
	direct := redistest.Dial(t, shard.Addr)
	expect(t, direct, "$1\r\nv\r\n", "GET", "sa-k")
	m := metrics(t, p)
	for _, line := range []string{
		`weft_redis_authz_connections_total{pool="default/sessions",decision="allow",policy="default/sessions-users"} 2`,
		`weft_redis_authz_connections_total{pool="default/sessions",decision="deny",policy="default/no-intruders"} 1`,
		`weft_redis_authz_connections_total{pool="default/sessions",decision="deny",policy="default/sessions-users"} 2`,
	} {
		if !strings.Contains(m, line) {
			t.Errorf("metrics lack %s:\n%s", line, m)
		}
	}
	// The proxy counts a failed handshake after its alert is on the wire, so the client
	// can see the failure first: wait for the count.
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(m, "weft_redis_tls_handshake_errors_total 2\n"); m = metrics(t, p) {
		if time.Now().After(deadline) {
			t.Fatalf("want 2 handshake errors:\n%s", m)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRedisAuthzAdversarial: a refused client's huge first command is neither parsed nor
// forwarded; a stalled handshake is cut at the handshake timeout; the proxy still serves.
func TestRedisAuthzAdversarial(t *testing.T) {
	old := handshakeTimeout
	handshakeTimeout = 300 * time.Millisecond
	t.Cleanup(func() { handshakeTimeout = old })
	addr, ca, _, shard := standalone(t)

	// Plaintext (no identity) sends an 8 MiB SET first.
	plain, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	big := strings.Repeat("x", 8<<20)
	go func() { _, _ = plain.Write(resp.AppendCommand(nil, []byte("SET"), []byte("huge-k"), []byte(big))) }()
	_ = plain.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(io.LimitReader(plain, 4096))
	if len(got) > 0 && !strings.HasPrefix(string(got), "-NOPERM a caller without a mesh identity") {
		t.Fatalf("huge first command: %q", got)
	}
	if err != nil && len(got) == 0 && !isReset(err) {
		t.Fatalf("huge first command: neither the refusal nor a closed connection: %v", err)
	}
	t.Logf("huge first command from a refused client: read %q (%v)", got, err)

	// A handshake that stalls after its first byte.
	stall, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer stall.Close()
	_, _ = stall.Write([]byte{0x16, 0x03, 0x01})
	start := time.Now()
	_ = stall.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := stall.Read(make([]byte, 16)); err == nil {
		t.Fatal("a stalled handshake got an answer")
	} else if errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("the proxy kept a stalled handshake open past 10 s (its bound is %v)", handshakeTimeout)
	}
	t.Logf("stalled handshake closed after %v", time.Since(start).Round(time.Millisecond))

	web, err := dialTLS(t, addr, clientTLS(t, ca, webID, []string{contract.ALPNTCP}))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := web.do("PING"); got != "+PONG\r\n" {
		t.Fatalf("after the adversaries: %q", got)
	}
	direct := redistest.Dial(t, shard.Addr)
	expect(t, direct, "$-1\r\n", "GET", "huge-k")
}

// TestRedisAuthzTLSIdleAndShutdown: with mutual TLS on, a plaintext client that sends its
// first command long after connecting (a pool's idle spare) is still served when no policy
// refuses it; a client offering only another ALPN is refused at the handshake; Shutdown
// closes a connection whose first byte never came.
func TestRedisAuthzTLSIdleAndShutdown(t *testing.T) {
	old := handshakeTimeout
	handshakeTimeout = 200 * time.Millisecond
	t.Cleanup(func() { handshakeTimeout = old })
	shards := redistest.StartRedis(t, 1)
	ca, err := identitytest.New(proxyID)
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(poolOf(shards), WithTLS(idManager(t, ca)))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(ln)
	addr := ln.Addr().String()

	idle := redistest.Dial(t, addr)
	time.Sleep(3 * handshakeTimeout)
	expect(t, idle, "+PONG\r\n", "PING")

	if c, err := dialTLS(t, addr, clientTLS(t, ca, webID, []string{"h2"})); err == nil {
		if got, err := c.do("PING"); err == nil {
			t.Fatalf("a client offering only ALPN h2 got %q", got)
		}
	}
	web, err := dialTLS(t, addr, clientTLS(t, ca, webID, []string{contract.ALPNTCP}))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := web.do("PING"); got != "+PONG\r\n" {
		t.Fatalf("mTLS without policies: %q", got)
	}

	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	time.Sleep(50 * time.Millisecond) // accepted and waiting for its first byte
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = p.Shutdown(ctx)
	_ = silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); err == nil || strings.Contains(err.Error(), "timeout") {
		t.Fatalf("Shutdown left a connection without its first byte open: %v", err)
	}
}

func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "reset") || errors.Is(err, io.EOF))
}
