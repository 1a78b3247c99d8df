// Package authz decides whether an inbound request may reach the app: it takes an inbound
// listener's decoded RBAC filters (config.Authz, from MeshPolicies) and a request's verified
// peer identity, authority, method and path, and returns the decision and the policy that
// made it. Istio's semantics: a DENY policy that matches refuses; then, when any ALLOW
// policy applies, the request must match one; with no policy, every request is allowed.
//
// It is pure and allocation-free on the allowed path of a request whose path is already
// normal; the data plane (sidecar/httpproxy) supplies the peer identity, which only the
// mutual-TLS handshake sets: no request header can change it.
package authz

import (
	"strconv"
	"strings"

	"github.com/weftmesh/weft/sidecar/config"
)

// Request is what a decision reads of one request.
type Request struct {
	// Principal is the caller's verified SPIFFE ID (spiffe://td/ns/x/sa/y), from its
	// mutual-TLS certificate; empty when the connection is plaintext.
	Principal string
	// Authority is the request's Host (:authority).
	Authority string
	// Method is the request method.
	Method string
	// Path is the request target's path, as sent (escaped, possibly with a query).
	Path string
}

// Decision is the outcome for one request.
type Decision struct {
	Allowed bool
	// Policy names the MeshPolicy (<namespace>/<name>) that decided: the DENY policy that
	// matched, the ALLOW policy that admitted the request, or, when no ALLOW policy
	// admitted it, the ALLOW policies that apply (comma-separated). Empty when no policy
	// applies.
	Policy string
	// Deny is true when a DENY policy refused the request (Policy names it).
	Deny bool
}

// maxNamed bounds how many ALLOW policies a refusal names.
const maxNamed = 4

// Check decides r under a. A nil a allows everything.
func Check(a *config.Authz, r Request) Decision {
	if a == nil {
		return Decision{Allowed: true}
	}
	r.Path = NormalizePath(r.Path)
	for _, p := range a.Deny {
		if policyMatches(p, &r) {
			return Decision{Policy: p.Policy, Deny: true}
		}
	}
	if !a.HasAllow {
		return Decision{Allowed: true}
	}
	for _, p := range a.Allow {
		if policyMatches(p, &r) {
			return Decision{Allowed: true, Policy: p.Policy}
		}
	}
	names := a.AllowPolicies
	more := 0
	if len(names) > maxNamed {
		names, more = names[:maxNamed], len(names)-maxNamed
	}
	s := strings.Join(names, ", ")
	if more > 0 {
		s += " and " + strconv.Itoa(more) + " more"
	}
	return Decision{Policy: s}
}

// Body is the text of the 403 answer for a refused request (Envoy's "RBAC: access
// denied", naming the policy and the caller).
func (d Decision) Body(principal string) string {
	who := "a caller without a mesh identity (plaintext connection)"
	if principal != "" {
		who = principal
	}
	if d.Deny {
		return "RBAC: access denied by MeshPolicy " + d.Policy + ": its DENY rule matches this call from " + who + "\n"
	}
	if d.Policy == "" {
		return "RBAC: access denied: an ALLOW MeshPolicy selects this workload and none of its rules admits " + who + "\n"
	}
	return "RBAC: access denied by MeshPolicy " + d.Policy + ": no ALLOW rule admits this call from " + who + "\n"
}

func policyMatches(p *config.AuthzPolicy, r *Request) bool {
	ok := false
	for _, pr := range p.Principals {
		if principalMatches(pr, r) {
			ok = true
			break
		}
	}
	if !ok {
		return false
	}
	for _, pm := range p.Permissions {
		if permissionMatches(pm, r) {
			return true
		}
	}
	return false
}

func principalMatches(p *config.Principal, r *Request) bool {
	switch p.Kind {
	case config.PrincipalAny:
		return true
	case config.PrincipalAnd:
		for _, id := range p.IDs {
			if !principalMatches(id, r) {
				return false
			}
		}
		return true
	case config.PrincipalOr:
		for _, id := range p.IDs {
			if principalMatches(id, r) {
				return true
			}
		}
		return false
	case config.PrincipalNot:
		return !principalMatches(p.IDs[0], r)
	case config.PrincipalAuthenticated:
		if r.Principal == "" {
			return false
		}
		return p.String == nil || p.String.Matches(r.Principal)
	}
	return false
}

func permissionMatches(p *config.Permission, r *Request) bool {
	switch p.Kind {
	case config.PermAny:
		return true
	case config.PermAnd:
		for _, x := range p.Rules {
			if !permissionMatches(x, r) {
				return false
			}
		}
		return true
	case config.PermOr:
		for _, x := range p.Rules {
			if permissionMatches(x, r) {
				return true
			}
		}
		return false
	case config.PermNot:
		return !permissionMatches(p.Rules[0], r)
	case config.PermAuthority:
		return p.String.Matches(r.Authority)
	case config.PermMethod:
		return p.String.Matches(r.Method)
	case config.PermPath:
		return p.String.Matches(r.Path)
	}
	return false
}
