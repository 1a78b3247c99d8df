package redisproxy

import (
	"net"
	"strconv"
	"testing"

	"github.com/weftmesh/weft/sidecar/redisproxy/redistest"
	"github.com/weftmesh/weft/sidecar/redisproxy/resp"
)

// benchPipeline measures one client sending depth GETs per round trip
// through the proxy to three real redis-servers; allocs/op are the whole
// process's (client side included, which allocates nothing per op).
func benchPipeline(b *testing.B, depth int) {
	shards := redistest.StartRedis(b, 3)
	p, err := New(poolOf(shards, func(p *Pool) { p.Hash = "murmur" }))
	if err != nil {
		b.Fatal(err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go p.Serve(ln)
	defer p.Shutdown(b.Context())
	c, err := net.Dial("tcp", ln.Addr().String())
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
