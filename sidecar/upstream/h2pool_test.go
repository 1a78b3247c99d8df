package upstream

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	testclock "k8s.io/utils/clock/testing"

	"github.com/weftmesh/weft/sidecar/config"
)

// h2cServer serves h2c with prior knowledge on loopback until the test ends.
func h2cServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &p, Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})}
	go srv.Serve(ln) //nolint:errcheck // ends with Close
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// hookLikeClose makes every pooled connection's close take p.mu before it returns, as
// net/http does when the closing goroutine runs the state hook itself (the read loop
// usually gets there first, so the real Close deadlocks only now and then). A close made
// with p.mu held fails the test instead of hanging it.
func hookLikeClose(t *testing.T, p *h2pool) *int {
	t.Helper()
	closes := new(int)
	orig := closeH2Conn
	t.Cleanup(func() { closeH2Conn = orig })
	closeH2Conn = func(cc *http.ClientConn) {
		*closes++
		took := make(chan struct{})
		go func() { p.mu.Lock(); p.mu.Unlock(); close(took) }() //nolint:staticcheck // the empty critical section is the point
		select {
		case <-took:
		case <-time.After(2 * time.Second):
			t.Errorf("a connection was closed with the pool's lock held: a synchronous state hook deadlocks there")
		}
		orig(cc)
	}
	return closes
}

// idleConn gives the pool one connection to addr, its state hook set, with no stream.
func idleConn(t *testing.T, p *h2pool, cl *Cluster, addr string, idle time.Duration) *h2conn {
	t.Helper()
	c := streamConn(t, p, cl, addr, idle)
	p.done(c, idle)
	return c
}

// streamConn gives the pool one connection to addr, its state hook set, with one stream
// counted on it.
func streamConn(t *testing.T, p *h2pool, cl *Cluster, addr string, idle time.Duration) *h2conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := p.conn(ctx, cl, h2Dial{}, addr, 100, MaxH2ConnsPerHost, idle, time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	// One exchange, so the peer's SETTINGS are in and the state hook has run.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	resp, err := c.cc.RoundTrip(req)
	if err != nil {
		t.Fatalf("round trip: %v", err)
	}
	resp.Body.Close()
	return c
}

