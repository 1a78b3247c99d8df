package snapshot

import (
	"strconv"
	"strings"
)

// hostDomains lists the names callers may use for host h of an object in namespace ns.
// A short name ("reviews") gets every Kubernetes DNS form; the bare short forms are
// returned separately because they resolve only for callers in the same namespace (the
// DNS search path), so they go only into that namespace's route configuration. Each form
// also appears with ":<port>" for every port given.
func hostDomains(h, ns string, ports []int32) (global, local []string) {
	withPorts := func(names ...string) []string {
		var out []string
		for _, n := range names {
			out = append(out, n)
			for _, p := range ports {
				out = append(out, n+":"+strconv.Itoa(int(p)))
			}
		}
		return out
	}
	if strings.Contains(h, ".") {
		return withPorts(h), nil
	}
	return withPorts(h+"."+ns, h+"."+ns+".svc", h+"."+ns+".svc.cluster.local"), withPorts(h)
}

// hostKey is the name two objects' hosts collide on: short names are qualified by their
// namespace, so "reviews" in default and "reviews.default.svc" claim the same host.
func hostKey(h, ns string) string {
	switch {
	case strings.HasPrefix(h, "*."):
		return h
	case !strings.Contains(h, "."):
		return h + "." + ns + ".svc.cluster.local"
	case strings.HasSuffix(h, ".svc.cluster.local"):
		return h
	case strings.HasSuffix(h, ".svc"):
		return h + ".cluster.local"
	case strings.Count(h, ".") == 1:
		return h + ".svc.cluster.local"
	}
	return h
}
