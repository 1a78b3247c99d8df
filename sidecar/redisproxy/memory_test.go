package redisproxy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/sidecar/redisproxy/redistest"
	"github.com/weftmesh/weft/sidecar/redisproxy/resp"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
)

// retainedBuffers lists the buffers the proxy keeps between commands and
// their sizes, for every client and server connection.
func retainedBuffers(p *Proxy) map[string]int {
	out := map[string]int{}
	p.mu.Lock()
	defer p.mu.Unlock()
	for cl := range p.cls {
		cl.mu.Lock()
		if !cl.writing {
			out[fmt.Sprintf("client %d out", cl.id)] = cap(cl.out)
		}
		cl.mu.Unlock()
		out[fmt.Sprintf("client %d read buffer", cl.id)] = cl.rd.BufferSize()
	}
	for _, u := range p.ups {
		for i := range u.conns {
			s := u.conns[i].Load()
			if s == nil {
				continue
			}
			// spare belongs to the writer goroutine; it becomes wbuf at the
			// next write, so after a few small commands wbuf has been both.
			s.mu.Lock()
			out[u.name+" write buffer"] = cap(s.wbuf)
			s.mu.Unlock()
		}
	}
	return out
}

// pooledBuffers takes pendings and requests from their pools until it has
// seen those the commands used, and reports the largest buffer they kept.
func pooledBuffers() int {
	largest := 0
	for range 64 {
		p := pendingPool.Get().(*pending)
		r := requestPool.Get().(*request)
		largest = max(largest, cap(p.local), cap(p.req.buf), cap(p.req.reply), cap(r.buf), cap(r.reply))
	}
	return largest
}

// TestBuffersShrinkAfterLargeValue: after an 8 MiB value has gone through
// the proxy in both directions (SET, GET, MSET and MGET split over shards,
// and a rewritten inline command), no buffer it keeps for reuse is larger
// than maxRetained: the memory goes back to the heap instead of being held
// for the connection's life.
func TestBuffersShrinkAfterLargeValue(t *testing.T) {
	shards := redistest.StartRedis(t, 3)
	p, addr := startProxy(t, poolOf(shards))
	c := redistest.Dial(t, addr)
	big := strings.Repeat("x", 8<<20)
	expect(t, c, "+OK\r\n", "SET", "big", big)
	expect(t, c, redistest.Bulk(big), "GET", "big")
	expect(t, c, "+OK\r\n", "MSET", "a", big, "b", big, "c", big)
	if got := c.MustDo(t, "MGET", "a", "b", "c"); len(got) < 3*len(big) {
		t.Fatalf("MGET: %d bytes", len(got))
	}
	// Small commands afterwards: the buffers are reused, not regrown.
	for i := range 10 {
		expect(t, c, "+OK\r\n", "SET", fmt.Sprint("k", i), "v")
	}
	// The proxy's own goroutines finish each write after the reply: poll.
	poll.Until(t, 15*time.Second, func() bool {
		for what, n := range retainedBuffers(p) {
			if n > maxRetained {
				t.Logf("%s keeps %d bytes", what, n)
				return false
			}
		}
		return true
	}, "waiting for buffers to shrink")
	if n := pooledBuffers(); n > maxRetained {
		t.Fatalf("a pooled command keeps a %d-byte buffer", n)
	}
}

// TestReaderGrowsOnceForLargeBulk: a 1 MiB bulk is read into a buffer sized
// for it at once (one copy, not log2(size) doublings) and the buffer goes
// back to a small one after the message.
func TestReaderGrowsOnceForLargeBulk(t *testing.T) {
	big := strings.Repeat("y", 1<<20)
	in := string(resp.AppendCommand(nil, []byte("SET"), []byte("k"), []byte(big))) + "*1\r\n$4\r\nPING\r\n"
	r := resp.NewReader(strings.NewReader(in))
	args, _, err := r.ReadCommand()
	if err != nil || len(args) != 3 || len(args[2]) != len(big) {
		t.Fatalf("%d args, %v", len(args), err)
	}
	if n := r.BufferSize(); n > len(in)+resp.MaxRetained {
		t.Fatalf("buffer of %d bytes for a %d-byte message", n, len(in))
	}
	if _, _, err := r.ReadCommand(); err != nil {
		t.Fatal(err)
	}
	r.Space()
	if n := r.BufferSize(); n > resp.MaxRetained {
		t.Fatalf("buffer keeps %d bytes after the large message", n)
	}
}

// TestLargeBufferIsScavenged: dropping a buffer of scavengeMin or more
// schedules one return of free memory to the OS, which then runs; small
// buffers are kept for reuse and schedule nothing.
func TestLargeBufferIsScavenged(t *testing.T) {
	poll.Until(t, 15*time.Second, func() bool { return !scavengeArmed.Load() }, "waiting for no scavenge pending")
	if b := retain(make([]byte, 10, maxRetained)); b == nil || len(b) != 0 || scavengeArmed.Load() {
		t.Fatal("a small buffer must be kept, emptied, without scheduling a scavenge")
	}
	if b := retain(make([]byte, 0, scavengeMin)); b != nil {
		t.Fatal("a large buffer must be dropped")
	}
	if !scavengeArmed.Load() {
		t.Fatal("dropping a large buffer did not schedule a scavenge")
	}
	poll.Until(t, 15*time.Second, func() bool { return !scavengeArmed.Load() }, "waiting for the scavenge to run")
}
