package config

import (
	"net/http"
	"strings"
)

// VirtualHostFor selects the virtual host for a Host/:authority value the way Envoy does:
// exact domain first, then the longest suffix wildcard ("*.foo"), then the longest prefix
// wildcard ("foo.*"), then "*". Port forms ("name:9080") are matched as written, which is
// why the control plane lists each domain with and without ports.
func (t *RouteTable) VirtualHostFor(host string) *VirtualHost {
	host = lowerASCII(host)
	if vh, ok := t.exact[host]; ok {
		return vh
	}
	for _, w := range t.suffix {
		if len(host) > len(w.s) && strings.HasSuffix(host, w.s) {
			return w.vh
		}
	}
	for _, w := range t.prefix {
		if len(host) > len(w.s) && strings.HasPrefix(host, w.s) {
			return w.vh
		}
	}
	return t.star
}

// lowerASCII lowercases only when needed so the common all-lowercase host costs nothing.
func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}

// RouteFor returns the first route whose match holds for r, or nil.
func (vh *VirtualHost) RouteFor(r *http.Request) *Route {
	path := r.URL.RawPath
	if path == "" {
		path = r.URL.Path
	}
	for _, rt := range vh.Routes {
		if rt.Match.Matches(r, path) {
			return rt
		}
	}
	return nil
}

// Matches reports whether r (with its raw path, query removed) satisfies every part of m.
func (m *Match) Matches(r *http.Request, path string) bool {
	switch m.PathKind {
	case PathPrefix:
		if m.CaseSensitive {
			if !strings.HasPrefix(path, m.Path) {
				return false
			}
		} else if len(path) < len(m.Path) || !strings.EqualFold(path[:len(m.Path)], m.Path) {
			return false
		}
	case PathExact:
		if m.CaseSensitive {
			if path != m.Path {
				return false
			}
		} else if !strings.EqualFold(path, m.Path) {
			return false
		}
	case PathRegex:
		if !m.Regex.MatchString(path) {
			return false
		}
	}
	for i := range m.Headers {
		if !m.Headers[i].matches(r) {
			return false
		}
	}
	if len(m.Query) > 0 {
		q := r.URL.Query()
		for _, qm := range m.Query {
			vs, ok := q[qm.Name]
			if !ok {
				return false
			}
			if qm.String != nil && (len(vs) == 0 || !qm.String.Matches(vs[0])) {
				return false
			}
		}
	}
	return true
}

func (h *HeaderMatch) matches(r *http.Request) bool {
	var v string
	present := true
	switch h.Name {
	case ":method":
		v = r.Method
	case ":authority":
		v = r.Host
	case ":path":
		v = r.URL.RequestURI()
	case ":scheme":
		v = "http"
	default:
		vs := r.Header[h.Name]
		switch len(vs) {
		case 0:
			present = false
		case 1:
			v = vs[0]
		default:
			v = strings.Join(vs, ",") // Envoy matches multiple values joined by commas
		}
	}
	if !present {
		// Envoy: an absent header matches only an inverted presence check.
		return h.Present && h.Invert
	}
	if h.String == nil {
		return !h.Invert
	}
	return h.String.Matches(v) != h.Invert
}

// Matches applies Envoy's StringMatcher semantics to v.
func (s *StringMatch) Matches(v string) bool {
	if s.Kind == StringRegex {
		return s.Regex.MatchString(v)
	}
	if s.IgnoreCase {
		v = strings.ToLower(v)
	}
	switch s.Kind {
	case StringExact:
		return v == s.Value
	case StringPrefix:
		return strings.HasPrefix(v, s.Value)
	case StringSuffix:
		return strings.HasSuffix(v, s.Value)
	default:
		return strings.Contains(v, s.Value)
	}
}
