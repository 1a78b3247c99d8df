package redisproxy

import (
	"crypto/tls"
	"net"
	"strconv"
	"testing"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/identity/identitytest"
	"github.com/weftmesh/weft/sidecar/redisproxy/redistest"
	"github.com/weftmesh/weft/sidecar/redisproxy/resp"
)

// benchPipeline measures one client sending depth GETs per round trip
// through the proxy to three real redis-servers; allocs/op are the whole
// process's (client side included, which allocates nothing per op).
func benchPipeline(b *testing.B, depth int) { benchVia(b, depth, "") }

// BenchmarkProxyGetP1TLSOnPlain: a standalone proxy that accepts mutual TLS, driven by a
// plaintext client (the first byte is peeked, so the socket fast path stays).
func BenchmarkProxyGetP1TLSOnPlain(b *testing.B) { benchVia(b, 1, "plain") }

// BenchmarkProxyGetP1MTLS: the same over mutual TLS, admitted by an ALLOW policy.
func BenchmarkProxyGetP1MTLS(b *testing.B) { benchVia(b, 1, "mtls") }

// benchVia is benchPipeline through a proxy with mutual TLS on (mode "plain": a plaintext
// client; "mtls": a mutual-TLS client that an ALLOW policy admits) or off ("").
func benchVia(b *testing.B, depth int, mode string) {
	shards := redistest.StartRedis(b, 3)
	cfg := poolOf(shards, func(p *Pool) { p.Hash = "murmur" })
	var opts []Option
	var ca *identitytest.CA
	if mode != "" {
		var err error
		if ca, err = identitytest.New(proxyID); err != nil {
			b.Fatal(err)
		}
		opts = append(opts, WithTLS(idManager(b, ca)))
	}
	if mode == "mtls" {
		cfg.Authz = &config.RedisAuthz{Pool: "default/sessions", Rules: config.Authz{HasAllow: true, AllowPolicies: []string{"default/p"},
			Allow: []*config.AuthzPolicy{{Key: "default/p/0", Policy: "default/p", Permissions: []*config.Permission{{Kind: config.PermAny}},
				Principals: []*config.Principal{{Kind: config.PrincipalAuthenticated}}}}}}
	}
	p, err := New(cfg, opts...)
	if err != nil {
		b.Fatal(err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go p.Serve(ln)
	defer p.Shutdown(b.Context())
	var c net.Conn
	if mode == "mtls" {
		c, err = tls.Dial("tcp", ln.Addr().String(), clientTLS(b, ca, webID, []string{contract.ALPNTCP}))
	} else {
		c, err = net.Dial("tcp", ln.Addr().String())
	}
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	var req []byte
	for i := range depth {
		req = resp.AppendCommand(req, []byte("GET"), []byte("key:"+strconv.Itoa(i*7919)))
	}
	rd := resp.NewReader(c)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += depth {
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		for range depth {
			if _, err := rd.ReadReply(); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func BenchmarkProxyGetP1(b *testing.B)  { benchPipeline(b, 1) }
func BenchmarkProxyGetP16(b *testing.B) { benchPipeline(b, 16) }