// Every path that closes a pooled connection does it after unlocking the pool: the
// connection's state hook takes the pool's lock, and net/http may run it inside Close. An
// EDS update removing an HTTP/2 endpoint (closeIdle) hung the xDS client for good in CI's
// race run before that was so.
func TestH2PoolClosesConnectionsOutsideItsLock(t *testing.T) {
	clk := testclock.NewFakeClock(time.Unix(1000, 0))
	limits := config.Limits{MaxRequests: 100, MaxConnections: 10, MaxPending: 10, MaxRetries: 3}
	closed := func(t *testing.T, p *h2pool, cl *Cluster, c *h2conn, conns int) {
		t.Helper()
		if c.cc.Err() == nil {
			t.Error("the connection is still open")
		}
		if n := p.count(); n != conns {
			t.Errorf("%d connections pooled, want %d", n, conns)
		}
		if open, _, _ := cl.ConnStats(); open != conns {
			t.Errorf("%d max_connections slots held, want %d", open, conns)
		}
	}

	t.Run("idle when its host leaves the cluster", func(t *testing.T) {
		cl, _ := cluster(t, clk, 1, nil, limits)
		p := &h2pool{}
		c := idleConn(t, p, cl, h2cServer(t), 0)
		closes := hookLikeClose(t, p)
		p.closeIdle(true)
		if *closes != 1 {
			t.Errorf("%d closes, want 1", *closes)
		}
		closed(t, p, cl, c, 0)
	})

	t.Run("last stream ends after its host left", func(t *testing.T) {
		cl, _ := cluster(t, clk, 1, nil, limits)
		p := &h2pool{}
		c := streamConn(t, p, cl, h2cServer(t), 0)
		closes := hookLikeClose(t, p)
		p.closeIdle(true) // busy: stays until its stream ends
		if *closes != 0 || c.cc.Err() != nil {
			t.Fatalf("a connection with a stream was closed when its host left (%d closes)", *closes)
		}
		p.done(c, 0)
		if *closes != 1 {
			t.Errorf("%d closes, want 1", *closes)
		}
		closed(t, p, cl, c, 0)
	})

	t.Run("idle past the idle timeout, reaped by its timer", func(t *testing.T) {
		cl, _ := cluster(t, clk, 1, nil, limits)
		p := &h2pool{}
		hookLikeClose(t, p)
		c := idleConn(t, p, cl, h2cServer(t), 20*time.Millisecond)
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if open, _, _ := cl.ConnStats(); open == 0 && c.cc.Err() != nil {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		closed(t, p, cl, c, 0)
	})

	t.Run("idle past the idle timeout, swept by the next request", func(t *testing.T) {
		cl, _ := cluster(t, clk, 1, nil, limits)
		p := &h2pool{}
		addr := h2cServer(t)
		old := idleConn(t, p, cl, addr, time.Hour)
		p.mu.Lock()
		old.lastUsed = time.Now().Add(-2 * time.Hour)
		p.mu.Unlock()
		closes := hookLikeClose(t, p)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		fresh, err := p.conn(ctx, cl, h2Dial{}, addr, 100, MaxH2ConnsPerHost, time.Hour, time.Second)
		if err != nil {
			t.Fatalf("conn after the sweep: %v", err)
		}
		if fresh == old {
			t.Fatal("the request was given the connection idle past its timeout")
		}
		if *closes != 1 {
			t.Errorf("%d closes, want 1", *closes)
		}
		closed(t, p, cl, old, 1)
	})
}

// The window granted an upstream connection holds every stream's window the cluster lets
// it carry, within HTTP/2's 2^31-1 (a larger value would make net/http fall back to its
// 1 GiB default), and connections of clusters with the same setting share a transport.
func TestH2ConnectionWindowHoldsEveryStreamsWindow(t *testing.T) {
	for _, tc := range []struct{ streams, want int }{
		{config.DefaultMaxStreamsPerConn, 100 << 16},
		{1, 64 << 10},
		{1000, 1000 << 16},
		{32767, 32767 << 16},
		{1 << 31, 32767 << 16},
	} {
		cfg := h2Config(tc.streams)
		if cfg.MaxReceiveBufferPerStream != 64<<10 || cfg.MaxReceiveBufferPerConnection != tc.want {
			t.Errorf("%d streams: windows %d per stream, %d per connection; want 65536, %d",
				tc.streams, cfg.MaxReceiveBufferPerStream, cfg.MaxReceiveBufferPerConnection, tc.want)
		}
	}
	var ts h2Transports
	made := 0
	ts.make = func(cfg *http.HTTP2Config) *http.Transport { made++; return &http.Transport{HTTP2: cfg} }
	a, b, c := ts.get(100), ts.get(100), ts.get(200)
	if a != b || a == c || made != 2 || c.HTTP2.MaxReceiveBufferPerConnection != 200<<16 {
		t.Fatalf("transports for 100, 100, 200 streams: same %v, distinct %v, made %d, last window %d",
			a == b, a != c, made, c.HTTP2.MaxReceiveBufferPerConnection)
	}
	// A control plane that keeps changing the setting: at most maxH2Transports are kept,
	// and a setting past them still gets its own window.
	for n := range 1000 {
		if w := ts.get(300 + n).HTTP2.MaxReceiveBufferPerConnection; w != (300+n)<<16 {
			t.Fatalf("%d streams: window %d", 300+n, w)
		}
	}
	if len(ts.byWindow) != maxH2Transports || ts.get(100) != a {
		t.Fatalf("kept %d transports (want %d), the first still shared: %v", len(ts.byWindow), maxH2Transports, ts.get(100) == a)
	}
}
