package xds

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/snapshot"
)

// scaleSlice is Service ns/svc's one EndpointSlice with pods endpoints numbered from base.
func scaleSlice(ns, svc string, port int32, pods, base int) discoveryv1.EndpointSlice {
	es := discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: svc + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(port)}},
	}
	for i := 0; i < pods; i++ {
		n := base*pods + i
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{fmt.Sprintf("10.%d.%d.%d", n>>16&255, n>>8&255, n&255)},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Name: fmt.Sprintf("%s-%d", svc, i)},
		})
	}
	return es
}

// scaleInput is internal/snapshot's BenchmarkTranslate input: 10,000 MeshRoutes (each with
// its own Service of 3 endpoints) and 1,000 MeshFunctions (2 pods each) in 100 namespaces.
func scaleInput() *snapshot.Input { return meshInput(10_000, 1_000, 100) }

// meshInput is scaleInput's shape at any size: routes MeshRoutes with a Service each and
// functions MeshFunctions, spread over namespaces "ns-<i>".
func meshInput(routes, functions, namespaces int) *snapshot.Input {
	in := &snapshot.Input{}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < routes; i++ {
		ns, svc := fmt.Sprintf("ns-%d", i%namespaces), fmt.Sprintf("svc-%d", i)
		in.Services = append(in.Services, corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: svc},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}})
		in.EndpointSlices = append(in.EndpointSlices, scaleSlice(ns, svc, 8080, 3, i))
		name := fmt.Sprintf("route-%d", i)
		in.MeshRoutes = append(in.MeshRoutes, meshv1alpha1.MeshRoute{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Generation: 1, CreationTimestamp: metav1.NewTime(t0.Add(time.Duration(i) * time.Second))},
			Spec: meshv1alpha1.MeshRouteSpec{Hosts: []string{name}, HTTP: []meshv1alpha1.HTTPRule{
				{Name: "api", Match: []meshv1alpha1.HTTPMatch{{Path: &meshv1alpha1.PathMatch{Type: meshv1alpha1.MatchPrefix, Value: "/api"}}},
					Route:   []meshv1alpha1.RouteDestination{{Destination: meshv1alpha1.Destination{Service: svc, Port: 80}, Weight: 1}},
					Retries: &meshv1alpha1.HTTPRetry{Attempts: 2}, Timeout: &meshv1alpha1.Duration{Duration: time.Second}},
				{Route: []meshv1alpha1.RouteDestination{{Destination: meshv1alpha1.Destination{Service: svc, Port: 80}, Weight: 1}}},
			}},
		})
	}
	for i := 0; i < functions; i++ {
		ns, fn := fmt.Sprintf("ns-%d", i%namespaces), fmt.Sprintf("fn-%d", i)
		in.MeshFunctions = append(in.MeshFunctions, meshv1alpha1.MeshFunction{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fn, Generation: 1},
			Spec: meshv1alpha1.MeshFunctionSpec{Port: 8080}})
		in.EndpointSlices = append(in.EndpointSlices, scaleSlice(ns, fn, contract.InboundPort, 2, 20_000+i))
	}
	return in
}

func envInt(b *testing.B, name string, def int) int {
	if s := os.Getenv(name); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			b.Fatalf("%s=%q: want a positive integer", name, s)
		}
		return n
	}
	return def
}

// cpuTime is the process's user + system CPU time: on a shared machine the wall time of a
// change depends on the other load, its CPU time much less.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// edsWatch is one sidecar's open EDS watch, as the ADS server opens it after the sidecar
// ACKed the view's current endpoints.
type edsWatch struct {
	view  snapshot.View
	names []string
	ch    chan cachev3.Response
}

