// Command grpc is the helper behind hack/bench-grpc.sh: a grpc-go backend (the health
// service), a static sidecar config that carries gRPC over HTTP/2 to one address, and a
// bounded open-loop unary load generator (ghz is not available offline).
//
//	grpc backend -addr 127.0.0.1:28280
//	grpc config -name outbound_http -listen 127.0.0.1:28201 -backend 127.0.0.1:28206 > caller.json
//	grpc rate -target 127.0.0.1:28201 -authority svc -rps 1000 -d 10s
//	grpc forward -listen 127.0.0.1:28601 -to 127.0.0.1:28606
//	grpc h2relay -listen 127.0.0.1:28801 -to 127.0.0.1:28806
//
// forward is a minimal Go TCP forwarder (a goroutine per direction, one processor), the
// reference for what the Go runtime alone adds to a chain's tail (hack/bench-grpc.sh L4=1);
// h2relay (h2relay.go) the least an HTTP/2-terminating hop does.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	httpupv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/snapshot"
)

// maxDuration and maxRate bound one run: at most 30 s and 20,000 calls a second, so a
// typo cannot start a benchmark that runs for minutes or floods the machine.
const (
	maxDuration = 30 * time.Second
	maxRate     = 20_000
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: grpc backend|config|rate|forward|h2relay [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	var err error
	switch os.Args[1] {
	case "backend":
		addr := fs.String("addr", "127.0.0.1:28280", "listen address")
		_ = fs.Parse(os.Args[2:])
		err = backend(*addr)
	case "config":
		name := fs.String("name", "outbound_http", "listener name (outbound_http, or inbound_http for the callee's sidecar)")
		listen := fs.String("listen", "127.0.0.1:28201", "sidecar listener address")
		to := fs.String("backend", "127.0.0.1:28280", "address the listener forwards to, over HTTP/2")
		_ = fs.Parse(os.Args[2:])
		err = writeConfig(os.Stdout, *name, *listen, *to)
	case "rate":
		target := fs.String("target", "", "host:port to call")
		authority := fs.String("authority", "svc", ":authority of every call")
		rps := fs.Int("rps", 1000, "calls per second")
		d := fs.Duration("d", 10*time.Second, "duration")
		pair := fs.String("pair", "", "more host:ports (comma-separated) called at the same rate, interleaved with -target's calls (one line each, in order, after -target's)")
		block := fs.Duration("block", 0, "with -pair: call one target at a time for this long, in turn, instead of interleaving calls (each target still gets -d of calls)")
		logTo := fs.String("log", "", "write every measured call as 'target call scheduled-ns ended-ns' (Unix time) to this file, for hack/bench/hoplat -calls")
		_ = fs.Parse(os.Args[2:])
		err = rate(*target, *pair, *authority, *rps, *d, *block, *logTo)
	case "forward":
		listen := fs.String("listen", "127.0.0.1:28601", "listen address")
		to := fs.String("to", "127.0.0.1:28606", "address every connection is forwarded to")
		_ = fs.Parse(os.Args[2:])
		err = forward(*listen, *to)
	case "h2relay":
		listen := fs.String("listen", "127.0.0.1:28801", "listen address")
		to := fs.String("to", "127.0.0.1:28806", "address every connection is relayed to, over h2c")
		_ = fs.Parse(os.Args[2:])
		err = h2relay(*listen, *to)
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// staticWindows (GRPC_STATIC_WINDOWS=1) gives grpc-go fixed 1 MiB flow-control windows,
// which turns off its bandwidth-delay-product estimation and with it the PING it sends
// whenever it reads DATA with no such PING outstanding.
func staticWindows() bool { return os.Getenv("GRPC_STATIC_WINDOWS") == "1" }

func backend(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	var opts []grpc.ServerOption
	if staticWindows() {
		opts = append(opts, grpc.InitialWindowSize(1<<20), grpc.InitialConnWindowSize(1<<20))
	}
	srv := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(srv, health.NewServer()) // Check("") answers SERVING
	return srv.Serve(ln)
}

// forward relays every connection to listen to a connection to to, bytes as they come,
// with plain reads and writes through the runtime's network poller on one processor.
func forward(listen, to string) error {
	return eachConn(listen, to, func(c, u net.Conn) {
		go pipe(u, c)
		pipe(c, u)
	})
}

// eachConn runs on one processor, accepts connections on listen, dials to for each and
// hands both to serve, in a goroutine of their own.
func eachConn(listen, to string, serve func(c, u net.Conn)) error {
	runtime.GOMAXPROCS(1)
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			u, err := net.Dial("tcp", to)
			if err != nil {
				fmt.Fprintf(os.Stderr, "%s: %v\n", listen, err)
				c.Close()
				return
			}
			serve(c, u)
		}()
	}
}

// pipe copies src to dst until either fails, then closes both.
func pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func sock(hostport string) *corev3.Address {
	h, p, _ := net.SplitHostPort(hostport)
	port, _ := strconv.Atoi(p)
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: h, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)}}}}
}

