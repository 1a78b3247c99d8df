package config

import "reflect"

// loopFields classifies every field of Route, and of the config types a Route holds, by
// whether the sidecar's HTTP event loop (sidecar/httpproxy/loop.go) implements it: true
// if it does, false if a route that sets the field must be served on the goroutine path.
// It is an allow-list: a field missing here fails TestLoopFieldsClassifyEveryRouteField,
// so a new route feature is not served, silently, by a loop that knows nothing of it.
var loopFields = map[string]bool{
	"Route.Name":                    true,
	"Route.Match":                   true,  // matched before the loop dispatches
	"Route.Kind":                    false, // only ActionForward (the zero kind) goes upstream
	"Route.Clusters":                true,
	"Route.TotalWeight":             true,
	"Route.Timeout":                 true,
	"Route.Retry":                   true,
	"Route.PrefixRewrite":           true,
	"Route.HostRewrite":             true,
	"Route.Mirrors":                 false, // mirroring copies the request on its own goroutine
	"Route.HashPolicies":            true,
	"Route.Redirect":                false,
	"Route.Direct":                  false,
	"Route.RequestHeadersToAdd":     true,
	"Route.RequestHeadersToRemove":  true,
	"Route.ResponseHeadersToAdd":    true,
	"Route.ResponseHeadersToRemove": true,
	"Route.Fault":                   false, // delays and aborts are the goroutine path's
	"Route.LoopSafe":                true,  // the verdict itself

	"Match.PathKind":      true,
	"Match.Path":          true,
	"Match.Regex":         true,
	"Match.CaseSensitive": true,
	"Match.Headers":       true,
	"Match.Query":         true,

	"HeaderMatch.Name":    true,
	"HeaderMatch.Present": true,
	"HeaderMatch.String":  true,
	"HeaderMatch.Invert":  true,

	"QueryMatch.Name":    true,
	"QueryMatch.Present": true,
	"QueryMatch.String":  true,

	"StringMatch.Kind":       true,
	"StringMatch.Value":      true,
	"StringMatch.Regex":      true,
	"StringMatch.IgnoreCase": true,

	"WeightedCluster.Name":                    true,
	"WeightedCluster.Weight":                  true,
	"WeightedCluster.RequestHeadersToAdd":     true,
	"WeightedCluster.RequestHeadersToRemove":  true,
	"WeightedCluster.ResponseHeadersToAdd":    true,
	"WeightedCluster.ResponseHeadersToRemove": true,

	// Both paths follow one retry policy (httpproxy/retrystate.go).
	"RetryPolicy.On":                 true,
	"RetryPolicy.NumRetries":         true,
	"RetryPolicy.PerTryTimeout":      true,
	"RetryPolicy.BaseInterval":       true,
	"RetryPolicy.MaxInterval":        true,
	"RetryPolicy.RetriableCodes":     true,
	"RetryPolicy.PreviousHosts":      true,
	"RetryPolicy.HostSelectAttempts": true,

	"HashPolicy.Kind":       true,
	"HashPolicy.Name":       true,
	"HashPolicy.Terminal":   true,
	"HashPolicy.CookieTTL":  true,
	"HashPolicy.CookiePath": true,

	"HeaderOption.Name":   true,
	"HeaderOption.Value":  true,
	"HeaderOption.Action": true,

	// Held by fields classified false above: never reached on a loop-safe route.
	"Mirror.Cluster":         false,
	"Mirror.PerMillion":      false,
	"Redirect.Scheme":        false,
	"Redirect.Host":          false,
	"Redirect.Port":          false,
	"Redirect.Path":          false,
	"Redirect.PrefixRewrite": false,
	"Redirect.Code":          false,
	"Redirect.StripQuery":    false,
	"DirectResponse.Status":  false,
	"DirectResponse.Body":    false,
	"Fault.Delay":            false,
	"Fault.DelayPerMillion":  false,
	"Fault.AbortStatus":      false,
	"Fault.AbortPerMillion":  false,
}

// loopSafe reports whether the event loop may serve r: every field r sets (holds a
// non-zero value in) is classified loop-safe in loopFields, down through the config types
// r holds. It runs once per route when a RouteConfiguration is decoded.
func loopSafe(r *Route) bool { return loopSafeValue(reflect.ValueOf(r).Elem()) }

func loopSafeValue(v reflect.Value) bool {
	t := v.Type()
	for i := range t.NumField() {
		f := v.Field(i)
		if f.IsZero() {
			continue
		}
		if !loopFields[t.Name()+"."+t.Field(i).Name] {
			return false // unclassified fields are refused too
		}
		if !loopSafeNested(f) {
			return false
		}
	}
	return true
}

// loopSafeNested looks into a loop-safe field that holds config types: a struct, a
// pointer to one, or a slice of them.
func loopSafeNested(f reflect.Value) bool {
	switch f.Kind() {
	case reflect.Pointer:
		return f.IsNil() || loopSafeNested(f.Elem())
	case reflect.Slice:
		for i := range f.Len() {
			if !loopSafeNested(f.Index(i)) {
				return false
			}
		}
	case reflect.Struct:
		if f.Type().PkgPath() == routeType.PkgPath() {
			return loopSafeValue(f)
		}
	}
	return true
}

var routeType = reflect.TypeFor[Route]()
