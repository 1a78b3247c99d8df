package config

import (
	"regexp"
	"testing"
)

// RewritePath swaps what the match matched: the prefix, or the whole path.
func TestRewritePath(t *testing.T) {
	re := regexp.MustCompile("^(?:/items/[0-9]+)$")
	for _, c := range []struct {
		name          string
		m             Match
		path, rewrite string
		want          string
	}{
		{"prefix", Match{PathKind: PathPrefix, Path: "/api/"}, "/api/v1/x", "/v2/", "/v2/v1/x"},
		{"prefix to root", Match{PathKind: PathPrefix, Path: "/api"}, "/api/x", "/", "//x"}, // Envoy's documented trailing-slash pitfall
		{"prefix whole path", Match{PathKind: PathPrefix, Path: "/api"}, "/api", "/v2", "/v2"},
		{"caseless prefix keeps the rest", Match{PathKind: PathPrefix, Path: "/api/"}, "/API/Users", "/v2/", "/v2/Users"},
		{"exact", Match{PathKind: PathExact, Path: "/login"}, "/login", "/auth/login", "/auth/login"},
		{"regex", Match{PathKind: PathRegex, Regex: re}, "/items/42", "/item", "/item"},
		{"no rewrite", Match{PathKind: PathExact, Path: "/login"}, "/login", "", "/login"},
		{"shorter than the prefix", Match{PathKind: PathPrefix, Path: "/api/"}, "/ap", "/v2/", "/ap"},
	} {
		if got := c.m.RewritePath(c.path, c.rewrite); got != c.want {
			t.Errorf("%s: RewritePath(%q, %q) = %q, want %q", c.name, c.path, c.rewrite, got, c.want)
		}
	}
}