func (w *edsWatch) open(b *testing.B, c *Cache) {
	ver := c.Versions(w.view)[resourcev3.EndpointType]
	n := &corev3.Node{Id: "bench", Metadata: snapshot.NodeMetadata(w.view)}
	req := &discoveryv3.DiscoveryRequest{Node: n, TypeUrl: resourcev3.EndpointType, VersionInfo: ver, ResourceNames: w.names}
	if _, err := c.cache.CreateWatch(req, streamv3.NewSotwSubscription(w.names, false), w.ch); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkEndpointChangeAtScale measures, per op, one EndpointSlice change at 10,000
// MeshRoutes (11,000 EDS clusters) with 1,000 sidecar views connected: from the change
// (the changed Service's slices in hand) until the last view's EDS response is built and
// marshaled by go-control-plane, as the ADS server does before writing it to the stream.
// "fast" is the endpoint-only path (snapshot.UpdateEndpoints + SetResult); "full" is a
// full Translate + SetResult, as every change took before. Responses are drained by
// GOMAXPROCS workers, as the server's stream goroutines would. It reports the change →
// last response time (ms/change), the time until the new snapshots are set (set-ms), and the
// translation step's allocations and bytes (alloc-MB, allocs).
//
// The sidecar count and the number of views they share come from WEFT_EDS_BENCH_SIDECARS
// (default 1000) and WEFT_EDS_BENCH_VIEWS (default 100, one per namespace: sidecars of one
// view share its snapshot, so the per-sidecar cost is go-control-plane's response).
func BenchmarkEndpointChangeAtScale(b *testing.B) {
	sidecars, views := envInt(b, "WEFT_EDS_BENCH_SIDECARS", 1000), envInt(b, "WEFT_EDS_BENCH_VIEWS", 100)
	in := scaleInput()
	base := snapshot.Translate(in)
	ctx := context.Background()
	// setup connects the sidecars once per mode: the benchmark framework calls a
	// sub-benchmark more than once, and the set-up dwarfs a change.
	type state struct {
		c   *Cache
		ws  []*edsWatch
		cur *snapshot.Result
		in  *snapshot.Input
	}
	states := map[string]*state{}
	setup := func(b *testing.B) *state {
		c := NewCache()
		if err := c.SetResult(ctx, base); err != nil {
			b.Fatal(err)
		}
		ws := make([]*edsWatch, sidecars)
		for i := range ws {
			v := snapshot.View{Namespace: fmt.Sprintf("ns-%d", i%100), Labels: map[string]string{"app": fmt.Sprintf("app-%d", i%views)}, AppPort: 8080}
			if err := c.addNode(ctx, v); err != nil {
				b.Fatal(err)
			}
			ws[i] = &edsWatch{view: v, ch: make(chan cachev3.Response, 1)}
		}
		// Every view subscribes to every assignment of its snapshot (the sidecar asks for
		// each EDS cluster its CDS names).
		snap, err := c.cache.GetSnapshot(ws[0].view.Key())
		if err != nil {
			b.Fatal(err)
		}
		var names []string
		for n := range snap.GetResources(resourcev3.EndpointType) {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, w := range ws {
			w.names = names
			w.open(b, c)
		}
		return &state{c: c, ws: ws, cur: base, in: in}
	}
	for _, mode := range []string{"fast", "full"} {
		b.Run(mode, func(b *testing.B) {
			st := states[mode]
			if st == nil {
				st = setup(b)
				states[mode] = st
			}
			c, ws, cur, in := st.c, st.ws, st.cur, st.in
			defer func() { st.cur, st.in = cur, in }()
			var setTotal, cpu time.Duration
			var allocs, bytes uint64
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				svc := fmt.Sprintf("svc-%d", i%10_000)
				ns := fmt.Sprintf("ns-%d", i%100)
				es := scaleSlice(ns, svc, 8080, 3, i%10_000)
				es.Endpoints[0].Addresses = []string{fmt.Sprintf("10.200.%d.%d", i>>8&255, i&255)}
				ch := snapshot.EndpointChange{ns + "/" + svc: {es}}
				var ms0, ms1 runtime.MemStats
				runtime.ReadMemStats(&ms0)
				cpu0 := cpuTime(b)
				start := time.Now()
				var next *snapshot.Result
				if mode == "fast" {
					var ok bool
					if next, ok = cur.UpdateEndpoints(ch); !ok {
						b.Fatal("fast path refused")
					}
				} else {
					in = in.WithEndpoints(ch)
					next = snapshot.Translate(in)
				}
				runtime.ReadMemStats(&ms1)
				allocs += ms1.Mallocs - ms0.Mallocs
				bytes += ms1.TotalAlloc - ms0.TotalAlloc
				var wg sync.WaitGroup
				work := make(chan *edsWatch, len(ws))
				for _, w := range ws {
					work <- w
				}
				close(work)
				for range runtime.GOMAXPROCS(0) {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for w := range work {
							resp := <-w.ch
							if _, err := resp.GetDiscoveryResponse(); err != nil {
								b.Error(err)
							}
						}
					}()
				}
				if err := c.SetResult(ctx, next); err != nil {
					b.Fatal(err)
				}
				setTotal += time.Since(start)
				wg.Wait()
				b.StopTimer()
				cpu += cpuTime(b) - cpu0
				cur = next
				for _, w := range ws {
					w.open(b, c)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/change")
			b.ReportMetric(float64(setTotal.Milliseconds())/float64(b.N), "set-ms")
			b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/change")
			b.ReportMetric(float64(bytes)/float64(b.N)/1e6, "translate-MB")
			b.ReportMetric(float64(allocs)/float64(b.N), "translate-allocs")
			b.ReportMetric(float64(sidecars), "sidecars")
			b.ReportMetric(float64(len(c.views)), "views")
		})
	}
}
