package config

import (
	"fmt"
	"net/textproto"
	"regexp"
	"sort"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/weftmesh/weft/contract"
)

// DecodeRouteConfig validates a RouteConfiguration and prepares its virtual-host lookup.
func DecodeRouteConfig(rc *routev3.RouteConfiguration) (*RouteTable, error) {
	where := "route configuration " + rc.GetName()
	if err := onlyFields(rc, where, "name", "virtual_hosts", "validate_clusters"); err != nil {
		return nil, err
	}
	t := &RouteTable{Name: rc.GetName(), exact: map[string]*VirtualHost{}}
	for _, v := range rc.GetVirtualHosts() {
		vh, err := decodeVirtualHost(v, where)
		if err != nil {
			return nil, err
		}
		t.VirtualHosts = append(t.VirtualHosts, vh)
		for _, d := range vh.Domains {
			d = strings.ToLower(d)
			switch {
			case d == "*":
				if t.star != nil {
					return nil, fmt.Errorf("%s: domain * appears in two virtual hosts", where)
				}
				t.star = vh
			case strings.HasPrefix(d, "*"):
				t.suffix = append(t.suffix, wildcard{d[1:], vh})
			case strings.HasSuffix(d, "*"):
				t.prefix = append(t.prefix, wildcard{d[:len(d)-1], vh})
			default:
				if _, dup := t.exact[d]; dup {
					return nil, fmt.Errorf("%s: domain %q appears in two virtual hosts", where, d)
				}
				t.exact[d] = vh
			}
		}
	}
	// Longest wildcard wins, as in Envoy; stable so equal lengths keep config order.
	sort.SliceStable(t.suffix, func(i, j int) bool { return len(t.suffix[i].s) > len(t.suffix[j].s) })
	sort.SliceStable(t.prefix, func(i, j int) bool { return len(t.prefix[i].s) > len(t.prefix[j].s) })
	return t, nil
}

func decodeVirtualHost(v *routev3.VirtualHost, parent string) (*VirtualHost, error) {
	where := parent + " virtual host " + v.GetName()
	if err := onlyFields(v, where, "name", "domains", "routes"); err != nil {
		return nil, err
	}
	vh := &VirtualHost{Name: v.GetName(), Domains: v.GetDomains()}
	for i, r := range v.GetRoutes() {
		rt, err := decodeRoute(r, fmt.Sprintf("%s route %d (%s)", where, i, r.GetName()))
		if err != nil {
			return nil, err
		}
		vh.Routes = append(vh.Routes, rt)
	}
	return vh, nil
}

func decodeRoute(r *routev3.Route, where string) (*Route, error) {
	if err := onlyFields(r, where, "name", "match", "route", "redirect", "direct_response",
		"request_headers_to_add", "request_headers_to_remove", "response_headers_to_add",
		"response_headers_to_remove", "typed_per_filter_config", "metadata", "decorator"); err != nil {
		return nil, err
	}
	out := &Route{Name: r.GetName()}
	m, err := decodeMatch(r.GetMatch(), where)
	if err != nil {
		return nil, err
	}
	out.Match = m
	switch a := r.GetAction().(type) {
	case *routev3.Route_Route:
		out.Kind = ActionForward
		if err := decodeRouteAction(a.Route, out, where); err != nil {
			return nil, err
		}
		passthroughKind(out)
	case *routev3.Route_Redirect:
		out.Kind = ActionRedirect
		rd, err := decodeRedirect(a.Redirect, where)
		if err != nil {
			return nil, err
		}
		out.Redirect = rd
	case *routev3.Route_DirectResponse:
		out.Kind = ActionDirect
		d := a.DirectResponse
		if err := onlyFields(d, where+" direct_response", "status", "body"); err != nil {
			return nil, err
		}
		if err := onlyFields(d.GetBody(), where+" direct_response.body", "inline_string"); err != nil {
			return nil, err
		}
		out.Direct = &DirectResponse{Status: int(d.GetStatus()), Body: d.GetBody().GetInlineString()}
	default:
		return nil, fmt.Errorf("%s: route has no supported action; use route, redirect or direct_response", where)
	}
	if out.RequestHeadersToAdd, err = decodeHeaderOptions(r.GetRequestHeadersToAdd(), where); err != nil {
		return nil, err
	}
	if out.ResponseHeadersToAdd, err = decodeHeaderOptions(r.GetResponseHeadersToAdd(), where); err != nil {
		return nil, err
	}
	out.RequestHeadersToRemove = canonicalAll(r.GetRequestHeadersToRemove())
	out.ResponseHeadersToRemove = canonicalAll(r.GetResponseHeadersToRemove())
	for name, anyCfg := range r.GetTypedPerFilterConfig() {
		if name != contract.FaultFilterName {
			return nil, fmt.Errorf("%s: typed_per_filter_config %q is not supported", where, name)
		}
		var f faultv3.HTTPFault
		if err := anyCfg.UnmarshalTo(&f); err != nil {
			return nil, fmt.Errorf("%s: decoding fault config: %w", where, err)
		}
		if out.Fault, err = decodeFault(&f, where); err != nil {
			return nil, err
		}
	}
	out.LoopSafe = loopSafe(out)
	return out, nil
}

