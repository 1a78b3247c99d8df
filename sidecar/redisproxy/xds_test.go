package redisproxy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	redisv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/redis_proxy/v3"
	hcredisv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/health_checkers/redis/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/config"
	"github.com/weftmesh/weft/sidecar/redisproxy/redistest"
	"github.com/weftmesh/weft/sidecar/redisproxy/ring"
)

const poolName = "redis|default/cache"

func inline(s string) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: s}}
}

func mustAny(t testing.TB, m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// xdsFixture is what docs/xds-contract.md says the control plane emits for
// one RedisProxy with two servers.
type xdsFixture struct {
	rp  *redisv3.RedisProxy
	cl  *clusterv3.Cluster
	cla *endpointv3.ClusterLoadAssignment
}

func newFixture(addrs ...string) *xdsFixture {
	rp := &redisv3.RedisProxy{
		StatPrefix: "redis_default_cache",
		Settings:   &redisv3.RedisProxy_ConnPoolSettings{OpTimeout: durationpb.New(250 * time.Millisecond), EnableHashtagging: true},
		PrefixRoutes: &redisv3.RedisProxy_PrefixRoutes{
			CatchAllRoute: &redisv3.RedisProxy_PrefixRoutes_Route{Cluster: poolName},
			Routes:        []*redisv3.RedisProxy_PrefixRoutes_Route{{Prefix: "tmp:", RemovePrefix: true, Cluster: poolName}},
		},
		DownstreamAuthPasswords: []*corev3.DataSource{inline("down")},
		DownstreamAuthUsername:  inline("app"),
	}
	md, _ := structpb.NewStruct(map[string]any{"distribution": "ketama", "hash": "murmur", "hashTag": "$$",
		"ejectMode": "fail", "failureLimit": 3, "retryTimeout": "5s"})
	cl := &clusterv3.Cluster{
		Name:     poolName,
		Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{contract.RedisMetadataKey: md}},
		HealthChecks: []*corev3.HealthCheck{{
			Interval: durationpb.New(2 * time.Second), Timeout: durationpb.New(time.Second),
			HealthyThreshold: wrapperspb.UInt32(2), UnhealthyThreshold: wrapperspb.UInt32(3),
			HealthChecker: &corev3.HealthCheck_CustomHealthCheck_{CustomHealthCheck: &corev3.HealthCheck_CustomHealthCheck{
				Name: contract.RedisHealthCheckerName, ConfigType: &corev3.HealthCheck_CustomHealthCheck_TypedConfig{TypedConfig: mustAny(nil, &hcredisv3.Redis{})}}},
		}},
	}
	cl.TypedExtensionProtocolOptions = map[string]*anypb.Any{contract.RedisFilterName: mustAny(nil, &redisv3.RedisProtocolOptions{AuthPassword: inline("up"), AuthUsername: inline("proxy")})}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: poolName, Endpoints: []*endpointv3.LocalityLbEndpoints{{}}}
	for i, a := range addrs {
		host, port, _ := strings.Cut(a, ":")
		p := uint32(0)
		for _, c := range port {
			p = p*10 + uint32(c-'0')
		}
		cla.Endpoints[0].LbEndpoints = append(cla.Endpoints[0].LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Hostname: "cache-" + string(rune('0'+i)),
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: p}}}}}},
			LoadBalancingWeight: wrapperspb.UInt32(uint32(i + 1)),
		})
	}
	return &xdsFixture{rp: rp, cl: cl, cla: cla}
}

func (f *xdsFixture) decode(t testing.TB) (Config, error) {
	l := &listenerv3.Listener{
		Name: "redis|default/cache",
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 6379}}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: contract.RedisFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(t, f.rp)}}}}},
	}
	return config.RedisConfigFromXDS(l, map[string]*clusterv3.Cluster{poolName: f.cl}, map[string]*endpointv3.ClusterLoadAssignment{poolName: f.cla})
}

