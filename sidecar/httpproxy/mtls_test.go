package httpproxy_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	httpupv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/identity"
	"github.com/weftmesh/weft/sidecar/identity/identitytest"
	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

var (
	webID  = contract.SPIFFEID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "web"}
	cartID = contract.SPIFFEID{TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "cart"}
)

// meshedAddress is a loopback address on the inbound port, which marks an endpoint as
// another sidecar (upstream.Host.Meshed).
func meshedAddress(t *testing.T) string {
	t.Helper()
	return loopbackAddress(t, contract.InboundPort)
}

// loopbackAddress is a free address on port at a random 127.x.y.z, as a pod IP: random so
// parallel test binaries do not collide, and off 127.0.0.1, whose ports the machine's
// outgoing connections take (a port 127.0.0.1:0 handed out and closed was bound by
// another connection before the sidecar could listen on it, once in CI).
func loopbackAddress(t *testing.T, port int) string {
	t.Helper()
	for range 20 {
		a := fmt.Sprintf("127.%d.%d.%d:%d", 10+rand.IntN(200), rand.IntN(250), 1+rand.IntN(250), port)
		if ln, err := net.Listen("tcp", a); err == nil {
			ln.Close()
			return a
		}
	}
	t.Fatalf("no free loopback address on port %d", port)
	return ""
}

// idManager runs an identity manager with certificates from ca until the test ends.
func idManager(t *testing.T, ca *identitytest.CA, ttl time.Duration, mode string) *identity.Manager {
	t.Helper()
	m := identity.New(identity.Options{Signer: ca, TTL: ttl, Mode: mode, RetryMin: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	st.Eventually(t, 5*time.Second, func() bool { return m.Current() != nil }, "no workload certificate")
	return m
}

// webAndCartIDs runs two identity managers with certificates from one test CA: web's (the
// caller) and cart's (the callee, peer authentication mode), with lifetime ttl.
func webAndCartIDs(t *testing.T, ttl time.Duration, mode string) (ca *identitytest.CA, web, cart *identity.Manager) {
	t.Helper()
	ca, err := identitytest.New(webID)
	if err != nil {
		t.Fatal(err)
	}
	web = idManager(t, ca, ttl, "")
	ca.SetIdentity(cartID)
	cart = idManager(t, ca, ttl, mode)
	return ca, web, cart
}

type meshPair struct {
	caller, callee     *st.Sidecar
	callerID, calleeID *identity.Manager
	ca                 *identitytest.CA
	calleeAddr         string
	outbound           string // the caller's outbound base URL
	appPeers           chan string
	// cp and snap are the control plane both sidecars read and what it serves; a test
	// may change snap and Set it again (authz_test.go).
	cp   *st.ControlPlane
	snap st.Snapshot
}

// twoSidecars runs a caller sidecar (web) whose route "cart" goes to the callee sidecar
// (cart)'s inbound listener on a meshed address, in front of a real app. ttl is the
// certificates' lifetime; mode the callee's peer authentication.
func twoSidecars(t *testing.T, goroutines bool, ttl time.Duration, mode string, maxReqPerConn uint32) *meshPair {
	t.Helper()
	return sidecarPair(t, goroutines, ttl, mode, maxReqPerConn, true)
}

// sidecarPair is twoSidecars, in plaintext without withTLS.
func sidecarPair(t *testing.T, goroutines bool, ttl time.Duration, mode string, maxReqPerConn uint32, withTLS bool) *meshPair {
	t.Helper()
	app := st.Backend(t, "cart-app", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "cart-app "+r.Proto)
	})
	return sidecarPairTo(t, goroutines, ttl, mode, maxReqPerConn, withTLS, st.HostPort(app.URL))
}

