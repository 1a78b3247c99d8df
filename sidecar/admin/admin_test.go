package admin

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	redisv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/redis_proxy/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/weftmesh/weft/sidecar/config"
)

func inline(s string) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: s}}
}

type fixedStats string

func (f fixedStats) WritePrometheus(w io.Writer) { fmt.Fprint(w, string(f)) }

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestReadyOnlyAfterFirstConfig(t *testing.T) {
	var cur atomic.Pointer[config.Config]
	s := New(Options{Config: cur.Load})
	if code, _ := get(t, s.MetricsHandler(), "/ready"); code != 503 {
		t.Errorf("/ready before any config = %d, want 503", code)
	}
	cur.Store(&config.Config{})
	if code, _ := get(t, s.Handler(), "/ready"); code != 200 {
		t.Errorf("/ready after a config = %d, want 200", code)
	}
}

func TestStatsIncludesRegisteredWriters(t *testing.T) {
	s := New(Options{Config: func() *config.Config { return nil }})
	s.AddStats(fixedStats("weft_a 1\n"))
	s.AddStats(fixedStats("weft_redis_b 2\n"))
	_, body := get(t, s.MetricsHandler(), "/stats")
	if body != "weft_a 1\nweft_redis_b 2\n" {
		t.Errorf("/stats = %q", body)
	}
	if code, _ := get(t, s.MetricsHandler(), "/config_dump"); code != 404 {
		t.Errorf("/config_dump on the pod-address handler = %d, want 404 (admin only)", code)
	}
}

func TestConfigDumpRedactsInlineSecrets(t *testing.T) {
	ro, _ := anypb.New(&redisv3.RedisProtocolOptions{AuthUsername: inline("app"), AuthPassword: inline("hunter2")})
	c := &clusterv3.Cluster{Name: "redis|default/cache",
		TypedExtensionProtocolOptions: map[string]*anypb.Any{"envoy.filters.network.redis_proxy": ro}}
	rp, _ := anypb.New(&redisv3.RedisProxy{StatPrefix: "r", DownstreamAuthPasswords: []*corev3.DataSource{inline("s3cret"), inline("other")}})
	l := &listenerv3.Listener{Name: "redis|default/cache", FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
		Name: "envoy.filters.network.redis_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: rp}}}}}}
	orig := proto.Clone(c)
	cfg := &config.Config{Versions: map[string]string{resourcev3.ClusterType: "7"}, Raw: map[string]map[string]proto.Message{
		resourcev3.ClusterType: {c.Name: c}, resourcev3.ListenerType: {l.Name: l}}}
	s := New(Options{Config: func() *config.Config { return cfg }})
	_, body := get(t, s.Handler(), "/config_dump")
	for _, secret := range []string{"hunter2", "s3cret", "other"} {
		if strings.Contains(body, secret) {
			t.Errorf("config_dump leaks %q:\n%s", secret, body)
		}
	}
	if !strings.Contains(body, `"app"`) || !strings.Contains(body, `"7"`) || strings.Count(body, redacted) != 3 {
		t.Errorf("config_dump should keep the username and version and redact three secrets:\n%s", body)
	}
	if d := cmp.Diff(orig, c, protocmp.Transform()); d != "" {
		t.Errorf("redaction modified the live config (-before +after):\n%s", d)
	}
}

// /debug/exchanges passes min_age on, refuses a bad one, is 404 when nothing provides the
// list, and is not on the pod-address handler.
func TestDebugExchanges(t *testing.T) {
	var asked time.Duration
	s := New(Options{Config: func() *config.Config { return nil },
		Exchanges: func(minAge time.Duration) any { asked = minAge; return []string{"one"} }})
	if code, body := get(t, s.Handler(), "/debug/exchanges?min_age=1500ms"); code != 200 || !strings.Contains(body, `"one"`) || asked != 1500*time.Millisecond {
		t.Errorf("got %d %q asked %v; want 200 with the list, min_age 1.5s", code, body, asked)
	}
	if code, _ := get(t, s.Handler(), "/debug/exchanges?min_age=soon"); code != http.StatusBadRequest {
		t.Errorf("bad min_age: %d, want 400", code)
	}
	if code, _ := get(t, s.MetricsHandler(), "/debug/exchanges"); code != http.StatusNotFound {
		t.Errorf("pod-address handler: %d, want 404 (localhost only)", code)
	}
	if code, _ := get(t, New(Options{}).Handler(), "/debug/exchanges"); code != http.StatusNotFound {
		t.Errorf("without a provider: %d, want 404", code)
	}
}

// The execution trace is served on the admin address only: it shows every goroutine's
// stacks, so it is no more for the pod address than /config_dump is.
func TestDebugTraceOnAdminOnly(t *testing.T) {
	s := New(Options{Config: func() *config.Config { return nil }})
	code, body := get(t, s.Handler(), "/debug/pprof/trace?seconds=0.1")
	if code != 200 || !strings.HasPrefix(body, "go 1.") || !strings.Contains(body[:min(len(body), 16)], " trace") {
		t.Errorf("/debug/pprof/trace = %d, %d bytes starting %q; want 200 and a runtime trace", code, len(body), body[:min(len(body), 16)])
	}
	if code, _ := get(t, s.MetricsHandler(), "/debug/pprof/trace?seconds=0.1"); code != http.StatusNotFound {
		t.Errorf("/debug/pprof/trace on the metrics address = %d, want 404", code)
	}
}