func TestConfigFromXDS(t *testing.T) {
	got, err := newFixture("10.0.0.1:6379", "10.0.0.2:6380").decode(t)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Listen: "127.0.0.1:6379", StatPrefix: "redis_default_cache",
		OpTimeout:           250 * time.Millisecond,
		DownstreamPasswords: []string{"down"}, DownstreamUsername: "app",
		Routes:   []Route{{Prefix: "tmp:", RemovePrefix: true, Pool: poolName}},
		CatchAll: poolName,
		Pools: map[string]Pool{poolName: {
			Distribution: ring.Ketama, Hash: "murmur", HashTag: "$$",
			Servers:          []Server{{Name: "cache-0", Addr: "10.0.0.1:6379", Weight: 1}, {Name: "cache-1", Addr: "10.0.0.2:6380", Weight: 2}},
			UpstreamUsername: "proxy", UpstreamPassword: "up",
			EjectMode: EjectFail, FailureLimit: 3, RetryTimeout: 5 * time.Second,
			HealthCheck: &HealthCheck{Interval: 2 * time.Second, Timeout: time.Second, HealthyThreshold: 2, UnhealthyThreshold: 3},
		}},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("config mismatch (-want +got):\n%s", d)
	}
}

func TestConfigFromXDSHashtaggingDefault(t *testing.T) {
	f := newFixture("10.0.0.1:6379")
	f.cl.Metadata = nil
	got, err := f.decode(t)
	if err != nil {
		t.Fatal(err)
	}
	if pl := got.Pools[poolName]; pl.HashTag != "{}" || pl.Hash != "fnv1a_64" || pl.Distribution != ring.Ketama {
		t.Fatalf("defaults: %+v", pl)
	}
}

// TestConfigFromXDSRefuses checks that behaviour-changing fields the proxy
// does not implement are refused by name (the sidecar NACKs them).
func TestConfigFromXDSRefuses(t *testing.T) {
	cases := []struct {
		field string
		mut   func(f *xdsFixture)
	}{
		{"faults", func(f *xdsFixture) { f.rp.Faults = []*redisv3.RedisProxy_RedisFault{{}} }},
		{"custom_commands", func(f *xdsFixture) { f.rp.CustomCommands = []string{"foo"} }},
		{"settings.enable_redirection", func(f *xdsFixture) { f.rp.Settings.EnableRedirection = true }},
		{"settings.read_policy", func(f *xdsFixture) { f.rp.Settings.ReadPolicy = redisv3.RedisProxy_ConnPoolSettings_ANY }},
		{"key_formatter", func(f *xdsFixture) { f.rp.PrefixRoutes.CatchAllRoute.KeyFormatter = "{%KEY%}" }},
		{"request_mirror_policy", func(f *xdsFixture) {
			f.rp.PrefixRoutes.Routes[0].RequestMirrorPolicy = []*redisv3.RedisProxy_PrefixRoutes_Route_RequestMirrorPolicy{{Cluster: "x"}}
		}},
		{"credentials", func(f *xdsFixture) {
			f.cl.TypedExtensionProtocolOptions[contract.RedisFilterName] = mustAny(nil, &redisv3.RedisProtocolOptions{Credentials: []*redisv3.RedisProtocolOptions_Credential{{}}})
		}},
		{"only inline", func(f *xdsFixture) {
			f.rp.DownstreamAuthPasswords = []*corev3.DataSource{{Specifier: &corev3.DataSource_Filename{Filename: "/etc/pw"}}}
		}},
		{"EXISTS probe", func(f *xdsFixture) {
			f.cl.HealthChecks[0].GetCustomHealthCheck().ConfigType = &corev3.HealthCheck_CustomHealthCheck_TypedConfig{TypedConfig: mustAny(nil, &hcredisv3.Redis{Key: "maint"})}
		}},
		{"unknown key \"shards\"", func(f *xdsFixture) {
			f.cl.Metadata.FilterMetadata[contract.RedisMetadataKey].Fields["shards"] = structpb.NewNumberValue(3)
		}},
		{"unknown hash", func(f *xdsFixture) {
			f.cl.Metadata.FilterMetadata[contract.RedisMetadataKey].Fields["hash"] = structpb.NewStringValue("sha1")
		}},
		{"eject mode", func(f *xdsFixture) {
			f.cl.Metadata.FilterMetadata[contract.RedisMetadataKey].Fields["ejectMode"] = structpb.NewStringValue("drop")
		}},
		{"weight 0", func(f *xdsFixture) { f.cla.Endpoints[0].LbEndpoints[0].LoadBalancingWeight = wrapperspb.UInt32(0) }},
		{"missing from EDS", func(f *xdsFixture) { f.cla = nil }},
	}
	for _, c := range cases {
		f := newFixture("10.0.0.1:6379")
		c.mut(f)
		_, err := f.decode(t)
		if err == nil || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: err = %v, want it to name %q", c.field, err, c.field)
		}
	}
}