func canonicalAll(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = textproto.CanonicalMIMEHeaderKey(n)
	}
	return out
}

func decodeFault(f *faultv3.HTTPFault, where string) (*Fault, error) {
	where += " fault"
	if err := onlyFields(f, where, "delay", "abort"); err != nil {
		return nil, err
	}
	out := &Fault{}
	if d := f.GetDelay(); d != nil {
		if err := onlyFields(d, where+".delay", "fixed_delay", "percentage"); err != nil {
			return nil, err
		}
		out.Delay = dur(d.GetFixedDelay())
		out.DelayPerMillion = perMillion(d.GetPercentage())
	}
	if a := f.GetAbort(); a != nil {
		if err := onlyFields(a, where+".abort", "http_status", "percentage"); err != nil {
			return nil, err
		}
		out.AbortStatus = int(a.GetHttpStatus())
		if out.AbortStatus < 200 || out.AbortStatus > 599 {
			return nil, fmt.Errorf("%s: abort.http_status %d must be within 200..599", where, out.AbortStatus)
		}
		out.AbortPerMillion = perMillion(a.GetPercentage())
	}
	return out, nil
}

func decodeMatch(m *routev3.RouteMatch, where string) (Match, error) {
	var out Match
	if m == nil {
		return out, fmt.Errorf("%s: route has no match", where)
	}
	if err := onlyFields(m, where+" match", "path", "prefix", "safe_regex", "headers", "query_parameters", "case_sensitive"); err != nil {
		return out, err
	}
	out.CaseSensitive = m.GetCaseSensitive() == nil || m.GetCaseSensitive().GetValue()
	switch p := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		out.PathKind, out.Path = PathPrefix, p.Prefix
	case *routev3.RouteMatch_Path:
		out.PathKind, out.Path = PathExact, p.Path
	case *routev3.RouteMatch_SafeRegex:
		re, err := compileRegex(p.SafeRegex, where)
		if err != nil {
			return out, err
		}
		out.PathKind, out.Regex = PathRegex, re
	default:
		return out, fmt.Errorf("%s: match has no supported path specifier; use path, prefix or safe_regex", where)
	}
	if !out.CaseSensitive && out.PathKind != PathRegex {
		out.Path = strings.ToLower(out.Path)
	}
	for _, h := range m.GetHeaders() {
		if err := onlyFields(h, where+" header match "+h.GetName(), "name", "string_match", "present_match", "invert_match"); err != nil {
			return out, err
		}
		hm := HeaderMatch{Name: h.GetName(), Invert: h.GetInvertMatch()}
		if !strings.HasPrefix(hm.Name, ":") {
			hm.Name = textproto.CanonicalMIMEHeaderKey(hm.Name)
		}
		switch s := h.GetHeaderMatchSpecifier().(type) {
		case *routev3.HeaderMatcher_StringMatch:
			sm, err := decodeStringMatch(s.StringMatch, where)
			if err != nil {
				return out, err
			}
			hm.String = sm
		case *routev3.HeaderMatcher_PresentMatch:
			hm.Present = true
			if !s.PresentMatch {
				hm.Invert = !hm.Invert
			}
		default:
			hm.Present = true // no specifier: the header must be present
		}
		out.Headers = append(out.Headers, hm)
	}
	for _, q := range m.GetQueryParameters() {
		if err := onlyFields(q, where+" query match "+q.GetName(), "name", "string_match", "present_match"); err != nil {
			return out, err
		}
		qm := QueryMatch{Name: q.GetName(), Present: q.GetPresentMatch()}
		if sm := q.GetStringMatch(); sm != nil {
			d, err := decodeStringMatch(sm, where)
			if err != nil {
				return out, err
			}
			qm.String = d
		} else {
			qm.Present = true
		}
		out.Query = append(out.Query, qm)
	}
	return out, nil
}

