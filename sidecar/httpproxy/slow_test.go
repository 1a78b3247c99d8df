package httpproxy_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/weftmesh/weft/sidecar/httpproxy"
	st "github.com/weftmesh/weft/sidecar/sidecartest"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// An exchange that waits long on its upstream is listed by Proxy.Exchanges (the admin
// endpoint /debug/exchanges) with its host, its age and its connection's TCP state, on
// both paths; it leaves the list when it ends (issue 12 items 5 and 7: the diagnostics
// that tell a slow host from a vanished one).
func TestSlowExchangesAreListedWithTheirConnectionState(t *testing.T) {
	// Restored after the sidecars' cleanups, which stop the loops that read them.
	t.Cleanup(setSlowAfter(200 * time.Millisecond))
	t.Cleanup(httpproxy.SetHostSweep(100 * time.Millisecond))
	bothPaths(t, func(t *testing.T, goroutines bool) {
		arrived, release := make(chan struct{}, 1), make(chan struct{})
		slow := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) {
			arrived <- struct{}{}
			<-release
			_, _ = w.Write([]byte("late"))
		})
		cp := st.StartControlPlane(t)
		snap, cn := oneBackend([]string{slow.URL}, nil)
		cp.Set(snap)
		sc := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines})
		base := sc.URL(t, st.OutboundListenerName)
		done := make(chan string, 1)
		go func() {
			code, body, _ := st.Get(t, client, base, "reviews", "/")
			done <- http.StatusText(code) + " " + body
		}()
		<-arrived
		if es := sc.Proxy.Exchanges(0); !goroutines && len(es) != 0 {
			t.Errorf("the loop lists only exchanges older than SlowAfter; got %+v at once", es)
		}
		var es []upstream.Exchange
		st.Eventually(t, 5*time.Second, func() bool {
			es = sc.Proxy.Exchanges(200 * time.Millisecond)
			return len(es) == 1
		}, "the slow exchange is never listed")
		e := es[0]
		path := "loop"
		if goroutines {
			path = "goroutine"
		}
		if e.Path != path || e.Cluster != cn || e.Host != st.HostPort(slow.URL) || e.Age < 200*time.Millisecond {
			t.Errorf("listed %+v; want path %s, cluster %s, host %s, age >= 200ms", e, path, cn, st.HostPort(slow.URL))
		}
		if e.TCP == nil || e.TCP.State != "ESTABLISHED" || e.TCP.Unacked != 0 {
			t.Errorf("TCP state %+v; want ESTABLISHED with nothing unacknowledged (the host has the request)", e.TCP)
		}
		close(release)
		if got := <-done; got != "OK late" {
			t.Errorf("answer %q, want OK late", got)
		}
		st.Eventually(t, 5*time.Second, func() bool { return len(sc.Proxy.Exchanges(0)) == 0 }, "the finished exchange is still listed")
	})
}

func setSlowAfter(d time.Duration) func() {
	old := upstream.SlowAfter
	upstream.SlowAfter = d
	return func() { upstream.SlowAfter = old }
}
