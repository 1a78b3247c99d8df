package snapshot

import (
	"fmt"
	"strings"
)

// Gateway API names a ReferenceGrant's from and to entries use for Weft's kinds.
const (
	// WeftGroup is the API group of MeshRoute and MeshFunction in a grant's from or to.
	WeftGroup = "mesh.weft.dev"
	// CoreGroup is the empty group of Services in a grant's to.
	CoreGroup = ""
	// KindService is a grant's to kind for a Service (its host or its endpoints).
	KindService = "Service"
)

// ReferenceGrant is the part of a Gateway API ReferenceGrant (gateway.networking.k8s.io/v1beta1)
// translation reads: in Namespace, the objects in To may be referenced by the kinds and
// namespaces in From. A MeshRoute (or MeshFunction) in namespace a may claim a host of a
// Service in namespace b, or send to a Service or MeshFunction there, only when a grant in b
// lists {group: mesh.weft.dev, kind: MeshRoute, namespace: a} in from and the target in to
// (a to entry without a name allows every object of its kind).
type ReferenceGrant struct {
	Namespace string
	Name      string
	From      []GrantFrom
	To        []GrantTo
}

// GrantFrom is one from entry of a ReferenceGrant.
type GrantFrom struct{ Group, Kind, Namespace string }

// GrantTo is one to entry of a ReferenceGrant; an empty Name allows every object of the kind.
type GrantTo struct{ Group, Kind, Name string }

// permitted reports whether an object of fromKind in fromNS may reference the toKind object
// ns/name. References within one namespace need no grant.
func (ix *index) permitted(fromKind, fromNS, toGroup, toKind, ns, name string) bool {
	if fromNS == ns {
		return true
	}
	for _, g := range ix.grants {
		if g.Namespace != ns {
			continue
		}
		from := false
		for _, f := range g.From {
			if f.Group == WeftGroup && f.Kind == fromKind && f.Namespace == fromNS {
				from = true
				break
			}
		}
		if !from {
			continue
		}
		for _, to := range g.To {
			if to.Group == toGroup && to.Kind == toKind && (to.Name == "" || to.Name == name) {
				return true
			}
		}
	}
	return false
}

// grantHint tells the user what to create for a refused cross-namespace reference.
func grantHint(fromKind, fromNS, toGroup, toKind, ns, name string) string {
	return fmt.Sprintf("create a ReferenceGrant (gateway.networking.k8s.io/v1beta1) in namespace %s with from {group: %s, kind: %s, namespace: %s} "+
		"and to {group: %q, kind: %s, name: %s}", ns, WeftGroup, fromKind, fromNS, toGroup, toKind, name)
}

// hostOwner says which namespace a host belongs to, from its key (see hostKey): the
// namespace of the Service it names ("reviews.b" → b). ok is false for hosts outside the
// cluster's Service domain (api.example.com), which belong to no namespace. all is true for
// a host that spans namespaces (*.svc.cluster.local, anything under cluster.local that is
// not a Service name), which no single namespace can grant.
func hostOwner(key string) (ns, svc string, ok, all bool) {
	const svcDomain = ".svc.cluster.local"
	if !strings.HasSuffix(key, svcDomain) {
		if key == "cluster.local" || strings.HasSuffix(key, ".cluster.local") {
			return "", "", true, true
		}
		return "", "", false, false
	}
	parts := strings.Split(strings.TrimSuffix(key, svcDomain), ".")
	if len(parts) < 2 || parts[len(parts)-1] == "*" || parts[len(parts)-1] == "" {
		return "", "", true, true
	}
	return parts[len(parts)-1], parts[len(parts)-2], true, false
}

// checkHost reports, as a problem of b, a host of another namespace that no grant allows.
// It returns false when the host must not be claimed.
func (t *translator) checkHost(b *built, h hostEntry) bool {
	ns, svc, inCluster, all := hostOwner(h.key)
	switch {
	case !inCluster || ns == b.key.Namespace:
		return true
	case all:
		b.p.notAllowedHost("host %s spans every namespace's Services; a %s may claim only hosts of its own namespace %s (or of namespaces that grant it), so the host is not served",
			h.host, b.key.Kind, b.key.Namespace)
		return false
	case svc == "*":
		b.p.notAllowedHost("host %s covers every Service of namespace %s, which a grant cannot allow; claim the Services by name", h.host, ns)
		return false
	case t.ix.permitted(b.key.Kind, b.key.Namespace, CoreGroup, KindService, ns, svc):
		return true
	}
	b.p.notAllowedHost("host %s belongs to namespace %s, and no ReferenceGrant there allows %s from namespace %s to claim it; %s. The host is not served",
		h.host, ns, b.key.Kind, b.key.Namespace, grantHint(b.key.Kind, b.key.Namespace, CoreGroup, KindService, ns, svc))
	return false
}

// ReferenceGrantFrom reads a ReferenceGrant from its unstructured form (as listed from the
// API server, or decoded from YAML). Fields it does not know are ignored; a malformed entry
// grants nothing.
func ReferenceGrantFrom(obj map[string]any) ReferenceGrant {
	str := func(m map[string]any, k string) string { v, _ := m[k].(string); return v }
	meta, _ := obj["metadata"].(map[string]any)
	spec, _ := obj["spec"].(map[string]any)
	g := ReferenceGrant{Namespace: str(meta, "namespace"), Name: str(meta, "name")}
	from, _ := spec["from"].([]any)
	for _, f := range from {
		if m, ok := f.(map[string]any); ok {
			g.From = append(g.From, GrantFrom{Group: str(m, "group"), Kind: str(m, "kind"), Namespace: str(m, "namespace")})
		}
	}
	to, _ := spec["to"].([]any)
	for _, e := range to {
		if m, ok := e.(map[string]any); ok {
			g.To = append(g.To, GrantTo{Group: str(m, "group"), Kind: str(m, "kind"), Name: str(m, "name")})
		}
	}
	return g
}
