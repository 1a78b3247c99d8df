package xds

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/weftmesh/weft/internal/snapshot"
)

// fanout is BenchmarkEDSFanOut's connected mesh, set up once per process: the framework
// calls a benchmark more than once and connecting dwarfs a change.
type fanout struct {
	c       *Cache
	s       *Server
	cur     *snapshot.Result
	clients []*fanClient
	// target is the EDS version a change is awaited at; got counts clients that received
	// it, last is when the last one did; acks counts ACKs the server processed (OnChange).
	target   atomic.Pointer[string]
	got      atomic.Int64
	last     atomic.Int64
	acks     atomic.Int64
	bytes    atomic.Int64
	fullSize atomic.Int64
	// heap figures, bytes: retained by the translation (per route), and by the server and
	// clients per connected sidecar.
	translateHeap, perSidecarHeap uint64
	cancel                        context.CancelFunc
	seq                           int
}

type fanClient struct {
	conn *grpc.ClientConn
	st   discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node *corev3.Node
	// names are the view's assignments; subscribed is what requests carry: nothing (the
	// wildcard, as sidecar/xdsclient subscribes) or, with WEFT_EDS_BENCH_NAMES=1, every
	// name (as Envoy subscribes).
	names, subscribed []string
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

var fanoutState *fanout

// BenchmarkEDSFanOut measures one endpoint-only change at 10,000 MeshRoutes (21,000
// ClusterLoadAssignments per sidecar) reaching WEFT_EDS_BENCH_SIDECARS (default 1000)
// real ADS clients over loopback TCP, each with its own connection, spread over
// WEFT_EDS_BENCH_VIEWS views (default 100), served by the real Server. Each client
// subscribes to its view's every assignment, as a sidecar does after CDS, receives each
// response off the wire (gRPC decodes it) and ACKs it at once with its names, as a
// sidecar does; it does not build a config. It subscribes by wildcard, as
// sidecar/xdsclient does; WEFT_EDS_BENCH_NAMES=1 subscribes by name, as Envoy does, and
// every ACK then carries the 21,000 names. Per change it reports:
//
//   - deliver-ms: from SetResult (the endpoint-only Result in hand) until the last client
//     has received the new version;
//   - acked-ms: until the server has processed every client's ACK of it (what Drained
//     waits for);
//   - cpu-ms/change: the process's CPU time over that span — server and clients, which run
//     in this process;
//   - resp-B/sidecar: bytes of EDS resources per response (the change, marshaled once);
//   - update-ms: snapshot.UpdateEndpoints for the change.
//
// and, once: translate-heap-B/route (heap retained by the Result at 10,000 routes, after
// GC) and heap-KB/sidecar (heap per connected sidecar, server and client ends).
func BenchmarkEDSFanOut(b *testing.B) {
	sidecars, views := envInt(b, "WEFT_EDS_BENCH_SIDECARS", 1000), envInt(b, "WEFT_EDS_BENCH_VIEWS", 100)
	f := fanoutState
	if f == nil || len(f.clients) != sidecars {
		if f != nil {
			f.close()
		}
		f = setupFanout(b, sidecars, views)
		fanoutState = f
	}
	var deliver, acked, cpu, update time.Duration
	var respBytes int64
	// WEFT_EDS_BENCH_PROFILE=<file> profiles the changes alone (not the connecting), so
	// the server's and the clients' shares can be told apart.
	if path := os.Getenv("WEFT_EDS_BENCH_PROFILE"); path != "" {
		out, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.StartCPUProfile(out); err != nil {
			b.Fatal(err)
		}
		defer func() { pprof.StopCPUProfile(); _ = out.Close() }()
	}
	b.ResetTimer()
	for range b.N {
		// Changes never repeat across the framework's runs: a repeat changes nothing.
		f.seq++
		i := f.seq
		svc := fmt.Sprintf("svc-%d", (i*7919)%10_000)
		ns := fmt.Sprintf("ns-%d", ((i*7919)%10_000)%100)
		es := scaleSlice(ns, svc, 8080, 3, (i*7919)%10_000)
		es.Endpoints[0].Addresses = []string{fmt.Sprintf("10.201.%d.%d", i>>8&255, i&255)}
		t0 := time.Now()
		next, ok := f.cur.UpdateEndpoints(snapshot.EndpointChange{ns + "/" + svc: {es}})
		if !ok {
			b.Fatal("fast path refused")
		}
		update += time.Since(t0)
		// The new version is every view's; views without redis endpoints share it.
		res, err := next.EndpointResources(f.clients[0].view())
		if err != nil {
			b.Fatal(err)
		}
		v := res.Version
		f.target.Store(&v)
		f.got.Store(0)
		f.acks.Store(0)
		f.bytes.Store(0)
		cpu0 := cpuTime(b)
		start := time.Now()
		if err := f.c.SetResult(context.Background(), next); err != nil {
			b.Fatal(err)
		}
		for f.got.Load() < int64(sidecars) || f.acks.Load() < int64(sidecars) {
			time.Sleep(200 * time.Microsecond)
			if time.Since(start) > 30*time.Second {
				b.Fatalf("after 30s: %d of %d sidecars have version %s, %d ACKs", f.got.Load(), sidecars, v, f.acks.Load())
			}
		}
		done := time.Now()
		cpu += cpuTime(b) - cpu0
		deliver += time.Unix(0, f.last.Load()).Sub(start)
		acked += done.Sub(start)
		respBytes += f.bytes.Load()
		f.cur = next
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(deliver.Microseconds())/1e3/n, "deliver-ms")
	b.ReportMetric(float64(acked.Microseconds())/1e3/n, "acked-ms")
	b.ReportMetric(float64(cpu.Microseconds())/1e3/n, "cpu-ms/change")
	b.ReportMetric(float64(update.Microseconds())/1e3/n, "update-ms")
	b.ReportMetric(float64(respBytes)/n/float64(sidecars), "resp-B/sidecar")
	b.ReportMetric(float64(f.fullSize.Load()), "full-resp-B")
	b.ReportMetric(float64(f.translateHeap)/10_000, "translate-heap-B/route")
	b.ReportMetric(float64(f.perSidecarHeap)/1e3, "heap-KB/sidecar")
	b.ReportMetric(float64(sidecars), "sidecars")
}

func (cl *fanClient) view() snapshot.View { return snapshot.ViewFromNode(cl.node) }

func setupFanout(b *testing.B, sidecars, views int) *fanout {
	b.Helper()
	in := scaleInput()
	h0 := heapInUse()
	base := snapshot.Translate(in)
	f := &fanout{c: NewCache(), cur: base}
	f.translateHeap = heapInUse() - h0
	if err := f.c.SetResult(context.Background(), base); err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	f.s = New(f.c, Options{Listener: ln, OnChange: func() { f.acks.Add(1) }})
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	go func() { _ = f.s.Start(ctx) }()
	<-f.s.Ready()

	// One names slice per view, shared by its clients (a sidecar subscribes to every
	// assignment its CDS names).
	names := map[string][]string{}
	byName := envInt(b, "WEFT_EDS_BENCH_NAMES", 2) == 1
	h1 := heapInUse()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8) // connects in flight: each full response is several MB
	for i := 0; i < sidecars; i++ {
		n := meshNode(fmt.Sprintf("sc-%d", i), fmt.Sprintf("ns-%d", i%100), fmt.Sprintf("app-%d", i%views))
		v := snapshot.ViewFromNode(n)
		if names[v.Key()] == nil {
			res, err := base.EndpointResources(v)
			if err != nil {
				b.Fatal(err)
			}
			for name := range res.Items {
				names[v.Key()] = append(names[v.Key()], name)
			}
			sort.Strings(names[v.Key()])
		}
		cl := &fanClient{node: n, names: names[v.Key()]}
		if byName {
			cl.subscribed = cl.names
		}
		f.clients = append(f.clients, cl)
		if i == 0 {
			init, _ := base.EndpointResources(v)
			iv := init.Version
			f.target.Store(&iv)
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			f.connect(b, cl)
		}()
	}
	wg.Wait()
	want := *f.target.Load()
	for f.got.Load() < int64(sidecars) {
		time.Sleep(time.Millisecond)
	}
	for acked := 0; acked < sidecars; time.Sleep(10 * time.Millisecond) {
		acked = 0
		for _, n := range f.s.Nodes() {
			if n.Acked[resourcev3.EndpointType] == want {
				acked++
			}
		}
	}
	f.perSidecarHeap = (heapInUse() - h1) / uint64(sidecars)
	return f
}