// writeConfig emits one listener whose every request goes to one STATIC cluster over
// HTTP/2 (explicit_http_config.http2_protocol_options, what the control plane emits for a
// grpc port), as a DiscoveryResponse-shaped JSON document for --static-config.
func writeConfig(w io.Writer, name, listen, to string) error {
	cluster := "outbound|80||svc.default.svc.cluster.local|default/svc"
	if name == "inbound_http" {
		cluster = "inbound|" + to
	}
	rc := &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{{
		Name: "svc", Domains: []string{"*"},
		Routes: []*routev3.Route{{Name: "svc/0/0",
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}, Timeout: durationpb.New(0)}}}}}}}
	router, _ := anypb.New(&routerv3.Router{})
	hcm, _ := anypb.New(&hcmv3.HttpConnectionManager{StatPrefix: name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: rc},
		HttpFilters:    []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}}})
	l := &listenerv3.Listener{Name: name, Address: sock(listen), FilterChains: []*listenerv3.FilterChain{{
		Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm}}}}}}
	po, _ := anypb.New(&httpupv3.HttpProtocolOptions{UpstreamProtocolOptions: snapshot.ExplicitHTTP2()})
	c := &clusterv3.Cluster{Name: cluster, ConnectTimeout: durationpb.New(time.Second),
		ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{contract.HTTPProtocolOptionsKey: po},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: cluster, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: sock(to)}}}}}}}}
	dr := &discoveryv3.DiscoveryResponse{}
	for _, m := range []proto.Message{l, c} {
		a, err := anypb.New(m)
		if err != nil {
			return err
		}
		dr.Resources = append(dr.Resources, a)
	}
	b, err := protojson.MarshalOptions{Multiline: true}.Marshal(dr)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// rate makes unary Health/Check calls on a fixed schedule over one gRPC connection (open
// loop) and reports latency percentiles measured from each call's scheduled start, so a
// stall is not hidden by the sender slowing down (coordinated omission). Each call has a
// 5 s deadline; in-flight calls are bounded by rps × 5 s. With pair, each further target
// gets the same schedule shifted by a fraction of the interval (half of it for one), over
// its own connection: all series then meet the same moments of the machine, and their
// differences are the paths' own. With block, the targets take turns instead, block by
// block (the whole run lasts d per target): the machine carries rps calls per second at
// every moment, as the rate asked for, and each series still samples the whole run.
func rate(target, pair, authority string, rps int, d, block time.Duration, logTo string) error {
	if target == "" {
		return errors.New("rate: -target is required")
	}
	if rps <= 0 || rps > maxRate || d <= 0 || d > maxDuration {
		return fmt.Errorf("rate: -rps must be 1..%d and -d at most %v", maxRate, maxDuration)
	}
	targets := []string{target}
	if pair != "" {
		targets = append(targets, strings.Split(pair, ",")...)
	}
	var clients []healthpb.HealthClient
	for _, t := range targets {
		opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority(authority)}
		if staticWindows() {
			opts = append(opts, grpc.WithInitialWindowSize(1<<20), grpc.WithInitialConnWindowSize(1<<20))
		}
		cc, err := grpc.NewClient("passthrough:///"+t, opts...)
		if err != nil {
			return err
		}
		defer cc.Close()
		hc := healthpb.NewHealthClient(cc)
		// Warm the connection (and the sidecars' upstream connections) before measuring.
		for i := 0; i < 100; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
			cancel()
			if err != nil {
				return fmt.Errorf("warm-up call %d to %s: %w", i, t, err)
			}
		}
		clients = append(clients, hc)
	}
	n := int(d.Seconds() * float64(rps))
	perBlock := n // calls per turn; with interleaving, one turn holds them all
	if block > 0 {
		if block > d {
			return errors.New("rate: -block must not exceed -d")
		}
		perBlock = max(1, int(block.Seconds()*float64(rps)))
		n = (n + perBlock - 1) / perBlock * perBlock // whole turns
	}
	lat := make([][]time.Duration, len(clients))
	ends := make([][]time.Time, len(clients)) // with logTo: when each call ended
	for k := range ends {
		if logTo != "" {
			ends[k] = make([]time.Time, n)
		}
	}
	for k := range lat {
		lat[k] = make([]time.Duration, n)
	}
	var wg sync.WaitGroup
	errs := make([]atomic.Int64, len(clients))
	interval := time.Second / time.Duration(rps)
	start := time.Now()
	call := func(k, i int, sched time.Time) {
		if w := time.Until(sched); w > 0 {
			time.Sleep(w)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := clients[k].Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
				errs[k].Add(1)
			}
			now := time.Now()
			lat[k][i] = now.Sub(sched)
			if ends[k] != nil {
				ends[k][i] = now
			}
		}()
	}
	if block > 0 && len(clients) > 1 {
		// Turn t calls target t mod len(clients); its calls are that target's turn t/len-th.
		for j := range n * len(clients) {
			t := j / perBlock
			k := t % len(clients)
			call(k, t/len(clients)*perBlock+j%perBlock, start.Add(time.Duration(j)*interval))
		}
	} else {
		for i := range n {
			for k := range clients {
				call(k, i, start.Add(time.Duration(i)*interval+time.Duration(k)*interval/time.Duration(len(clients))))
			}
		}
	}
	wg.Wait()
	if logTo != "" {
		if err := writeCallLog(logTo, lat, ends); err != nil {
			return err
		}
	}
	for k := range clients {
		l := lat[k]
		slices.Sort(l)
		p := func(q float64) float64 { return float64(l[int(q*float64(n-1))].Microseconds()) / 1000 }
		fmt.Printf("rate=%d/s n=%d errors=%d p50=%.3fms p90=%.3fms p99=%.3fms p999=%.3fms max=%.3fms\n",
			rps, n, errs[k].Load(), p(0.5), p(0.9), p(0.99), p(0.999), p(1))
	}
	return nil
}

// writeCallLog writes one line per measured call: the target's index (0 for -target, then
// -pair's in order), the call's index, and when it was scheduled and ended, in Unix
// nanoseconds — the clock a packet capture stamps with.
func writeCallLog(path string, lat [][]time.Duration, ends [][]time.Time) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	for k := range lat {
		for i, end := range ends[k] {
			fmt.Fprintf(w, "%d %d %d %d\n", k, i, end.Add(-lat[k][i]).UnixNano(), end.UnixNano())
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
