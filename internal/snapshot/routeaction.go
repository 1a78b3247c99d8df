package snapshot

import (
	"strconv"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommonv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	previoushostsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/retry/host/previous_hosts/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
)

// defaultRetryOn is the API's documented default, Istio's minus the gRPC conditions.
var defaultRetryOn = []meshv1alpha1.RetryOn{"connect-failure", "refused-stream", "gateway-error"}

// perMillion converts a 0–100 percentage with decimals to Envoy's FractionalPercent over a
// million (value × 10 000), the finest denominator, as Istio does.
func perMillion(pct float64) *typev3.FractionalPercent {
	n := pct * 10_000
	if n < 0 {
		n = 0
	}
	if n > 1_000_000 {
		n = 1_000_000
	}
	return &typev3.FractionalPercent{Numerator: uint32(n + 0.5), Denominator: typev3.FractionalPercent_MILLION}
}

// implicitRetries is the policy of a rule that sets no retries: Istio's default of 2 retries
// on connect-failure, refused-stream and 503 (its "unavailable" and "cancelled" are gRPC
// conditions). None of these retry a request that an app may have half-processed except 503,
// which apps and proxies use for "not now".
var implicitRetries = &meshv1alpha1.HTTPRetry{
	Attempts:             2,
	RetryOn:              []meshv1alpha1.RetryOn{"connect-failure", "refused-stream", "retriable-status-codes"},
	RetriableStatusCodes: []int32{503},
}

// retryPolicy translates HTTPRetry. Attempts 0 disables retries (no policy). Numeric
// status codes ride in retriable_status_codes; previous_hosts makes a retry avoid the hosts
// already tried, except under consistent hashing where it would break affinity (Istio).
func retryPolicy(r *meshv1alpha1.HTTPRetry, consistentHash bool) *routev3.RetryPolicy {
	if r == nil || r.Attempts == 0 {
		return nil
	}
	on := r.RetryOn
	if len(on) == 0 {
		on = defaultRetryOn
	}
	conds := make([]string, len(on))
	for i, c := range on {
		conds[i] = string(c)
	}
	p := &routev3.RetryPolicy{
		RetryOn:    strings.Join(conds, ","),
		NumRetries: wrapperspb.UInt32(uint32(r.Attempts)),
	}
	for _, c := range r.RetriableStatusCodes {
		p.RetriableStatusCodes = append(p.RetriableStatusCodes, uint32(c))
	}
	if r.PerTryTimeout != nil {
		p.PerTryTimeout = durationpb.New(r.PerTryTimeout.Duration)
	}
	if r.BaseInterval != nil && r.BaseInterval.Duration > 0 {
		p.RetryBackOff = &routev3.RetryPolicy_RetryBackOff{
			BaseInterval: durationpb.New(r.BaseInterval.Duration),
			MaxInterval:  durationpb.New(10 * r.BaseInterval.Duration),
		}
	}
	if !consistentHash {
		pred, _ := anypb.New(&previoushostsv3.PreviousHostsPredicate{})
		p.RetryHostPredicate = []*routev3.RetryPolicy_RetryHostPredicate{{
			Name:       contract.PreviousHostsPredicate,
			ConfigType: &routev3.RetryPolicy_RetryHostPredicate_TypedConfig{TypedConfig: pred},
		}}
		p.HostSelectionRetryMaxAttempts = 5
	}
	return p
}

// faultConfig is the fault filter's per-route config.
func faultConfig(f *meshv1alpha1.HTTPFault) *anypb.Any {
	if f == nil {
		return nil
	}
	hf := &faultv3.HTTPFault{}
	if d := f.Delay; d != nil {
		hf.Delay = &faultcommonv3.FaultDelay{
			FaultDelaySecifier: &faultcommonv3.FaultDelay_FixedDelay{FixedDelay: durationpb.New(d.FixedDelay.Duration)},
			Percentage:         perMillion(d.Percentage),
		}
	}
	if a := f.Abort; a != nil {
		hf.Abort = &faultv3.FaultAbort{
			ErrorType:  &faultv3.FaultAbort_HttpStatus{HttpStatus: uint32(a.HTTPStatus)},
			Percentage: perMillion(a.Percentage),
		}
	}
	out, err := anypb.New(hf)
	if err != nil {
		panic(err)
	}
	return out
}

// hashPolicy feeds the ring-hash load balancer from the property the route's
// consistentHash names.
func hashPolicy(ch *meshv1alpha1.ConsistentHash) []*routev3.RouteAction_HashPolicy {
	if ch == nil {
		return nil
	}
	var hp *routev3.RouteAction_HashPolicy
	switch {
	case ch.HTTPHeaderName != nil:
		hp = &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_Header_{
			Header: &routev3.RouteAction_HashPolicy_Header{HeaderName: *ch.HTTPHeaderName}}}
	case ch.HTTPCookie != nil:
		ck := &routev3.RouteAction_HashPolicy_Cookie{Name: ch.HTTPCookie.Name}
		if ch.HTTPCookie.TTL != nil && ch.HTTPCookie.TTL.Duration > 0 {
			// With a TTL, a sidecar generates the cookie for requests that lack it.
			ck.Ttl, ck.Path = durationpb.New(ch.HTTPCookie.TTL.Duration), "/"
		}
		hp = &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_Cookie_{Cookie: ck}}
	case ch.HTTPQueryParameterName != nil:
		hp = &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_QueryParameter_{
			QueryParameter: &routev3.RouteAction_HashPolicy_QueryParameter{Name: *ch.HTTPQueryParameterName}}}
	case ch.UseSourceIP:
		hp = &routev3.RouteAction_HashPolicy{PolicySpecifier: &routev3.RouteAction_HashPolicy_ConnectionProperties_{
			ConnectionProperties: &routev3.RouteAction_HashPolicy_ConnectionProperties{SourceIp: true}}}
	default:
		return nil
	}
	return []*routev3.RouteAction_HashPolicy{hp}
}

func redirectAction(r *meshv1alpha1.HTTPRedirect) *routev3.RedirectAction {
	out := &routev3.RedirectAction{HostRedirect: r.Host, PortRedirect: uint32(r.Port)}
	if r.Scheme != "" {
		out.SchemeRewriteSpecifier = &routev3.RedirectAction_SchemeRedirect{SchemeRedirect: r.Scheme}
	}
	if r.Path != "" {
		out.PathRewriteSpecifier = &routev3.RedirectAction_PathRedirect{PathRedirect: r.Path}
	}
	switch r.StatusCode {
	case 302:
		out.ResponseCode = routev3.RedirectAction_FOUND
	case 303:
		out.ResponseCode = routev3.RedirectAction_SEE_OTHER
	case 307:
		out.ResponseCode = routev3.RedirectAction_TEMPORARY_REDIRECT
	case 308:
		out.ResponseCode = routev3.RedirectAction_PERMANENT_REDIRECT
	default:
		out.ResponseCode = routev3.RedirectAction_MOVED_PERMANENTLY
	}
	return out
}

func timeoutOf(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

func ruleName(r *meshv1alpha1.HTTPRule, i int) string {
	if r.Name != "" {
		return r.Name
	}
	return strconv.Itoa(i)
}