// sidecarPairTo is sidecarPair in front of the app at appAddr (127.0.0.1:port).
func sidecarPairTo(t *testing.T, goroutines bool, ttl time.Duration, mode string, maxReqPerConn uint32, withTLS bool, appAddr string) *meshPair {
	t.Helper()
	p := &meshPair{appPeers: make(chan string, 1024)}
	p.ca, p.callerID, p.calleeID = webAndCartIDs(t, ttl, mode)
	_, ap, _ := net.SplitHostPort(appAddr)
	appPort, _ := strconv.Atoi(ap)
	p.calleeAddr = meshedAddress(t)
	host, port, _ := net.SplitHostPort(p.calleeAddr)
	portN, _ := strconv.Atoi(port)
	cluster := st.OutboundClusterName(80, "", "cart", "shop", "shop", "cart")
	opts := []st.ClusterOption{}
	if maxReqPerConn > 0 {
		opts = append(opts, func(c *clusterv3.Cluster) {
			po, _ := anypb.New(&httpupv3.HttpProtocolOptions{CommonHttpProtocolOptions: &corev3.HttpProtocolOptions{MaxRequestsPerConnection: wrapperspb.UInt32(maxReqPerConn)}})
			c.TypedExtensionProtocolOptions = map[string]*anypb.Any{contract.HTTPProtocolOptionsKey: po}
		})
	}
	cp := st.StartControlPlane(t)
	p.cp = cp
	p.snap = st.Snapshot{
		Listeners: []types.Resource{st.OutboundListener(), st.InboundListener(uint32(appPort))},
		Routes:    []types.Resource{st.RouteConfig(st.VirtualHost("shop/cart", "cart", "shop", []int{80}, st.Route("r", st.Prefix("/"), st.To(cluster))))},
		Clusters:  []types.Resource{st.EDSCluster(cluster, opts...), st.InboundCluster(uint32(appPort))},
		Endpoints: []types.Resource{st.Endpoints(cluster, st.Endpoint{Addr: net.JoinHostPort(host, strconv.Itoa(portN))})},
	}
	cp.Set(p.snap)
	co := st.SidecarOptions{GoroutinePerConnection: goroutines, InboundAddress: p.calleeAddr}
	ro := st.SidecarOptions{GoroutinePerConnection: goroutines}
	if withTLS {
		co.InboundTLS, co.MeshTLS = p.calleeID, p.calleeID
		ro.InboundTLS, ro.MeshTLS = p.callerID, p.callerID
	}
	p.callee = st.StartSidecar(t, cp, co)
	p.caller = st.StartSidecar(t, cp, ro)
	p.outbound = p.caller.URL(t, st.OutboundListenerName)
	_ = p.callee.URL(t, st.InboundListenerName)
	return p
}

// Caller app → caller sidecar (plaintext) → mutual TLS → callee sidecar → callee app:
// the callee counts a verified handshake and no plaintext, and sees the caller's SPIFFE
// ID on its connection and on the request context.
func TestMTLSBetweenTwoSidecars(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		p := twoSidecars(t, goroutines, 0, "", 0)
		for range 5 {
			if code, body, _ := st.Get(t, client, p.outbound, "cart", "/"); code != 200 || body != "cart-app HTTP/1.1" {
				t.Fatalf("through two sidecars: %d %q", code, body)
			}
		}
		hs, herr, plain, refused := p.callee.Proxy.MTLSCounts()
		if hs == 0 || herr != 0 || plain != 0 || refused != 0 {
			t.Errorf("callee counts: %d handshakes, %d errors, %d plaintext, %d refused; want only handshakes", hs, herr, plain, refused)
		}
		peers := p.callee.Proxy.MTLSPeers()
		if len(peers) == 0 {
			t.Fatal("the callee holds no mutual TLS peer while the caller's pooled connection is open")
		}
		for _, id := range peers {
			if id != webID {
				t.Errorf("callee sees peer %s, want %s", id, webID)
			}
		}
	})
}

