package config

import (
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	redisv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/redis_proxy/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/weftmesh/weft/contract"
)

func rbacNet(t *testing.T, n *netrbacv3.RBAC) *listenerv3.Filter {
	a, err := anypb.New(n)
	if err != nil {
		t.Fatal(err)
	}
	return &listenerv3.Filter{Name: contract.NetworkRBACFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a}}
}

func redisListenerWith(t *testing.T, md *structpb.Struct, fs ...*listenerv3.Filter) *listenerv3.Listener {
	rp, _ := anypb.New(&redisv3.RedisProxy{StatPrefix: "p", Settings: &redisv3.RedisProxy_ConnPoolSettings{},
		PrefixRoutes: &redisv3.RedisProxy_PrefixRoutes{CatchAllRoute: &redisv3.RedisProxy_PrefixRoutes_Route{Cluster: "redis|ns/p"}}})
	fs = append(fs, &listenerv3.Filter{Name: contract.RedisFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: rp}})
	l := &listenerv3.Listener{Name: "redis|ns/p", Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 6379}}}}, FilterChains: []*listenerv3.FilterChain{{Filters: fs}}}
	if md != nil {
		l.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{contract.RedisAuthzMetadataKey: md}}
	}
	return l
}

var denyAll = &rbacconfigv3.RBAC{Action: rbacconfigv3.RBAC_DENY, Policies: map[string]*rbacconfigv3.Policy{
	"ns/p-deny/0": {Principals: []*rbacconfigv3.Principal{{Identifier: &rbacconfigv3.Principal_Any{Any: true}}},
		Permissions: []*rbacconfigv3.Permission{{Rule: &rbacconfigv3.Permission_Any{Any: true}}}}}}

// TestRedisAuthzDecode: the judged refusal decodes without clusters; anything of Envoy's
// network RBAC the proxy would not enforce as meant is refused by name (the sidecar NACKs).
func TestRedisAuthzDecode(t *testing.T) {
	judged := contract.RedisAuthzMeta{Pool: "ns/p", Judged: true, Caller: "spiffe://cluster.local/ns/ns/sa/x"}.Encode()
	cfg, err := RedisConfigWithSecrets(redisListenerWith(t, judged, rbacNet(t, &netrbacv3.RBAC{Rules: denyAll, StatPrefix: "s"})), nil, nil, nil)
	if err != nil || !cfg.Authz.Refuses() {
		t.Fatalf("judged DENY-all: %v %+v", err, cfg.Authz)
	}
	if err := Validate("type.googleapis.com/envoy.config.listener.v3.Listener", redisListenerWith(t, judged, rbacNet(t, &netrbacv3.RBAC{Rules: denyAll, StatPrefix: "s"}))); err != nil {
		t.Fatalf("the refusing listener fails the listener check: %v", err)
	}
	if ok, policy, deny := cfg.Authz.Decide(cfg.Authz.Caller); ok || policy != "ns/p-deny" || !deny {
		t.Fatalf("decision: %v %q %v", ok, policy, deny)
	}
	header := &rbacconfigv3.RBAC{Action: rbacconfigv3.RBAC_DENY, Policies: map[string]*rbacconfigv3.Policy{
		"ns/p/0": {Principals: []*rbacconfigv3.Principal{{Identifier: &rbacconfigv3.Principal_Any{Any: true}}},
			Permissions: []*rbacconfigv3.Permission{{Rule: &rbacconfigv3.Permission_Header{Header: &routev3.HeaderMatcher{Name: ":method",
				HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "GET"}}}}}}}}}}
	for _, tc := range []struct {
		name string
		l    *listenerv3.Listener
		want string
	}{
		{"filter without metadata", redisListenerWith(t, nil, rbacNet(t, &netrbacv3.RBAC{Rules: denyAll, StatPrefix: "s"})), "without weft.dev/redisAuthz metadata"},
		{"metadata without filter", redisListenerWith(t, judged), "without a envoy.filters.network.rbac filter"},
		{"shadow rules", redisListenerWith(t, judged, rbacNet(t, &netrbacv3.RBAC{Rules: denyAll, ShadowRules: denyAll, StatPrefix: "s"})), "shadow_rules"},
		{"per-read enforcement", redisListenerWith(t, judged, rbacNet(t, &netrbacv3.RBAC{Rules: denyAll, StatPrefix: "s", EnforcementType: netrbacv3.RBAC_CONTINUOUS})), "enforcement_type"},
		{"delayed denial", redisListenerWith(t, judged, rbacNet(t, &netrbacv3.RBAC{Rules: denyAll, StatPrefix: "s", DelayDeny: durationpb.New(1)})), "delay_deny"},
		{"a header permission", redisListenerWith(t, judged, rbacNet(t, &netrbacv3.RBAC{Rules: header, StatPrefix: "s"})), "may only have permissions any"},
		{"three filters", redisListenerWith(t, judged, rbacNet(t, &netrbacv3.RBAC{Rules: denyAll, StatPrefix: "s"}), rbacNet(t, &netrbacv3.RBAC{Rules: denyAll, StatPrefix: "s"}), rbacNet(t, &netrbacv3.RBAC{Rules: denyAll, StatPrefix: "s"})), "at most two"},
		{"unknown metadata key", redisListenerWith(t, &structpb.Struct{Fields: map[string]*structpb.Value{"pool": structpb.NewStringValue("ns/p"), "commands": structpb.NewStringValue("GET")}},
			rbacNet(t, &netrbacv3.RBAC{Rules: denyAll, StatPrefix: "s"})), `unknown key "commands"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := RedisConfigWithSecrets(tc.l, nil, nil, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to name %q", err, tc.want)
			}
			if err := Validate("type.googleapis.com/envoy.config.listener.v3.Listener", tc.l); err == nil {
				t.Fatalf("the listener passes the sidecar's listener check (it would be ACKed)")
			}
		})
	}
}
