package config

import (
	"errors"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestUnsupportedFieldsAreRejectedByName(t *testing.T) {
	route := func(edit func(*routev3.Route)) proto.Message {
		r := vh("v", "v").Routes[0]
		r.Name = "ns/r/0/0"
		edit(r)
		return &routev3.RouteConfiguration{Name: "outbound_http", VirtualHosts: []*routev3.VirtualHost{{Name: "v", Domains: []string{"v"}, Routes: []*routev3.Route{r}}}}
	}
	cases := []struct {
		name string
		typ  string
		res  proto.Message
		want string // substring of the error; "" means accepted
	}{
		{"plain route", resourcev3.RouteType, route(func(*routev3.Route) {}), ""},
		{"regex rewrite", resourcev3.RouteType, route(func(r *routev3.Route) {
			r.GetRoute().RegexRewrite = &matcherRegexRewrite
		}), "regex_rewrite"},
		{"cors", resourcev3.RouteType, route(func(r *routev3.Route) {
			r.GetRoute().Cors = &routev3.CorsPolicy{}
		}), "cors"},
		{"unknown retry condition", resourcev3.RouteType, route(func(r *routev3.Route) {
			r.GetRoute().RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx,envoy-ratelimited"}
		}), "envoy-ratelimited"},
		{"zero total weight", resourcev3.RouteType, route(func(r *routev3.Route) {
			r.GetRoute().ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{
				Clusters: []*routev3.WeightedCluster_ClusterWeight{{Name: "a", Weight: wrapperspb.UInt32(0)}}}}
		}), "weights sum to 0"},
		{"maglev", resourcev3.ClusterType, &clusterv3.Cluster{Name: "c", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			LbPolicy: clusterv3.Cluster_MAGLEV}, "lb_policy MAGLEV"},
		{"success-rate outlier", resourcev3.ClusterType, &clusterv3.Cluster{Name: "c", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			OutlierDetection: &clusterv3.OutlierDetection{SuccessRateMinimumHosts: wrapperspb.UInt32(3)}}, "success_rate_minimum_hosts"},
		{"murmur ring hash", resourcev3.ClusterType, &clusterv3.Cluster{Name: "c", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			LbPolicy: clusterv3.Cluster_RING_HASH, LbConfig: &clusterv3.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterv3.Cluster_RingHashLbConfig{
				HashFunction: clusterv3.Cluster_RingHashLbConfig_MURMUR_HASH_2}}}, "MURMUR_HASH_2"},
		{"header value with CRLF", resourcev3.RouteType, route(func(r *routev3.Route) {
			r.RequestHeadersToAdd = []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-a", Value: "v\r\nHost: evil"}}}
		}), "not valid HTTP"},
		{"cluster ok", resourcev3.ClusterType, &clusterv3.Cluster{Name: "c", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			ConnectTimeout: durationpb.New(1e9)}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate(tc.typ, tc.res)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("rejected: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("error %v, want one naming %q", err, tc.want)
			}
		})
	}
}

func TestBuildWaitsForReferencedResources(t *testing.T) {
	rc := &routev3.RouteConfiguration{Name: "outbound_http", VirtualHosts: []*routev3.VirtualHost{vh("missing-cluster", "x")}}
	_, err := Build(Resources{resourcev3.RouteType: {"outbound_http": rc}}, nil)
	if err != nil {
		t.Fatalf("routes alone with no listener reference nothing yet: %v", err)
	}
	c := &clusterv3.Cluster{Name: "c", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}}
	_, err = Build(Resources{resourcev3.ClusterType: {"c": c}}, nil)
	var inc *IncompleteError
	if !errors.As(err, &inc) || !strings.Contains(err.Error(), "endpoints c") {
		t.Errorf("EDS cluster without endpoints: %v, want IncompleteError naming endpoints c", err)
	}
}

var matcherRegexRewrite = matcherv3.RegexMatchAndSubstitute{Pattern: &matcherv3.RegexMatcher{Regex: "a"}, Substitution: "b"}
