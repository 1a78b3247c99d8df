package image

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// Pin rewrites every reference to an image under the registry prefix from (e.g.
// ghcr.io/weftmesh) in rendered manifests — an image: field, a --sidecar-image= flag, an env
// value — to the pinned reference of the same name (e.g. weft-sidecar →
// ghcr.io/weftmesh/weft-sidecar@sha256:…), whatever tag or digest it had. It works on the
// text, so the manifests keep their order and formatting. A reference to a name under from
// that pinned lacks is an error: the release would point at an image it did not build.
func Pin(manifests []byte, from string, pinned map[string]string) ([]byte, error) {
	from = strings.TrimSuffix(from, "/")
	re, err := refPattern(from)
	if err != nil {
		return nil, err
	}
	var missing []string
	out := re.ReplaceAllFunc(manifests, func(m []byte) []byte {
		sub := re.FindSubmatch(m)
		lead, name := sub[1], string(sub[2])
		ref, ok := pinned[name]
		if !ok {
			missing = append(missing, from+"/"+name)
			return m
		}
		return append(append([]byte{}, lead...), ref...)
	})
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, fmt.Errorf("the manifests reference %s, which this build did not produce (add it to the image table in hack/images)",
			strings.Join(dedupe(missing), ", "))
	}
	return out, nil
}

// Unpinned lists references under from in manifests that carry no digest.
func Unpinned(manifests []byte, from string) []string {
	re, err := refPattern(strings.TrimSuffix(from, "/"))
	if err != nil {
		return []string{err.Error()}
	}
	var bad []string
	for _, sub := range re.FindAllSubmatch(manifests, -1) {
		if len(sub[4]) == 0 {
			bad = append(bad, strings.TrimLeft(string(sub[0]), " \t\"'=:"))
		}
	}
	return dedupe(bad)
}

// refPattern matches from/name[:tag][@sha256:digest] where the reference starts (start of a
// line, after a space, quote, '=' or ':' ) — not inside a longer registry name. Submatches:
// 1 the leading character, 2 the name, 3 the tag, 4 the digest.
func refPattern(from string) (*regexp.Regexp, error) {
	if from == "" {
		return nil, fmt.Errorf("empty registry prefix")
	}
	return regexp.Compile(`(?m)(^|[\s"'=:])` + regexp.QuoteMeta(from) + `/([a-z0-9][a-z0-9._-]*)` +
		`(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?`)
}

func dedupe(s []string) []string {
	sort.Strings(s)
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}
