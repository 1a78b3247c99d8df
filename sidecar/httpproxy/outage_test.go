package httpproxy_test

import (
	"fmt"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	st "github.com/weftmesh/weft/sidecar/sidecartest"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// blackhole returns an address where a TCP connect never completes, as with a pod IP that
// vanished while a caller's ARP entry for it is still valid (issue 12 item 5: the SYN goes
// out and nothing ever answers). It is a listening socket with the smallest backlog, whose
// accept queue is filled and never drained: Linux then drops further SYNs.
func blackhole(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			break // the queue is full: this SYN was dropped
		}
		t.Cleanup(func() { c.Close() })
		if i == 16 {
			t.Fatalf("%s still accepts connections after %d; cannot make a blackhole", addr, i)
		}
	}
	return addr
}

// TestVanishedEndpointFailsFastAndIsEjected pins issue 12 item 5: with the control plane
// away, a pod deleted meanwhile stays in every caller's endpoints, and connecting to its IP
// hung for the whole connect_timeout (10 s as emitted then) on every request that picked
// it. The connect must fail within the cluster's connect_timeout, and after
// DefaultConsecutiveLocalOriginFailure such failures the endpoint is ejected although the
// cluster has no outlier_detection: with retries no call fails, without retries only
// those first calls do.
func TestVanishedEndpointFailsFastAndIsEjected(t *testing.T) {
	const connectTimeout = 300 * time.Millisecond
	for _, goroutines := range []bool{false, true} {
		for _, retries := range []bool{true, false} {
			t.Run(fmt.Sprintf("goroutine-per-connection=%v/retries=%v", goroutines, retries), func(t *testing.T) {
				good := st.Backend(t, "good", nil)
				dead := "http://" + blackhole(t)
				var ropts []st.RouteOption
				if retries {
					// Istio's default retry policy.
					ropts = append(ropts, st.Retries("connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes", 2, 0))
				}
				cp := st.StartControlPlane(t)
				snap, cn := oneBackend([]string{dead, good.URL}, ropts, func(c *clusterv3.Cluster) {
					c.ConnectTimeout = durationpb.New(connectTimeout)
				})
				cp.Set(snap)
				sc := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
				base := sc.URL(t, st.OutboundListenerName)
				failed := 0
				for i := range 40 {
					start := time.Now()
					code, body, _ := st.Get(t, client, base, "reviews", "/")
					took := time.Since(start)
					if code != http.StatusOK {
						failed++
						if code != http.StatusServiceUnavailable {
							t.Errorf("call %d: %d %q, want 503 for a connect timeout", i, code, body)
						}
						if took > connectTimeout+time.Second {
							t.Errorf("call %d failed after %v; the connect timeout is %v", i, took, connectTimeout)
						}
					} else if body != "good" {
						t.Errorf("call %d: %q, want good", i, body)
					}
				}
				want := 0
				if !retries {
					want = upstream.DefaultConsecutiveLocalOriginFailure
				}
				if failed != want {
					t.Errorf("%d of 40 calls failed, want %d", failed, want)
				}
				if n := sc.Upstreams.Get(cn).Stats.Ejections.Load(); n != 1 {
					t.Errorf("%d ejections, want the vanished endpoint ejected once", n)
				}
			})
		}
	}
}
