package redisproxy

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/sidecar/redisproxy/redistest"
	"github.com/weftmesh/weft/sidecar/redisproxy/resp"
	"github.com/weftmesh/weft/sidecar/redisproxy/ring"
)

// TestInlineSplitMatchesRedis sends tricky inline lines to a real
// redis-server as `RPUSH l <line>` and compares how it split them with the
// proxy's parser; unbalanced lines must get the same error.
func TestInlineSplitMatchesRedis(t *testing.T) {
	shard := redistest.StartRedis(t, 1)[0]
	lines := []string{
		`"foo bar" v1`, `"""test-key""" test-value`, `"x`, `'x`, `"a"b`, `'a'b`,
		`"\x41\x4g\n"`, `"\x41\x4"`, `"\xff\x00\XAB"`, `a"b c"`, `a'b c'd`, `"a\qb" "\"" "\\"`,
		`"\n\r\t\b\a"`, `'a\nb' 'it\'s' 'a\b'`, `'\\'`, `"" ''`, "a\vb", "\v\fa\tb \r", "\"a\"\vb",
		`"a\`, `"a\"`, `"é\xc3\xa9"`, `x\"y`, `'"' "'"`,
	}
	for _, line := range lines {
		c := redistest.Dial(t, shard.Addr)
		expectPrefix(t, c, ":", "DEL", "l")
		if err := c.WriteRaw("RPUSH l " + line + "\r\n"); err != nil {
			t.Fatal(err)
		}
		got, err := c.Read()
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		dst, spans, perr := resp.SplitInline(nil, nil, []byte(line))
		if strings.HasPrefix(got, "-") {
			if perr == nil || got != "-ERR "+perr.Error()+"\r\n" {
				t.Errorf("%q: redis says %q, the proxy's parser %v", line, got, perr)
			}
			continue
		}
		if perr != nil {
			t.Errorf("%q: redis accepts it (%q), the proxy's parser says %v", line, got, perr)
			continue
		}
		var want strings.Builder
		fmt.Fprintf(&want, "*%d\r\n", len(spans))
		for _, sp := range spans {
			want.WriteString(redistest.Bulk(string(dst[sp[0]:sp[1]])))
		}
		c2 := redistest.Dial(t, shard.Addr)
		if lr := c2.MustDo(t, "LRANGE", "l", "0", "-1"); lr != want.String() {
			t.Errorf("%q: redis split it as %q, the proxy as %q", line, lr, want.String())
		}
	}
}

// TestInlineQuotedKeyRoutesLikeRESP: an inline command is routed on the key
// Redis stores, and that key lands on the shard the RESP form uses.
func TestInlineQuotedKeyRoutesLikeRESP(t *testing.T) {
	shards := redistest.StartRedis(t, 3)
	cfg := poolOf(shards)
	_, addr := startProxy(t, cfg)
	pl := cfg.Pools[cfg.CatchAll]
	r, _ := ring.New(pl.RingOptions(), pl.RingServers(), nil, nil)
	// A key whose shard differs from the shard of its first space-split
	// word, so routing on the wrong parse is seen.
	key := ""
	for i := range 1000 {
		k := "foo bar" + strconv.Itoa(i)
		if r.Pick([]byte(k)) != r.Pick([]byte(`"foo`)) {
			key = k
			break
		}
	}
	c := redistest.Dial(t, addr)
	if err := c.WriteRaw("SET \"" + key + "\" v1\r\nGET \"" + key + "\"\r\nSET \"esc\\x41\\n\" 'it\\'s'\r\n"); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"+OK\r\n", redistest.Bulk("v1"), "+OK\r\n"} {
		if got, err := c.Read(); err != nil || got != w {
			t.Fatalf("got %q %v, want %q", got, err, w)
		}
	}
	expect(t, c, redistest.Bulk("v1"), "GET", key)
	expect(t, c, redistest.Bulk("it's"), "GET", "escA\n")
	owner := redistest.Dial(t, shards[r.Pick([]byte(key))].Addr)
	expect(t, owner, redistest.Bulk("v1"), "GET", key)
}

// TestMalformedInlineIsThatClientsError: unbalanced quotes answer that
// client alone and close it, as Redis does; the shared server connection is
// untouched, so other clients see no error and, with remap mode and a
// failure limit of 1, no shard is ejected.
func TestMalformedInlineIsThatClientsError(t *testing.T) {
	shards := redistest.StartRedis(t, 3)
	cfg := poolOf(shards, func(p *Pool) {
		p.EjectMode, p.FailureLimit, p.RetryTimeout = EjectRemap, 1, time.Minute
	})
	p, addr := startProxy(t, cfg)

	// Other clients pipeline commands on every shard meanwhile.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan string, 4)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := redistest.Dial(t, addr)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var cmds [][]string
				for j := range 20 {
					cmds = append(cmds, []string{"SET", fmt.Sprintf("w%d:%d", w, j), "v"})
				}
				if err := c.Send(cmds...); err != nil {
					errs <- err.Error()
					return
				}
				for range cmds {
					if got, err := c.Read(); err != nil || got != "+OK\r\n" {
						errs <- fmt.Sprintf("%q %v", got, err)
						return
					}
				}
			}
		}()
	}
	for i := range 15 {
		bad := redistest.Dial(t, addr)
		if err := bad.WriteRaw("GET \"x" + strconv.Itoa(i) + "\r\nPING\r\n"); err != nil {
			t.Fatal(err)
		}
		if got, err := bad.Read(); err != nil || got != "-ERR Protocol error: unbalanced quotes in request\r\n" {
			t.Fatalf("got %q %v", got, err)
		}
		if got, err := bad.Read(); err == nil {
			t.Fatalf("connection must close after unbalanced quotes, got %q", got)
		}
	}
	close(stop)
	wg.Wait()
	select {
	case e := <-errs:
		t.Fatalf("another client saw an error: %s", e)
	default:
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, u := range p.ups {
		if u.ejections.Load() != 0 || u.connErrors.Load() != 0 || u.down.Load() {
			t.Fatalf("server %s: %d ejections, %d connection errors", u.label(), u.ejections.Load(), u.connErrors.Load())
		}
	}
}

// TestInlineTooBig: an inline line over 64 KiB (PROTO_INLINE_MAX_SIZE) is
// refused with Redis's error and the client closed; the line is never sent.
func TestInlineTooBig(t *testing.T) {
	shards := redistest.StartRedis(t, 1)
	_, addr := startProxy(t, poolOf(shards))
	for _, line := range []string{"SET k " + strings.Repeat("v", resp.MaxInline) + "\r\n", strings.Repeat("v", resp.MaxInline+1)} {
		c := redistest.Dial(t, addr)
		if err := c.WriteRaw(line); err != nil {
			t.Fatal(err)
		}
		if got, err := c.Read(); err != nil || got != "-ERR Protocol error: too big inline request\r\n" {
			t.Fatalf("%d-byte line: got %q %v", len(line), got, err)
		}
		if _, err := c.Read(); err == nil {
			t.Fatal("connection must close after a too big inline request")
		}
	}
	c := redistest.Dial(t, shards[0].Addr)
	expect(t, c, "$-1\r\n", "GET", "k")
}
