package sidecartest

import (
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/weftmesh/weft/contract"
)

// RouteOption edits a route.
type RouteOption func(*routev3.Route)

// Route builds a route named name (the contract's `<ns>/<name>/<rule>/<match>`).
func Route(name string, opts ...RouteOption) *routev3.Route {
	r := &routev3.Route{Name: name, Match: &routev3.RouteMatch{}}
	for _, o := range opts {
		o(r)
	}
	return r
}

// Prefix matches a path prefix.
func Prefix(p string) RouteOption {
	return func(r *routev3.Route) { r.Match.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: p} }
}

// Path matches an exact path.
func Path(p string) RouteOption {
	return func(r *routev3.Route) { r.Match.PathSpecifier = &routev3.RouteMatch_Path{Path: p} }
}

func action(r *routev3.Route) *routev3.RouteAction {
	if a := r.GetRoute(); a != nil {
		return a
	}
	a := &routev3.RouteAction{}
	r.Action = &routev3.Route_Route{Route: a}
	return a
}

// To forwards to one cluster.
func To(cluster string) RouteOption {
	return func(r *routev3.Route) {
		action(r).ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: cluster}
	}
}

// Weighted forwards to clusters in proportion to weights, given as name, weight pairs.
func Weighted(pairs ...any) RouteOption {
	return func(r *routev3.Route) {
		wc := &routev3.WeightedCluster{}
		for i := 0; i+1 < len(pairs); i += 2 {
			wc.Clusters = append(wc.Clusters, &routev3.WeightedCluster_ClusterWeight{
				Name: pairs[i].(string), Weight: wrapperspb.UInt32(uint32(pairs[i+1].(int)))})
		}
		action(r).ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: wc}
	}
}

// Timeout sets the route timeout.
func Timeout(d time.Duration) RouteOption {
	return func(r *routev3.Route) { action(r).Timeout = durationpb.New(d) }
}

// Retries sets a retry policy with the previous_hosts predicate, as the control plane does.
func Retries(on string, n int, perTry time.Duration) RouteOption {
	return func(r *routev3.Route) {
		p := &routev3.RetryPolicy{RetryOn: on, NumRetries: wrapperspb.UInt32(uint32(n)),
			RetryHostPredicate:            []*routev3.RetryPolicy_RetryHostPredicate{{Name: contract.PreviousHostsPredicate}},
			HostSelectionRetryMaxAttempts: 3}
		if perTry > 0 {
			p.PerTryTimeout = durationpb.New(perTry)
		}
		action(r).RetryPolicy = p
	}
}

// Edit applies an arbitrary change to the route, for cases the builders do not cover.
func Edit(f func(*routev3.Route)) RouteOption { return f }

// Clone deep-copies a proto, so a test can derive a bad variant from a good one.
func Clone[T proto.Message](m T) T { return proto.Clone(m).(T) }