// The peer's identity reaches the request context (identity.PeerFrom) only for the
// connection it was verified on; a plaintext request (any other remote) has none.
func TestMTLSPeerOnTheRequestContext(t *testing.T) {
	p := twoSidecars(t, true, 0, "", 0)
	// A connection of our own, with the caller's certificate, so we know its address.
	conn, err := tls.Dial("tcp", p.calleeAddr, p.callerID.ClientConfig([]string{"http/1.1"}))
	if err != nil {
		t.Fatalf("TLS to the callee with web's certificate: %v", err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET / HTTP/1.1\r\nHost: cart\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256)
	if n, err := conn.Read(buf); err != nil || string(buf[:9]) != "HTTP/1.1 " {
		t.Fatalf("response: %q %v", buf[:n], err)
	}
	id, ok := p.callee.Proxy.PeerOfRequest(conn.LocalAddr().String())
	if !ok || id != webID {
		t.Errorf("request context peer = %v %v, want %s", id, ok, webID)
	}
	if _, ok := p.callee.Proxy.PeerOfRequest("127.0.0.1:1"); ok {
		t.Error("a request from an address with no TLS connection carries a peer")
	}
	conn.Close()
	st.Eventually(t, 5*time.Second, func() bool { _, ok := p.callee.Proxy.PeerOfRequest(conn.LocalAddr().String()); return !ok },
		"the peer stayed after its connection closed")
}

// plainGet sends one plaintext request straight to the callee's inbound listener.
func plainGet(addr string) (int, error) {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

func TestMTLSStrictRefusesPlaintext(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		p := twoSidecars(t, goroutines, 0, contract.MTLSStrict, 0)
		if code, err := plainGet(p.calleeAddr); err == nil {
			t.Fatalf("strict callee answered plaintext with %d", code)
		}
		if code, body, _ := st.Get(t, client, p.outbound, "cart", "/"); code != 200 || body != "cart-app HTTP/1.1" {
			t.Fatalf("mutual TLS in strict mode: %d %q", code, body)
		}
		if _, _, plain, refused := p.callee.Proxy.MTLSCounts(); plain != 0 || refused != 1 {
			t.Errorf("plaintext %d, refused %d; want 0 and 1", plain, refused)
		}
	})
}

func TestMTLSPermissiveAcceptsBoth(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		p := twoSidecars(t, goroutines, 0, "", 0)
		for range 3 {
			if code, err := plainGet(p.calleeAddr); err != nil || code != 200 {
				t.Fatalf("plaintext to a permissive callee: %d %v", code, err)
			}
			if code, body, _ := st.Get(t, client, p.outbound, "cart", "/"); code != 200 || body != "cart-app HTTP/1.1" {
				t.Fatalf("mutual TLS to a permissive callee: %d %q", code, body)
			}
		}
		if hs, _, plain, _ := p.callee.Proxy.MTLSCounts(); hs == 0 || plain != 3 {
			t.Errorf("handshakes %d, plaintext %d; want some and 3", hs, plain)
		}
	})
}

// A client certificate of another CA, none at all, or garbage after a TLS record byte:
// the handshake fails and nothing reaches the app.
func TestMTLSRefusesForeignClients(t *testing.T) {
	p := twoSidecars(t, false, 0, "", 0)
	foreignCA, err := identitytest.New(webID)
	if err != nil {
		t.Fatal(err)
	}
	foreign := idManager(t, foreignCA, 0, "")
	for name, cfg := range map[string]*tls.Config{
		"another CA's certificate": foreign.ClientConfig([]string{"http/1.1"}),
		"no certificate":           {InsecureSkipVerify: true}, //nolint:gosec // the attacker
	} {
		conn, err := tls.Dial("tcp", p.calleeAddr, cfg)
		if err == nil {
			_, _ = io.WriteString(conn, "GET / HTTP/1.1\r\nHost: cart\r\n\r\n")
			_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
			n, rerr := conn.Read(make([]byte, 64))
			conn.Close()
			if rerr == nil {
				t.Errorf("%s: got %d bytes of a response", name, n)
			}
		}
	}
	raw, err := net.Dial("tcp", p.calleeAddr)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = raw.Write([]byte{0x16, 3, 1, 0, 5, 'h', 'e', 'l', 'l', 'o'})
	_ = raw.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := raw.Read(make([]byte, 64)); err == nil {
		// an alert is fine; a response is not: read until the close
		b, _ := io.ReadAll(raw)
		if len(b) > 64 {
			t.Errorf("garbage after a TLS record byte got %d bytes back", len(b))
		}
	}
	raw.Close()
	// The callee counts a failed handshake after it closes the connection, so the client
	// can be done first (seen under -race): wait for the count, boundedly.
	var herr uint64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, herr, _, _ = p.callee.Proxy.MTLSCounts(); herr >= 3 {
			break
		}
	}
	if herr < 3 {
		t.Errorf("handshake errors %d, want 3", herr)
	}
}

