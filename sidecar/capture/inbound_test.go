package capture

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"k8s.io/utils/clock"

	// The translated routes carry these typed configs.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/httpproxy"
	"github.com/weftmesh/weft/sidecar/upstream"
)

// loadTranslated reads a sidecar/config golden input: the resources internal/snapshot
// translates for one view (kept equal to translation by the snapshot package's tests).
func loadTranslated(t testing.TB, name string) config.Resources {
	t.Helper()
	b, err := os.ReadFile("../config/testdata/" + name + ".in.json")
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string][]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	res := config.Resources{}
	for key, typ := range map[string]string{"clusters": resourcev3.ClusterType, "endpoints": resourcev3.EndpointType,
		"listeners": resourcev3.ListenerType, "routes": resourcev3.RouteType} {
		res[typ] = map[string]proto.Message{}
		for _, r := range raw[key] {
			var m proto.Message
			switch key {
			case "clusters":
				m = &clusterv3.Cluster{}
			case "endpoints":
				m = &endpointv3.ClusterLoadAssignment{}
			case "listeners":
				m = &listenerv3.Listener{}
			case "routes":
				m = &routev3.RouteConfiguration{}
			}
			if err := protojson.Unmarshal(r, m); err != nil {
				t.Fatal(err)
			}
			n := ""
			switch v := m.(type) {
			case *clusterv3.Cluster:
				n = v.GetName()
			case *endpointv3.ClusterLoadAssignment:
				n = v.GetClusterName()
			case *listenerv3.Listener:
				n = v.GetName()
			case *routev3.RouteConfiguration:
				n = v.GetName()
			}
			res[typ][n] = m
		}
	}
	return res
}

// The inbound listener as translated: a captured inbound connection to a port the pod's
// app port chain does not cover goes to 127.0.0.1:<original port> (the inbound
// passthrough), bytes unchanged both ways.
func TestInboundPassthroughFromTranslation(t *testing.T) {
	cfg, err := config.Build(loadTranslated(t, "mesh-services-inbound"), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ups := upstream.NewManager(ctx, clock.RealClock{})
	r := &ref{}
	capt := New(Options{Upstreams: ups, HTTP: r, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	px := httpproxy.New(httpproxy.Options{Upstreams: ups, Diverter: capt, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		ListenAddress: map[string]string{contract.OutboundListenerName: "127.0.0.1:0", contract.InboundListenerName: "127.0.0.1:0"}})
	r.p = px
	capt.Apply(cfg)
	if err := px.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	defer func() {
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = px.Shutdown(sctx)
	}()
	// The app's metrics port, not the app port: an echo server on 127.0.0.1.
	echo := tcpServer(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
	_, port, _ := net.SplitHostPort(echo)
	p, _ := strconv.Atoi(port)
	podIP := netip.MustParseAddr("10.0.0.5")
	s := &sidecar{px: px, capt: capt}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			capt.ServeConn(contract.InboundListenerName, c, netip.AddrPortFrom(podIP, uint16(p)))
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _ = c.Write([]byte("metrics?\n"))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := bufio.NewReader(c).ReadString('\n'); line != "metrics?\n" {
		t.Fatalf("inbound passthrough: %q %v", line, err)
	}
	if st := stats(s); !contains(st, `weft_tcp_connections_total{cluster="InboundPassthroughCluster"} 1`) {
		t.Errorf("not counted:\n%s", grep(st, "weft_tcp_connections_total"))
	}
}

func contains(s, sub string) bool { return len(grep(s, sub)) > 0 }