func decodeStringMatch(s *matcherv3.StringMatcher, where string) (*StringMatch, error) {
	if err := onlyFields(s, where+" string match", "exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case"); err != nil {
		return nil, err
	}
	out := &StringMatch{IgnoreCase: s.GetIgnoreCase()}
	switch p := s.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		out.Kind, out.Value = StringExact, p.Exact
	case *matcherv3.StringMatcher_Prefix:
		out.Kind, out.Value = StringPrefix, p.Prefix
	case *matcherv3.StringMatcher_Suffix:
		out.Kind, out.Value = StringSuffix, p.Suffix
	case *matcherv3.StringMatcher_Contains:
		out.Kind, out.Value = StringContains, p.Contains
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := compileRegex(p.SafeRegex, where)
		if err != nil {
			return nil, err
		}
		out.Kind, out.Regex = StringRegex, re
	default:
		return nil, fmt.Errorf("%s: string match has no supported pattern", where)
	}
	if out.IgnoreCase {
		out.Value = strings.ToLower(out.Value)
	}
	return out, nil
}

// compileRegex compiles an RE2 pattern anchored at both ends: Envoy's safe_regex must
// match the whole value, while Go's regexp finds substrings.
func compileRegex(r *matcherv3.RegexMatcher, where string) (*regexp.Regexp, error) {
	if err := onlyFields(r, where+" safe_regex", "regex", "google_re2"); err != nil {
		return nil, err
	}
	re, err := regexp.Compile("^(?:" + r.GetRegex() + ")$")
	if err != nil {
		return nil, fmt.Errorf("%s: invalid regex %q: %w", where, r.GetRegex(), err)
	}
	return re, nil
}

func decodeHeaderOptions(hs []*corev3.HeaderValueOption, where string) ([]HeaderOption, error) {
	var out []HeaderOption
	for _, h := range hs {
		if err := onlyFields(h, where+" header "+h.GetHeader().GetKey(), "header", "append_action", "keep_empty_value"); err != nil {
			return nil, err
		}
		if err := onlyFields(h.GetHeader(), where+" header", "key", "value"); err != nil {
			return nil, err
		}
		if h.GetHeader().GetValue() == "" && !h.GetKeepEmptyValue() {
			continue // Envoy drops empty values unless keep_empty_value is set
		}
		if !validHeader(h.GetHeader().GetKey(), h.GetHeader().GetValue()) {
			return nil, fmt.Errorf("%s: header %q has a name or value that is not valid HTTP", where, h.GetHeader().GetKey())
		}
		o := HeaderOption{Name: textproto.CanonicalMIMEHeaderKey(h.GetHeader().GetKey()), Value: h.GetHeader().GetValue()}
		switch h.GetAppendAction() {
		case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
			o.Action = AppendOrAdd
		case corev3.HeaderValueOption_ADD_IF_ABSENT:
			o.Action = AddIfAbsent
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
			o.Action = OverwriteOrAdd
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
			o.Action = OverwriteIfExists
		}
		out = append(out, o)
	}
	return out, nil
}

func decodeRedirect(r *routev3.RedirectAction, where string) (*Redirect, error) {
	if err := onlyFields(r, where+" redirect", "scheme_redirect", "https_redirect", "host_redirect", "port_redirect",
		"path_redirect", "prefix_rewrite", "response_code", "strip_query"); err != nil {
		return nil, err
	}
	out := &Redirect{Scheme: r.GetSchemeRedirect(), Host: r.GetHostRedirect(), Port: r.GetPortRedirect(),
		Path: r.GetPathRedirect(), PrefixRewrite: r.GetPrefixRewrite(), StripQuery: r.GetStripQuery()}
	if r.GetHttpsRedirect() {
		out.Scheme = "https"
	}
	switch r.GetResponseCode() {
	case routev3.RedirectAction_MOVED_PERMANENTLY:
		out.Code = 301
	case routev3.RedirectAction_FOUND:
		out.Code = 302
	case routev3.RedirectAction_SEE_OTHER:
		out.Code = 303
	case routev3.RedirectAction_TEMPORARY_REDIRECT:
		out.Code = 307
	case routev3.RedirectAction_PERMANENT_REDIRECT:
		out.Code = 308
	}
	return out, nil
}

// validHeader refuses names and values that would let config split or smuggle requests:
// the data plane writes them verbatim.
func validHeader(name, value string) bool {
	if name == "" || strings.HasPrefix(name, ":") {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c >= 0x7f || strings.IndexByte("\"(),/:;<=>?@[\\]{}", c) >= 0 {
			return false
		}
	}
	return !strings.ContainsAny(value, "\r\n\x00")
}
