package httpproxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// goneHost is an upstream that answers each connection's requests until told to go, then
// does what a pod that shut down and vanished looks like from its callers: its
// connections get a FIN (the draining sidecar closed them) and nothing more, ever. The
// sockets are only half-closed here, so what a caller writes afterwards is acknowledged
// and dropped instead of drawing the RST a live kernel would send: the same silence as a
// deleted network namespace, without one. Its listener closes: a new connection is
// refused (an address whose SYNs go nowhere is TestVanishedEndpointFailsFastAndIsEjected's).
type goneHost struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	gone  bool
	after int // requests answered after go, which must stay 0
}

func startGoneHost(t *testing.T) *goneHost {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &goneHost{ln: ln}
	t.Cleanup(func() {
		ln.Close()
		g.mu.Lock()
		defer g.mu.Unlock()
		for _, c := range g.conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g.mu.Lock()
			g.conns = append(g.conns, c)
			gone := g.gone
			g.mu.Unlock()
			if !gone {
				go g.serve(c)
			}
		}
	}()
	return g
}

func (g *goneHost) serve(c net.Conn) {
	br := bufio.NewReader(c)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		g.mu.Lock()
		gone := g.gone
		if gone {
			g.after++
		}
		g.mu.Unlock()
		if gone {
			return // read and never answered
		}
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nhere")
		_ = req.Body.Close()
	}
}

// vanish sends every connection a FIN, stops answering and stops listening.
func (g *goneHost) vanish() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.gone = true
	g.ln.Close()
	for _, c := range g.conns {
		_ = c.(*net.TCPConn).CloseWrite()
	}
}

func (g *goneHost) URL() string { return "http://" + g.ln.Addr().String() }

// TestPooledConnectionsTheHostClosedAreNotReused pins the hang of issue 12 items 5 and 7:
// in the e2e outage a backend pod's sidecar closed its idle keep-alive connections when
// it began draining, the pod's network namespace went away a moment later, and the
// caller's sidecar then wrote requests on those connections: they sat in CLOSE-WAIT in
// its pool (ss showed the FIN received, Recv-Q 1), the requests stayed unacknowledged in
// the send queue, no RST could come back, and the calls got no answer until the caller
// gave up 30 s later, with Istio's retries as without. A connection whose host has closed
// it must never carry another request: every call here must be answered by the live host,
// promptly, on both paths.
func TestPooledConnectionsTheHostClosedAreNotReused(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		gone := startGoneHost(t)
		live := st.Backend(t, "live", nil)
		cp := st.StartControlPlane(t)
		// Istio's default retries: a reset before the response would be retried.
		snap, _ := oneBackend([]string{gone.URL(), live.URL},
			[]st.RouteOption{st.Retries("connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes", 2, 0)})
		cp.Set(snap)
		sc := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
		base := sc.URL(t, st.OutboundListenerName)
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
		// Fill the sidecar's pool with connections to both hosts.
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 10 {
					st.Get(t, c, base, "reviews", "/")
				}
			}()
		}
		wg.Wait()
		gone.vanish()
		time.Sleep(100 * time.Millisecond) // the FINs arrive
		for i := range 20 {
			start := time.Now()
			req, _ := http.NewRequest(http.MethodGet, base+"/", nil)
			req.Host = "reviews"
			resp, err := c.Do(req)
			if err != nil {
				t.Fatalf("call %d after the host went: no answer after %v: %v", i, time.Since(start).Round(time.Millisecond), err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Errorf("call %d: %d %q, want 200 from the live host", i, resp.StatusCode, b)
			}
		}
		// The loop watches its idle connections and drops one the host closes. The
		// goroutine path learns of the close when it next uses the connection (as
		// net/http's transport does when its read loop has not seen it yet): the request
		// it wrote is not answered, and it is sent again on a new connection.
		gone.mu.Lock()
		defer gone.mu.Unlock()
		if !goroutines && gone.after != 0 {
			t.Errorf("%d requests were written on connections the host had closed", gone.after)
		}
	})
}

// A host that answers and closes the connection at once, without Connection: close (a
// server whose keep-alive limit or idle timeout fired just then): its FIN can arrive with
// the answer, in the event that reports the answer. The connection must not go back to
// the pool: here the host reads what comes after its FIN and never answers it, as a peer
// that is gone would not, so a request written on it would wait for ever.
func TestAConnectionClosedWithItsAnswerIsNotReused(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var conns []net.Conn
		t.Cleanup(func() {
			ln.Close()
			mu.Lock()
			defer mu.Unlock()
			for _, c := range conns {
				c.Close()
			}
		})
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
				go func() {
					br := bufio.NewReader(c)
					if _, err := http.ReadRequest(br); err != nil {
						return
					}
					_, _ = c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nonce"))
					_ = c.(*net.TCPConn).CloseWrite()
					_, _ = io.Copy(io.Discard, c) // later requests are read and never answered
				}()
			}
		}()
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{"http://" + ln.Addr().String()}, nil)
		cp.Set(snap)
		sc := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
		base := sc.URL(t, st.OutboundListenerName)
		c := &http.Client{Timeout: 5 * time.Second}
		for i := range 50 {
			req, _ := http.NewRequest(http.MethodGet, base+"/", nil)
			req.Host = "reviews"
			resp, err := c.Do(req)
			if err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || string(b) != "once" {
				t.Fatalf("call %d: %d %q, want 200 once", i, resp.StatusCode, b)
			}
		}
	})
}

// A request pipelined while the one before it is being answered arrives in the socket
// while the sidecar is not reading; the goroutine path wrote the answer inside the read
// that waits for the next request (connio.Conn) and skipped that read, so it waited for a
// readiness event the poller had already dropped, and the pipelined request was never
// answered (the same fault as TestPooledConnectionsTheHostClosedAreNotReused's, on the
// caller's side).
func TestARequestPipelinedDuringTheAnswerIsServed(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		arrived, release := make(chan struct{}, 2), make(chan struct{})
		be := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/first" {
				arrived <- struct{}{}
				<-release
			}
			_, _ = io.WriteString(w, r.URL.Path)
		})
		cp := st.StartControlPlane(t)
		snap, _ := oneBackend([]string{be.URL}, nil)
		cp.Set(snap)
		base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
		c := dialRaw(t, base)
		c.write("GET /warm HTTP/1.1\r\nHost: reviews\r\n\r\n")
		if _, body := c.read(http.MethodGet); body != "/warm" {
			t.Fatalf("warm-up answer %q", body)
		}
		c.write("GET /first HTTP/1.1\r\nHost: reviews\r\n\r\n")
		<-arrived
		c.write("GET /second HTTP/1.1\r\nHost: reviews\r\n\r\n")
		time.Sleep(50 * time.Millisecond) // the second request is in the sidecar's socket
		close(release)
		for _, want := range []string{"/first", "/second"} {
			if resp, body := c.read(http.MethodGet); resp.StatusCode != 200 || body != want {
				t.Errorf("answer %d %q, want 200 %q", resp.StatusCode, body, want)
			}
		}
	})
}