// connect opens cl's stream, subscribes, and waits for its first (full) response; a
// goroutine then receives and ACKs every response.
func (f *fanout) connect(b *testing.B, cl *fanClient) {
	conn, err := grpc.NewClient(f.s.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		b.Error(err)
		return
	}
	cl.conn = conn
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(context.Background())
	if err != nil {
		b.Error(err)
		return
	}
	cl.st = st
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: cl.node, TypeUrl: resourcev3.EndpointType, ResourceNames: cl.subscribed}); err != nil {
		b.Error(err)
		return
	}
	first := make(chan struct{})
	go func() {
		once := sync.Once{}
		for {
			resp, err := st.Recv()
			if err != nil {
				once.Do(func() { close(first) })
				return
			}
			if resp.GetTypeUrl() != resourcev3.EndpointType {
				continue
			}
			if t := f.target.Load(); t != nil && resp.GetVersionInfo() == *t {
				size := 0
				for _, a := range resp.GetResources() {
					size += proto.Size(a)
				}
				f.bytes.Add(int64(size))
				f.last.Store(time.Now().UnixNano())
				f.got.Add(1)
				if len(resp.GetResources()) == len(cl.names) {
					f.fullSize.Store(int64(proto.Size(resp)))
				}
			}
			if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, VersionInfo: resp.GetVersionInfo(),
				ResponseNonce: resp.GetNonce(), ResourceNames: cl.subscribed}); err != nil {
				return
			}
			once.Do(func() { close(first) })
		}
	}()
	<-first
}

func (f *fanout) close() {
	for _, cl := range f.clients {
		if cl.conn != nil {
			_ = cl.conn.Close()
		}
	}
	f.cancel()
}
