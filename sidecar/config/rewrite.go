package config

// RewritePath applies a prefix_rewrite (RouteAction's, or RedirectAction's) to path, the
// request's escaped path without its query, as Envoy does: "the matched prefix (or path)
// is swapped with this value". What is matched depends on the match kind:
//
//   - Prefix: the prefix, as long as the configured one (a case-insensitive match swaps the
//     path's own spelling of it): /api/v1/x with prefix /api and rewrite /v2 → /v2/v1/x.
//   - Exact: the whole path: /login with rewrite /auth/login → /auth/login.
//   - RegularExpression: the whole path too, since the regex matched all of it (Envoy's
//     RegexRouteEntryImpl finalizes with the full path as the matched part):
//     /items/42 matched by /items/[0-9]+ with rewrite /item → /item.
//
// An empty rewrite leaves the path alone (the field is unset).
func (m *Match) RewritePath(path, rewrite string) string {
	if rewrite == "" {
		return path
	}
	switch m.PathKind {
	case PathPrefix:
		if len(path) < len(m.Path) {
			return path // not this route's path: nothing matched
		}
		return rewrite + path[len(m.Path):]
	case PathExact, PathRegex:
		return rewrite
	}
	return path
}
