// Command http is the helper behind hack/bench-http.sh: a loopback backend, a static
// sidecar config generator, and an open-loop fixed-rate latency probe (wrk2 is not
// packaged in Debian, so this stands in for `wrk -R`).
//
//	http backend -addr 127.0.0.1:18080
//	http config -listen 127.0.0.1:15001 -backend 127.0.0.1:18080 > sidecar.json
//	http rate -url http://127.0.0.1:15001/ -host svc -rps 1000 -d 10s
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: http backend|config|rate [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	var err error
	switch os.Args[1] {
	case "backend":
		addr := fs.String("addr", "127.0.0.1:18080", "listen address")
		_ = fs.Parse(os.Args[2:])
		body := []byte("hello from the weft benchmark backend\n")
		err = http.ListenAndServe(*addr, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			_, _ = w.Write(body)
		}))
	case "config":
		listen := fs.String("listen", "127.0.0.1:15001", "sidecar listener address")
		backend := fs.String("backend", "127.0.0.1:18080", "backend address")
		_ = fs.Parse(os.Args[2:])
		err = writeConfig(os.Stdout, *listen, *backend)
	case "rate":
		url := fs.String("url", "", "target URL")
		host := fs.String("host", "", "Host header")
		rps := fs.Int("rps", 1000, "requests per second")
		d := fs.Duration("d", 10*time.Second, "duration")
		_ = fs.Parse(os.Args[2:])
		err = rate(*url, *host, *rps, *d)
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func sock(hostport string) *corev3.Address {
	h, p, _ := net.SplitHostPort(hostport)
	port, _ := strconv.Atoi(p)
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: h, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)}}}}
}

// writeConfig emits the outbound listener, route and cluster the control plane would
// send for one Service, as a DiscoveryResponse-shaped JSON document.
// meshDefaultAction is the route action the control plane emits for a MeshRoute rule
// that sets neither timeout nor retries (internal/snapshot): no route timeout, and
// Istio's default of two retries on connect failures, refused streams and 503, each on a
// host not yet tried. The benchmark measures the path a mesh call takes.
func meshDefaultAction(cluster string) *routev3.RouteAction {
	pred, _ := anypb.New(&previoushostsv3.PreviousHostsPredicate{})
	return &routev3.RouteAction{
		ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
		Timeout:          durationpb.New(0),
		RetryPolicy: &routev3.RetryPolicy{
			RetryOn:              "connect-failure,refused-stream,retriable-status-codes",
			NumRetries:           wrapperspb.UInt32(2),
			RetriableStatusCodes: []uint32{503},
			RetryHostPredicate: []*routev3.RetryPolicy_RetryHostPredicate{{
				Name:       "envoy.retry_host_predicates.previous_hosts",
				ConfigType: &routev3.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: pred}}},
			HostSelectionRetryMaxAttempts: 5,
		},
	}
}

func writeConfig(w io.Writer, listen, backend string) error {
	const cluster = "outbound|80||svc.default.svc.cluster.local|default/svc"
	rc := &routev3.RouteConfiguration{Name: "outbound_http", VirtualHosts: []*routev3.VirtualHost{{
		Name: "default/svc|svc", Domains: []string{"svc", "svc:80", "svc.default", "svc.default:80"},
		Routes: []*routev3.Route{{Name: "default/svc/0/0",
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: meshDefaultAction(cluster)}}}}}}
	router, _ := anypb.New(&routerv3.Router{})
	hcm, _ := anypb.New(&hcmv3.HttpConnectionManager{StatPrefix: "outbound_http",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: rc},
		HttpFilters:    []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}}})
	l := &listenerv3.Listener{Name: "outbound_http", Address: sock(listen), FilterChains: []*listenerv3.FilterChain{{
		Filters: []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm}}}}}}
	c := &clusterv3.Cluster{Name: cluster, ConnectTimeout: durationpb.New(time.Second),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: cluster, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: sock(backend)}}}}}}}}
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

// rate sends requests on a fixed schedule (open loop) and reports latency percentiles
// measured from each request's scheduled start, so a stall is not hidden by the sender
// slowing down (coordinated omission).
func rate(url, host string, rps int, d time.Duration) error {
	tr := &http.Transport{MaxIdleConnsPerHost: 256}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	n := int(d.Seconds() * float64(rps))
	lat := make([]time.Duration, n)
	var wg sync.WaitGroup
	var errs int64
	var mu sync.Mutex
	interval := time.Second / time.Duration(rps)
	start := time.Now()
	ctx := context.Background()
	for i := range n {
		sched := start.Add(time.Duration(i) * interval)
		if w := time.Until(sched); w > 0 {
			time.Sleep(w)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if host != "" {
				req.Host = host
			}
			resp, err := client.Do(req)
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			if err != nil || resp.StatusCode != 200 {
				mu.Lock()
				errs++
				mu.Unlock()
			}
			lat[i] = time.Since(sched)
		}()
	}
	wg.Wait()
	slices.Sort(lat)
	p := func(q float64) float64 { return float64(lat[int(q*float64(n-1))].Microseconds()) / 1000 }
	fmt.Printf("rate=%d/s n=%d errors=%d p50=%.3fms p90=%.3fms p99=%.3fms p999=%.3fms max=%.3fms\n",
		rps, n, errs, p(0.5), p(0.9), p(0.99), p(0.999), p(1))
	return nil
}
