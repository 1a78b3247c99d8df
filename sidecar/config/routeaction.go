package config

import (
	"fmt"
	"math"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/weftmesh/weft/contract"
)

func decodeRouteAction(a *routev3.RouteAction, out *Route, where string) error {
	if err := onlyFields(a, where+" route action", "cluster", "weighted_clusters", "timeout", "retry_policy",
		"prefix_rewrite", "host_rewrite_literal", "request_mirror_policies", "hash_policy"); err != nil {
		return err
	}
	switch c := a.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		out.Clusters = []WeightedCluster{{Name: c.Cluster, Weight: 1}}
		out.TotalWeight = 1
	case *routev3.RouteAction_WeightedClusters:
		if err := onlyFields(c.WeightedClusters, where+" weighted_clusters", "clusters", "total_weight"); err != nil {
			return err
		}
		var total uint64
		for _, wc := range c.WeightedClusters.GetClusters() {
			if err := onlyFields(wc, where+" weighted cluster "+wc.GetName(), "name", "weight",
				"request_headers_to_add", "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove"); err != nil {
				return err
			}
			w := wc.GetWeight().GetValue()
			if w == 0 {
				continue
			}
			total += uint64(w)
			cw := WeightedCluster{Name: wc.GetName(), Weight: w,
				RequestHeadersToRemove:  canonicalAll(wc.GetRequestHeadersToRemove()),
				ResponseHeadersToRemove: canonicalAll(wc.GetResponseHeadersToRemove())}
			var err error
			if cw.RequestHeadersToAdd, err = decodeHeaderOptions(wc.GetRequestHeadersToAdd(), where+" weighted cluster "+wc.GetName()); err != nil {
				return err
			}
			if cw.ResponseHeadersToAdd, err = decodeHeaderOptions(wc.GetResponseHeadersToAdd(), where+" weighted cluster "+wc.GetName()); err != nil {
				return err
			}
			out.Clusters = append(out.Clusters, cw)
		}
		if total == 0 || total > math.MaxUint32 {
			return fmt.Errorf("%s: weighted_clusters weights sum to %d; it must be within 1..%d", where, total, uint32(math.MaxUint32))
		}
		out.TotalWeight = uint32(total)
	default:
		return fmt.Errorf("%s: route action needs cluster or weighted_clusters", where)
	}
	out.Timeout = 15 * time.Second // Envoy's default route timeout
	if a.GetTimeout() != nil {
		out.Timeout = dur(a.GetTimeout())
	}
	out.PrefixRewrite = a.GetPrefixRewrite()
	out.HostRewrite = a.GetHostRewriteLiteral()
	if rp := a.GetRetryPolicy(); rp != nil {
		p, err := decodeRetry(rp, where)
		if err != nil {
			return err
		}
		out.Retry = p
	}
	for _, m := range a.GetRequestMirrorPolicies() {
		if err := onlyFields(m, where+" request_mirror_policies", "cluster", "runtime_fraction"); err != nil {
			return err
		}
		if err := onlyFields(m.GetRuntimeFraction(), where+" mirror runtime_fraction", "default_value", "runtime_key"); err != nil {
			return err
		}
		out.Mirrors = append(out.Mirrors, Mirror{Cluster: m.GetCluster(), PerMillion: perMillion(m.GetRuntimeFraction().GetDefaultValue())})
	}
	for _, h := range a.GetHashPolicy() {
		if err := onlyFields(h, where+" hash_policy", "header", "cookie", "query_parameter", "connection_properties", "terminal"); err != nil {
			return err
		}
		hp := HashPolicy{Terminal: h.GetTerminal()}
		switch s := h.GetPolicySpecifier().(type) {
		case *routev3.RouteAction_HashPolicy_Header_:
			if err := onlyFields(s.Header, where+" hash_policy.header", "header_name"); err != nil {
				return err
			}
			hp.Kind, hp.Name = HashHeader, s.Header.GetHeaderName()
		case *routev3.RouteAction_HashPolicy_Cookie_:
			if err := onlyFields(s.Cookie, where+" hash_policy.cookie", "name", "ttl", "path"); err != nil {
				return err
			}
			hp.Kind, hp.Name = HashCookie, s.Cookie.GetName()
			hp.CookieTTL, hp.CookiePath = s.Cookie.GetTtl().AsDuration(), s.Cookie.GetPath()
		case *routev3.RouteAction_HashPolicy_QueryParameter_:
			hp.Kind, hp.Name = HashQuery, s.QueryParameter.GetName()
		case *routev3.RouteAction_HashPolicy_ConnectionProperties_:
			hp.Kind = HashSourceIP
		default:
			return fmt.Errorf("%s: hash_policy without a supported specifier", where)
		}
		out.HashPolicies = append(out.HashPolicies, hp)
	}
	return nil
}

func decodeRetry(rp *routev3.RetryPolicy, where string) (*RetryPolicy, error) {
	where += " retry_policy"
	if err := onlyFields(rp, where, "retry_on", "num_retries", "per_try_timeout", "retry_back_off",
		"retriable_status_codes", "retry_host_predicate", "host_selection_retry_max_attempts"); err != nil {
		return nil, err
	}
	p := &RetryPolicy{NumRetries: 1, BaseInterval: 25 * time.Millisecond, PerTryTimeout: dur(rp.GetPerTryTimeout()),
		HostSelectAttempts: int(rp.GetHostSelectionRetryMaxAttempts())}
	if rp.GetNumRetries() != nil {
		p.NumRetries = int(rp.GetNumRetries().GetValue())
	}
	for _, c := range strings.Split(rp.GetRetryOn(), ",") {
		switch strings.TrimSpace(c) {
		case "":
		case "5xx":
			p.On |= Retry5xx
		case "gateway-error":
			p.On |= RetryGatewayError
		case "connect-failure":
			p.On |= RetryConnectFailure
		case "reset":
			p.On |= RetryReset
		case "retriable-4xx":
			p.On |= RetryRetriable4xx
		case "refused-stream":
			p.On |= RetryRefusedStream
		case "retriable-status-codes":
			p.On |= RetryRetriableStatusCodes
		case "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable":
			p.On |= grpcRetryOn(strings.TrimSpace(c)) // protocol.go
		default:
			return nil, fmt.Errorf("%s: retry_on condition %q is not supported", where, c)
		}
	}
	for _, code := range rp.GetRetriableStatusCodes() {
		p.RetriableCodes = append(p.RetriableCodes, int(code))
	}
	if b := rp.GetRetryBackOff(); b != nil {
		if err := onlyFields(b, where+".retry_back_off", "base_interval", "max_interval"); err != nil {
			return nil, err
		}
		if d := dur(b.GetBaseInterval()); d > 0 {
			p.BaseInterval = d
		}
		p.MaxInterval = dur(b.GetMaxInterval())
	}
	if p.MaxInterval <= 0 {
		p.MaxInterval = 10 * p.BaseInterval
	}
	for _, hp := range rp.GetRetryHostPredicate() {
		if hp.GetName() != contract.PreviousHostsPredicate {
			return nil, fmt.Errorf("%s: retry_host_predicate %q is not supported; use %s", where, hp.GetName(), contract.PreviousHostsPredicate)
		}
		p.PreviousHosts = true
	}
	return p, nil
}
