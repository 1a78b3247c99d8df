package httpproxy_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"k8s.io/utils/clock"

	"github.com/weftmesh/weft/sidecar/activator"
	"github.com/weftmesh/weft/sidecar/httpproxy"
	st "github.com/weftmesh/weft/sidecar/sidecartest"
)

// activatorHolder is cmd/sidecar's adapter of the activator to httpproxy.Holder.
type activatorHolder struct{ act *activator.Activator }

func (h activatorHolder) Hold(ctx context.Context, fn httpproxy.FunctionRef) (func(), time.Duration, error) {
	return h.act.Hold(ctx, activator.FunctionRef{Namespace: fn.Namespace, Name: fn.Name, Cluster: fn.Cluster,
		HoldTimeout: fn.HoldTimeout, MaxPending: fn.MaxPending, ContainerConcurrency: fn.ContainerConcurrency})
}

func (h activatorHolder) HoldTimedOut(fn httpproxy.FunctionRef) {
	h.act.TimedOut(activator.FunctionRef{Namespace: fn.Namespace, Name: fn.Name, Cluster: fn.Cluster, HoldTimeout: fn.HoldTimeout})
}

// TestSlowStartingAppGets503AtHoldTimeout pins issue 12 item 6: a function with
// holdTimeout 2 s whose pod is Ready before its app listens. The caller's sidecar has an
// endpoint at once, so its hold ends; the function's sidecar then waited its fixed 10 s
// for the app and answered a generic 503 at 11.2 s, without Retry-After, and no hold
// timeout was counted. The caller's remaining hold now travels with the call: the
// function's sidecar answers 503 with Retry-After when it is spent, naming the function,
// and the caller's sidecar counts a hold timeout and does not retry it.
func TestSlowStartingAppGets503AtHoldTimeout(t *testing.T) {
	const hold = 2 * time.Second
	for _, goroutines := range []bool{false, true} {
		t.Run(fmt.Sprintf("goroutine-per-connection=%v", goroutines), func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			appPort := ln.Addr().(*net.TCPAddr).Port
			ln.Close() // the app has not started, and will not within the test

			fnCP := st.StartControlPlane(t)
			fnCP.Set(st.Snapshot{Listeners: []types.Resource{st.InboundListener(uint32(appPort))},
				Clusters: []types.Resource{st.InboundCluster(uint32(appPort))}})
			fnPod := st.StartSidecar(t, fnCP, st.SidecarOptions{GoroutinePerConnection: goroutines, Function: "default/fn"})
			inbound := fnPod.URL(t, st.InboundListenerName)

			act := activator.New(clock.RealClock{}, activator.DemandSinkFunc(func(string, string, int) {}))
			cp := st.StartControlPlane(t)
			snap, cn := functionSnapshot(st.Endpoint{Addr: st.HostPort(inbound)})
			snap.Clusters = []types.Resource{st.EDSCluster(cn, st.FunctionMeta("default", "fn", hold, 7))}
			// Istio's default retries, which retry a 503: the answer must not be retried.
			snap.Routes = []types.Resource{st.RouteConfig(st.VirtualHost("default/fn", "fn", "default", []int{80},
				st.Route("default/fn/0/0", st.Prefix("/"), st.To(cn),
					st.Retries("connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes,gateway-error", 2, 0))))}
			cp.Set(snap)
			caller := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines,
				Holder: activatorHolder{act}, Watcher: act})
			base := caller.URL(t, st.OutboundListenerName)

			start := time.Now()
			code, body, hdr := st.Get(t, client, base, "fn", "/")
			took := time.Since(start)
			if code != http.StatusServiceUnavailable || hdr.Get("Retry-After") != "1" ||
				!strings.Contains(body, "function default/fn is still starting") {
				t.Fatalf("got %d %q Retry-After=%q; want 503 saying function default/fn is still starting, with Retry-After 1",
					code, body, hdr.Get("Retry-After"))
			}
			if took < hold-100*time.Millisecond || took > hold+1500*time.Millisecond {
				t.Errorf("answered after %v, want at the %v hold timeout", took, hold)
			}
			var stats bytes.Buffer
			_ = act.WritePrometheus(&stats)
			if want := `weft_activator_timed_out_total{function="default/fn"} 1`; !strings.Contains(stats.String(), want) {
				t.Errorf("caller's /stats lack %s:\n%s", want, stats.String())
			}
			stats.Reset()
			fnPod.Proxy.WritePrometheus(&stats)
			if want := `weft_listener_app_start_timeouts_total{listener="inbound_http"} 1`; !strings.Contains(stats.String(), want) {
				t.Errorf("function sidecar's /stats lack %s (a retry would make it 2)", want)
			}
		})
	}
}

// The start budget is the caller's sidecar's to set: one an app sends (or copies from a
// request it got) is dropped on the way into the mesh, and none reaches an app.
func TestStartBudgetFromAnAppIsDropped(t *testing.T) {
	for _, goroutines := range []bool{false, true} {
		t.Run(fmt.Sprintf("goroutine-per-connection=%v", goroutines), func(t *testing.T) {
			seen := make(chan string, 1)
			be := st.Backend(t, "", func(w http.ResponseWriter, r *http.Request) {
				seen <- r.Header.Get("X-Weft-Start-Budget-Ms")
			})
			cp := st.StartControlPlane(t)
			snap, _ := oneBackend([]string{be.URL}, nil)
			cp.Set(snap)
			base := st.StartSidecar(t, cp, st.SidecarOptions{GoroutinePerConnection: goroutines}).URL(t, st.OutboundListenerName)
			req, _ := http.NewRequest(http.MethodGet, base+"/", nil)
			req.Host = "reviews"
			req.Header.Set("X-Weft-Start-Budget-Ms", "1")
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if v := <-seen; v != "" {
				t.Errorf("the backend got X-Weft-Start-Budget-Ms %q; the sidecar must drop it", v)
			}
		})
	}
}