// TestXDSConfigServes runs a proxy from decoded xDS against real shards with
// upstream ACL auth and downstream username+password.
func TestXDSConfigServes(t *testing.T) {
	shards := redistest.StartRedis(t, 2, "--user", "proxy", "on", ">up", "~*", "&*", "+@all")
	f := newFixture(shards[0].Addr, shards[1].Addr)
	cfg, err := f.decode(t)
	if err != nil {
		t.Fatal(err)
	}
	_, addr := startProxy(t, cfg)
	c := redistest.Dial(t, addr)
	expect(t, c, "-NOAUTH Authentication required.\r\n", "GET", "k")
	expect(t, c, "+OK\r\n", "AUTH", "app", "down")
	expect(t, c, "+OK\r\n", "SET", "tmp:k", "v")
	// remove_prefix: the key is stored without "tmp:".
	found := false
	for _, s := range shards {
		if redistest.Dial(t, s.Addr).MustDo(t, "AUTH", "proxy", "up") == "+OK\r\n" {
			d := redistest.Dial(t, s.Addr)
			d.MustDo(t, "AUTH", "proxy", "up")
			if d.MustDo(t, "GET", "k") == redistest.Bulk("v") {
				found = true
			}
		}
	}
	if !found {
		t.Fatal("tmp:k was not stored as k")
	}
	expect(t, c, redistest.Bulk("v"), "GET", "tmp:k")
}

func TestConfigPrintingRedactsSecrets(t *testing.T) {
	cfg, err := newFixture("10.0.0.1:6379").decode(t)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DownstreamPasswords = []string{"down-s3cret"}
	pl := cfg.Pools[poolName]
	pl.UpstreamPassword = "up-s3cret"
	cfg.Pools[poolName] = pl
	for _, s := range []string{fmt.Sprint(cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%v", pl), fmt.Sprint(cfg.Redacted())} {
		if strings.Contains(s, "s3cret") {
			t.Fatalf("secret printed: %s", s)
		}
		if !strings.Contains(s, "[redacted]") {
			t.Fatalf("no redaction marker: %s", s)
		}
	}
	if cfg.Pools[poolName].UpstreamPassword != "up-s3cret" {
		t.Fatal("Redacted modified the original")
	}
}

// TestConfigFromXDSWithoutEndpoints: a RedisProxy whose Service has no ready pods yet gets
// an EDS assignment with no endpoints. It decodes to a pool without servers (its commands
// get -ERR) rather than failing, which would hold back every other update to the sidecar.
func TestConfigFromXDSWithoutEndpoints(t *testing.T) {
	for name, cla := range map[string]*endpointv3.ClusterLoadAssignment{
		"an empty locality": newFixture().cla,
		"no localities":     {ClusterName: poolName},
	} {
		f := newFixture()
		f.cla = cla
		cfg, err := f.decode(t)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if n := len(cfg.Pools[poolName].Servers); n != 0 {
			t.Fatalf("%s: %d servers, want none", name, n)
		}
	}
}
