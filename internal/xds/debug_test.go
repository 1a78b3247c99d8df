package xds

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/go-logr/logr"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/snapshot"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
	"github.com/weftmesh/weft/sidecar/xdsclient"
)

// startDebug serves s's debug views on 127.0.0.1 until the test ends and returns the base URL.
func startDebug(t *testing.T, s *Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	d := &DebugServer{Server: s, Listener: ln, Log: logr.Discard()}
	go func() { done <- d.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("debug server stopped with %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

func getJSON(t *testing.T, url string, want int, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("GET %s: status %d, want %d: %s", url, resp.StatusCode, want, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v in %s", url, err, b)
	}
}

// A sidecar that ACKs everything reads SYNCED for every type its view has; a raw ADS stream
// that NACKs CDS reads REJECTED with its error and STALE or NOT SENT for the types it never
// asked for; the config dump has the node's resources and never the queue's token.
func TestDebugSynczAndConfigDump(t *testing.T) {
	c := NewCache()
	ctx := context.Background()
	in := input("10.0.0.1")
	q, err := snapshot.NewQueue("nats://10.0.0.9:4222", snapshot.SharedQueueToken("s3cr3t-queue-token"))
	if err != nil {
		t.Fatal(err)
	}
	in.Queue = q
	// A function in the mesh makes every caller's view carry the queue cluster (and its
	// token), which the dump must redact.
	in = withFunction(in, true)
	if err := c.SetResult(ctx, snapshot.Translate(in)); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, c)
	base := startDebug(t, s)

	cl := xdsclient.New(xdsclient.Options{Address: s.Addr().String(), Node: node("productpage-1", "default", 9080)})
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = cl.Run(cctx) }()

	conn, err := grpc.NewClient(s.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(cctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: node("old-1", "default", 0), TypeUrl: resourcev3.ClusterType}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: resp.GetNonce(),
		ErrorDetail: &rpcstatus.Status{Code: 3, Message: "cluster weft-nats: unknown field"}}); err != nil {
		t.Fatal(err)
	}

	var z SyncZ
	poll.Until(t, 10*time.Second, func() bool {
		getJSON(t, base+"/debug/syncz", http.StatusOK, &z)
		return len(z.Nodes) == 2 && z.Nodes[0].Types["CDS"].Status == SyncRejected &&
			z.Nodes[1].Types["RDS"].Status == SyncSynced && z.Nodes[1].Types["LDS"].Status == SyncSynced
	}, "waiting for one rejected and one synced sidecar")
	old, pp := z.Nodes[0], z.Nodes[1]
	if old.ID != "old-1.default" || old.Pod != "old-1" || old.Namespace != "default" {
		t.Errorf("first node = %+v", old)
	}
	if cds := old.Types["CDS"]; cds.Error != "cluster weft-nats: unknown field" || cds.RejectedVersion != cds.Current || cds.Acked != "" {
		t.Errorf("rejected CDS = %+v", cds)
	}
	// It never subscribed to EDS: the snapshot has a version it never ACKed.
	if eds := old.Types["EDS"]; eds.Status != SyncStale || eds.Current == "" {
		t.Errorf("old sidecar's EDS = %+v, want STALE with a current version", eds)
	}
	for _, typ := range []string{"CDS", "EDS", "LDS", "RDS"} {
		if ts := pp.Types[typ]; ts.Status != SyncSynced || ts.Acked != ts.Current || ts.Current == "" {
			t.Errorf("productpage %s = %+v, want SYNCED", typ, ts)
		}
	}

	var dump ConfigDump
	getJSON(t, base+"/debug/config_dump?proxyID=productpage-1.default", http.StatusOK, &dump)
	if dump.Node.ID != "productpage-1.default" {
		t.Errorf("dump node = %q", dump.Node.ID)
	}
	if _, ok := dump.Resources["CDS"][reviewsCluster]; !ok {
		t.Errorf("dump has no cluster %s; has %v", reviewsCluster, keys(dump.Resources["CDS"]))
	}
	if _, ok := dump.Resources["LDS"][contract.InboundListenerName]; !ok {
		t.Errorf("dump has no inbound listener; has %v", keys(dump.Resources["LDS"]))
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, dump.Resources["CDS"][contract.QueueClusterName]); err != nil {
		t.Fatal(err)
	}
	nats := compact.String()
	if strings.Contains(nats, "s3cr3t") || !strings.Contains(nats, `"name":"queue/default"`) || !strings.Contains(nats, "nats://10.0.0.9:4222") {
		t.Errorf("queue cluster in the dump = %s, want no token, its secret's name and its url", nats)
	}
	// The token itself is an SDS secret: listed by name, its value redacted.
	compact.Reset()
	if err := json.Compact(&compact, dump.Resources["SDS"]["queue/default"]); err != nil {
		t.Fatalf("SDS queue/default in the dump: %v (have %v)", err, keys(dump.Resources["SDS"]))
	}
	if sds := compact.String(); strings.Contains(sds, "s3cr3t") || !strings.Contains(sds, `"[redacted]"`) {
		t.Errorf("queue secret in the dump = %s, want its value redacted", sds)
	}
	// Envoy's field names, not protojson's camelCase.
	if !strings.Contains(nats, `"filter_metadata"`) {
		t.Errorf("queue cluster not in Envoy's field names: %s", nats)
	}

	var e map[string]string
	getJSON(t, base+"/debug/config_dump?proxyID=nobody.default", http.StatusNotFound, &e)
	if !strings.Contains(e["error"], `"nobody.default"`) {
		t.Errorf("unknown node error = %q", e["error"])
	}
	getJSON(t, base+"/debug/config_dump", http.StatusBadRequest, &e)
	if !strings.Contains(e["error"], "proxyID is required") {
		t.Errorf("missing proxyID error = %q", e["error"])
	}
	resp2, err := http.Post(base+"/debug/syncz", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	if resp2.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /debug/syncz = %d, want 405: the views are read-only", resp2.StatusCode)
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestRedactJSON(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"auth_password":{"inline_string":"pw"}}`, `{"auth_password":{"inline_string":"[redacted]"}}`},
		{`{"downstream_auth_passwords":[{"inline_string":"a"},{"inline_bytes":"Yg=="}]}`,
			`{"downstream_auth_passwords":[{"inline_string":"[redacted]"},{"inline_bytes":"[redacted]"}]}`},
		{`{"weft.dev/nats":{"token":"t","url":"nats://x"}}`, `{"weft.dev/nats":{"token":"[redacted]","url":"nats://x"}}`},
		{`{"tls_certificates":[{"private_key":{"filename":"/k"},"certificate_chain":{"filename":"/c"}}]}`,
			`{"tls_certificates":[{"certificate_chain":{"filename":"/c"},"private_key":{"filename":"[redacted]"}}]}`},
		{`{"sds_secret_configs":[{"name":"default"}]}`, `{"sds_secret_configs":[{"name":"[redacted]"}]}`},
		{`{"accessToken":"x","token_bucket":{"max_tokens":5,"fill_interval":"1s"}}`,
			`{"accessToken":"[redacted]","token_bucket":{"fill_interval":"1s","max_tokens":5}}`},
		{`{"name":"password-free","port":5}`, `{"name":"password-free","port":5}`},
		{`not json "hunter2"`, `{"error":"unreadable resource, [redacted]"}`},
	} {
		if got := string(RedactJSON([]byte(tc.in))); got != tc.want {
			t.Errorf("RedactJSON(%s)\n got %s\nwant %s", tc.in, got, tc.want)
		}
	}
}

// A listen failure does not stop the manager: the debug server logs it and returns nil.
func TestDebugServerListenFailureIsNotFatal(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := &DebugServer{Server: New(NewCache(), Options{}), Address: ln.Addr().String(), Log: logr.Discard()}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.Start(ctx); err != nil {
		t.Fatalf("Start on a taken port = %v, want nil", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Start waited for the context instead of returning at once")
	}
}

// A client that never finishes its request head is disconnected (debugReadTimeout), so
// slow clients cannot hold the debug server's few connections for ever.
func TestDebugServerDropsSlowHeads(t *testing.T) {
	base := startDebug(t, New(NewCache(), Options{}))
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET /debug/syncz HTTP/1.1\r\nHost: x\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(debugReadTimeout + 10*time.Second))
	b, err := io.ReadAll(conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection with an unfinished head still open after %v", debugReadTimeout+10*time.Second)
	}
	if strings.Contains(string(b), "200 OK") {
		t.Errorf("an unfinished request was answered: %q", b)
	}
	// A complete request on a fresh connection is still served.
	var z SyncZ
	getJSON(t, base+"/debug/syncz", http.StatusOK, &z)
	if z.Nodes == nil || len(z.Nodes) != 0 {
		t.Errorf("syncz of an empty server = %+v, want an empty node list", z)
	}
}
