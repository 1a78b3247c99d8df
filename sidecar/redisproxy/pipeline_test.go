package redisproxy

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/sidecar/redisproxy/redistest"
	"github.com/weftmesh/weft/sidecar/redisproxy/resp"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
)

// pipelineCommands builds n commands of about 500 bytes (the 100,000
// commands, 50 MB): SETs, with every tenth a GET of the key just set, and the
// replies they must get in order.
func pipelineCommands(n int) ([]byte, []string) {
	var b []byte
	want := make([]string, 0, n)
	pad := strings.Repeat("v", 480)
	for i := range n {
		if i%10 == 9 {
			b = resp.AppendCommand(b, []byte("GET"), fmt.Appendf(nil, "pipe:%d", i-1))
			want = append(want, redistest.Bulk(fmt.Sprintf("%d:%s", i-1, pad)))
			continue
		}
		b = resp.AppendCommand(b, []byte("SET"), fmt.Appendf(nil, "pipe:%d", i), fmt.Appendf(nil, "%d:%s", i, pad))
		want = append(want, "+OK\r\n")
	}
	return b, want
}

// TestPipelineWrittenBeforeReading: a client writes 100,000 commands in one
// go and reads nothing until the write is done (redis-py's
// pipeline.execute()). The proxy must keep reading and buffer the replies;
// it used to stop reading at 1,024 outstanding commands while the replies
// could not be written, and both sides waited forever.
func TestPipelineWrittenBeforeReading(t *testing.T) {
	shards := redistest.StartRedis(t, 3)
	_, addr := startProxy(t, poolOf(shards))
	cmds, want := pipelineCommands(100_000)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Bounded: a stalled proxy fails the test instead of hanging it.
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write(cmds); err != nil {
		t.Fatalf("writing %d bytes of pipeline before reading: %v (the proxy stopped reading)", len(cmds), err)
	}
	rd := resp.NewReader(c)
	for i, w := range want {
		got, err := rd.ReadReply()
		if err != nil || string(got) != w {
			t.Fatalf("reply %d = %.40q, %v; want %.40q", i, got, err, w)
		}
	}
}

// TestClientOverOutputLimitIsClosed: a client whose unread replies pass
// ClientOutputLimit is closed; another client keeps working.
func TestClientOverOutputLimitIsClosed(t *testing.T) {
	shards := redistest.StartRedis(t, 1)
	cfg := poolOf(shards)
	cfg.ClientOutputLimit = 4 << 20
	p, addr := startProxy(t, cfg)
	fast := redistest.Dial(t, addr)
	big := strings.Repeat("b", 512<<10)
	expect(t, fast, "+OK\r\n", "SET", "big", big)

	// 100 × 512 KiB of replies, never read: far over 4 MiB.
	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	var cmds []byte
	for range 100 {
		cmds = resp.AppendCommand(cmds, []byte("GET"), []byte("big"))
	}
	if _, err := slow.Write(cmds); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 15*time.Second, func() bool {
		return strings.Contains(metrics(t, p), "weft_redis_client_output_limit_closed_total 1")
	}, "waiting for the client over its output limit to be closed")
	for i := range 20 {
		k := fmt.Sprintf("k%d", i)
		expect(t, fast, "+OK\r\n", "SET", k, k)
		expect(t, fast, redistest.Bulk(k), "GET", k)
	}
	// The slow client gets at most what fitted before the limit, then EOF.
	_ = slow.SetReadDeadline(time.Now().Add(20 * time.Second))
	rd := resp.NewReader(slow)
	n := 0
	for {
		raw, err := rd.ReadReply()
		if err != nil {
			break
		}
		if string(raw) != redistest.Bulk(big) {
			if !strings.HasPrefix(string(raw), "-ERR client output buffer limit") {
				t.Fatalf("reply %d: %.60q", n, raw)
			}
		}
		n++
	}
	if n >= 100 {
		t.Fatalf("the client over its limit got all %d replies", n)
	}
}
