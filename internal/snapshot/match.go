package snapshot

import (
	"fmt"
	"regexp"
	"sort"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"golang.org/x/net/http/httpguts"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
)

// routeMatch translates one HTTPMatch (Istio b.1): path to path/prefix/safe_regex, method
// to a ":method" header, headers and query parameters to their matchers. A regular
// expression Go's RE2 cannot compile is an error: sending it would make every sidecar NACK.
func routeMatch(m *meshv1alpha1.HTTPMatch) (*routev3.RouteMatch, error) {
	out := &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}
	if m == nil {
		return out, nil
	}
	if p := m.Path; p != nil {
		switch p.Type {
		case meshv1alpha1.MatchExact:
			out.PathSpecifier = &routev3.RouteMatch_Path{Path: p.Value}
		case meshv1alpha1.MatchRegularExpression:
			re, err := safeRegex(p.Value)
			if err != nil {
				return nil, fmt.Errorf("path: %w", err)
			}
			out.PathSpecifier = &routev3.RouteMatch_SafeRegex{SafeRegex: re}
		default:
			out.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: p.Value}
		}
	}
	if m.Method != "" {
		out.Headers = append(out.Headers, &routev3.HeaderMatcher{Name: ":method",
			HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_Exact{Exact: m.Method}}}})
	}
	for _, h := range m.Headers {
		hm := &routev3.HeaderMatcher{Name: h.Name, InvertMatch: h.Invert}
		if h.Type == meshv1alpha1.MatchPresent || h.Value == nil {
			hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}
		} else {
			sm, err := stringMatch(h.Type, *h.Value)
			if err != nil {
				return nil, fmt.Errorf("header %s: %w", h.Name, err)
			}
			hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: sm}
		}
		out.Headers = append(out.Headers, hm)
	}
	for _, q := range m.QueryParams {
		qm := &routev3.QueryParameterMatcher{Name: q.Name}
		if q.Type == meshv1alpha1.MatchPresent || q.Value == nil {
			qm.QueryParameterMatchSpecifier = &routev3.QueryParameterMatcher_PresentMatch{PresentMatch: true}
		} else {
			sm, err := stringMatch(q.Type, *q.Value)
			if err != nil {
				return nil, fmt.Errorf("query parameter %s: %w", q.Name, err)
			}
			qm.QueryParameterMatchSpecifier = &routev3.QueryParameterMatcher_StringMatch{StringMatch: sm}
		}
		out.QueryParameters = append(out.QueryParameters, qm)
	}
	return out, nil
}

func safeRegex(expr string) (*matcherv3.RegexMatcher, error) {
	if _, err := regexp.Compile(expr); err != nil {
		return nil, fmt.Errorf("regular expression %q is not valid RE2: %w", expr, err)
	}
	return &matcherv3.RegexMatcher{Regex: expr}, nil
}

func stringMatch(t meshv1alpha1.MatchType, v string) (*matcherv3.StringMatcher, error) {
	switch t {
	case meshv1alpha1.MatchPrefix:
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: v}}, nil
	case meshv1alpha1.MatchSuffix:
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: v}}, nil
	case meshv1alpha1.MatchRegularExpression:
		re, err := safeRegex(v)
		if err != nil {
			return nil, err
		}
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: re}}, nil
	default:
		return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}}, nil
	}
}

// isCatchAll reports whether a match takes every request, after which later rules can never
// match (Istio stops translating there too).
func isCatchAll(m *routev3.RouteMatch) bool {
	p, ok := m.PathSpecifier.(*routev3.RouteMatch_Prefix)
	return ok && p.Prefix == "/" && len(m.Headers) == 0 && len(m.QueryParameters) == 0
}

// headerOps translates set/add/remove into Envoy's header options, sorted by name. Setting
// Host or :authority is a host rewrite, returned separately (Envoy refuses to add them).
func headerOps(op *meshv1alpha1.HeaderOperation) (add []*corev3.HeaderValueOption, remove []string, host string) {
	if op == nil {
		return nil, nil, ""
	}
	opts := func(m map[string]string, action corev3.HeaderValueOption_HeaderAppendAction) {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if lk := lower(k); lk == "host" || lk == ":authority" {
				if action == corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD {
					host = m[k]
				}
				continue
			}
			if len(k) > 0 && k[0] == ':' {
				continue
			}
			add = append(add, &corev3.HeaderValueOption{
				Header:       &corev3.HeaderValue{Key: k, Value: m[k]},
				AppendAction: action,
			})
		}
	}
	opts(op.Set, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD)
	opts(op.Add, corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD)
	remove = append(remove, op.Remove...)
	sort.Strings(remove)
	return add, remove, host
}

func lower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

func inlineString(s string) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: s}}
}

// headerProblems lists every header operation of mr whose name is not an HTTP token or
// whose value holds a control character. The CRD cannot refuse these within the API
// server's CEL cost budget (map keys and values have no length bound), and every sidecar
// would reject the route configuration all hosts share, so the route is left out instead.
// Found by FuzzBuild.
func headerProblems(mr *meshv1alpha1.MeshRoute) []string {
	var bad []string
	check := func(path string, hs *meshv1alpha1.HeaderOperations) {
		if hs == nil {
			return
		}
		for dir, op := range map[string]*meshv1alpha1.HeaderOperation{"request": hs.Request, "response": hs.Response} {
			if op == nil {
				continue
			}
			for verb, m := range map[string]map[string]string{"set": op.Set, "add": op.Add} {
				for k, v := range m {
					switch {
					case !httpguts.ValidHeaderFieldName(k):
						bad = append(bad, fmt.Sprintf("%s.headers.%s.%s: header name %q is not an HTTP token (letters, digits and !#$%%&'*+-.^_`|~, no spaces)", path, dir, verb, k))
					case !httpguts.ValidHeaderFieldValue(v):
						bad = append(bad, fmt.Sprintf("%s.headers.%s.%s[%s]: the value holds a control character such as CR, LF or NUL", path, dir, verb, k))
					}
				}
			}
			for i, k := range op.Remove {
				if !httpguts.ValidHeaderFieldName(k) {
					bad = append(bad, fmt.Sprintf("%s.headers.%s.remove[%d]: header name %q is not an HTTP token (letters, digits and !#$%%&'*+-.^_`|~, no spaces)", path, dir, i, k))
				}
			}
		}
	}
	for i := range mr.Spec.HTTP {
		rule := &mr.Spec.HTTP[i]
		check(fmt.Sprintf("spec.http[%d]", i), rule.Headers)
		for j := range rule.Route {
			check(fmt.Sprintf("spec.http[%d].route[%d]", i, j), rule.Route[j].Headers)
		}
	}
	sort.Strings(bad)
	return bad
}