// Certificates of 2 s, renewed every second, a CA rotation as the manager's CA runs
// one (a new root joins the bundle; a certificate lifetime later it signs; another
// lifetime later the old root leaves the bundle), and connections that end every 5
// requests so new handshakes keep happening: 8 callers sending for 5.5 s lose no request.
func TestMTLSRotationUnderSteadyTraffic(t *testing.T) {
	bothPaths(t, func(t *testing.T, goroutines bool) {
		p := twoSidecars(t, goroutines, 2*time.Second, contract.MTLSStrict, 5)
		var ok, failed atomic.Int64
		var firstErr atomic.Value
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					req, _ := http.NewRequest(http.MethodGet, p.outbound+"/", nil)
					req.Host = "cart"
					resp, err := client.Do(req)
					if err == nil {
						b, _ := io.ReadAll(resp.Body)
						resp.Body.Close()
						if resp.StatusCode != 200 {
							err = fmt.Errorf("status %d: %s", resp.StatusCode, b)
						}
					}
					if err != nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
						continue
					}
					ok.Add(1)
				}
			}()
		}
		renewals := func(m *identity.Manager) uint64 { return m.Current().Leaf.SerialNumber.Uint64() }
		before := renewals(p.calleeID)
		time.Sleep(500 * time.Millisecond)
		if err := p.ca.AddRoot(); err != nil { // trusted by every renewal from now on
			t.Error(err)
		}
		time.Sleep(2 * time.Second) // every sidecar has renewed: both trust the new root
		p.ca.Activate()
		time.Sleep(2 * time.Second) // every certificate of the old root has expired
		p.ca.DropOldRoots()
		time.Sleep(time.Second)
		close(stop)
		wg.Wait()
		if failed.Load() != 0 {
			_, herr, _, _ := p.callee.Proxy.MTLSCounts()
			t.Errorf("%d of %d requests failed during rotation (first: %v); callee handshake errors %d", failed.Load(), ok.Load()+failed.Load(), firstErr.Load(), herr)
		}
		if ok.Load() < 100 {
			t.Errorf("only %d requests in 5.5 s", ok.Load())
		}
		if renewals(p.calleeID) == before {
			t.Error("the callee's certificate was never renewed")
		}
		if hs, _, _, _ := p.callee.Proxy.MTLSCounts(); hs < 10 {
			t.Errorf("only %d handshakes: the test did not exercise new connections", hs)
		}
	})
}

// A client that offers ALPN h2 speaks HTTP/2 over the mutual TLS connection; its peer
// identity is on the context of its requests too.
func TestMTLSInboundHTTP2OverALPN(t *testing.T) {
	p := twoSidecars(t, false, 0, contract.MTLSStrict, 0)
	var local net.Addr
	tr := &http.Transport{TLSClientConfig: p.callerID.ClientConfig([]string{"h2"}), ForceAttemptHTTP2: true,
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&tls.Dialer{Config: p.callerID.ClientConfig([]string{"h2"})}).DialContext(ctx, network, addr)
			if err == nil {
				local = c.LocalAddr()
			}
			return c, err
		}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	req, _ := http.NewRequest(http.MethodGet, "https://"+p.calleeAddr+"/", nil)
	req.Host = "cart"
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("HTTP/2 over mutual TLS: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Proto != "HTTP/2.0" {
		t.Errorf("%d %s %q, want 200 over HTTP/2.0", resp.StatusCode, resp.Proto, body)
	}
	if id, ok := p.callee.Proxy.PeerOfRequest(local.String()); !ok || id != webID {
		t.Errorf("peer of the HTTP/2 connection: %v %v, want %s", id, ok, webID)
	}
}
