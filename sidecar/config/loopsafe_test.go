package config

import (
	"reflect"
	"sort"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/weftmesh/weft/contract"
)

// configFields lists "Type.Field" for every field of t and of the config types its fields
// hold (structs, pointers to them, slices of them), each type once.
func configFields(t reflect.Type, seen map[reflect.Type]bool, out *[]string) {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || t.PkgPath() != routeType.PkgPath() || seen[t] {
		return
	}
	seen[t] = true
	for i := range t.NumField() {
		f := t.Field(i)
		*out = append(*out, t.Name()+"."+f.Name)
		configFields(f.Type, seen, out)
	}
}

// Every field of Route, and of the action and match types it holds, is classified for
// the event loop; a new one must be placed in loopFields (loopsafe.go) before the loop
// serves a route that sets it. Entries for fields that are gone fail too.
func TestLoopFieldsClassifyEveryRouteField(t *testing.T) {
	var fields []string
	configFields(routeType, map[reflect.Type]bool{}, &fields)
	if len(fields) < 40 {
		t.Fatalf("found %d fields under Route; the walk is broken", len(fields))
	}
	have := map[string]bool{}
	for _, f := range fields {
		have[f] = true
		if _, ok := loopFields[f]; !ok {
			t.Errorf("%s is not classified in loopFields: say whether the HTTP event loop implements it", f)
		}
	}
	var stale []string
	for f := range loopFields {
		if !have[f] {
			stale = append(stale, f)
		}
	}
	sort.Strings(stale)
	for _, f := range stale {
		t.Errorf("loopFields classifies %s, which Route no longer holds", f)
	}
}

// The decoder sets Route.LoopSafe from loopFields: a route using a feature only the
// goroutine path implements is not loop-safe; the features both paths share keep it so.
func TestDecodedRoutesAreLoopSafeOnlyWithoutGoroutineOnlyFeatures(t *testing.T) {
	fault, err := anypb.New(&faultv3.HTTPFault{Abort: &faultv3.FaultAbort{
		ErrorType: &faultv3.FaultAbort_HttpStatus{HttpStatus: 503}, Percentage: &typev3.FractionalPercent{Numerator: 10}}})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		edit func(*routev3.Route)
		want bool
	}{
		{"plain forward", func(*routev3.Route) {}, true},
		{"timeout, retries, hashing and header edits", func(r *routev3.Route) {
			a := r.GetRoute()
			a.Timeout = durationpb.New(time.Second)
			a.RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx,reset", PerTryTimeout: durationpb.New(time.Second)}
			a.HashPolicy = []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_Header_{
				Header: &routev3.RouteAction_HashPolicy_Header{HeaderName: "x-user"}}}}
			a.PrefixRewrite = "/v2/"
			r.ResponseHeadersToAdd = []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-a", Value: "b"}}}
		}, true},
		{"fault", func(r *routev3.Route) {
			r.TypedPerFilterConfig = map[string]*anypb.Any{contract.FaultFilterName: fault}
		}, false},
		{"mirror", func(r *routev3.Route) {
			r.GetRoute().RequestMirrorPolicies = []*routev3.RouteAction_RequestMirrorPolicy{{Cluster: "shadow"}}
		}, false},
		{"redirect", func(r *routev3.Route) {
			r.Action = &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{HostRedirect: "elsewhere"}}
		}, false},
		{"direct response", func(r *routev3.Route) {
			r.Action = &routev3.Route_DirectResponse{DirectResponse: &routev3.DirectResponseAction{Status: 204}}
		}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := vh("v", "v")
			tc.edit(v.Routes[0])
			rt, err := DecodeRouteConfig(&routev3.RouteConfiguration{Name: "outbound_http", VirtualHosts: []*routev3.VirtualHost{v}})
			if err != nil {
				t.Fatal(err)
			}
			if got := rt.VirtualHosts[0].Routes[0].LoopSafe; got != tc.want {
				t.Fatalf("LoopSafe = %v, want %v", got, tc.want)
			}
		})
	}
}

// A field missing from loopFields makes a route that sets it not loop-safe: the list
// allows, it does not deny.
func TestUnclassifiedRouteFieldIsNotLoopSafe(t *testing.T) {
	saved := loopFields["Route.HostRewrite"]
	delete(loopFields, "Route.HostRewrite")
	defer func() { loopFields["Route.HostRewrite"] = saved }()
	if loopSafe(&Route{HostRewrite: "h"}) {
		t.Fatal("a route setting an unclassified field was found loop-safe")
	}
	if !loopSafe(&Route{Retry: &RetryPolicy{NumRetries: 1}, Clusters: []WeightedCluster{{Name: "a", Weight: 1}}}) {
		t.Fatal("a route with only loop-safe fields was refused")
	}
}
