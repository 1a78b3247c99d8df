package config

import (
	"fmt"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"

	"github.com/weftmesh/weft/contract"
)

// RedisAuthz is a Redis pool listener's authorization: the MeshPolicies that target the
// pool (docs/authorization.md, "Redis pools"), decoded from the envoy.filters.network.rbac
// filters before its redis_proxy filter and the weft.dev/redisAuthz listener metadata.
type RedisAuthz struct {
	// Rules are the decoded RBAC filters; their permissions are all "any" (a connection
	// has no host, path or method): only principals decide.
	Rules Authz
	// Pool names the RedisProxy (<namespace>/<name>) for the refusal clients read.
	Pool string
	// Judged is set when the control plane judged this sidecar's own identity (a
	// sidecar-local pool; Caller is it) and refused it: every connection is judged as
	// Caller. Otherwise each connection is judged by its mutual-TLS peer, and, when Caller
	// is set (a sidecar-local pool listening beyond loopback), a plaintext connection from
	// loopback, which comes from the pod itself, as Caller.
	Judged bool
	Caller string
}

// Refuses reports whether every connection is refused whatever its peer: a judged
// listener whose caller the rules do not admit. Such a listener needs no pool, cluster or
// secret (the control plane sends none).
func (a *RedisAuthz) Refuses() bool {
	if a == nil || !a.Judged {
		return false
	}
	ok, _, _ := a.Decide(a.Caller)
	return !ok
}

// maxNamedPools bounds how many ALLOW policies a refusal names.
const maxNamedPools = 4

// Decide judges a connection whose verified peer is principal ("" for none; a judged
// listener's Caller for every connection) in Istio's order: a matching DENY rule refuses;
// then, when ALLOW rules exist, one must match. policy names the MeshPolicy that decided
// (the DENY policy, the admitting ALLOW policy, or the ALLOW policies that did not admit,
// comma-separated, at most four named); deny says a DENY rule refused. It is
// sidecar/authz.Check for rules whose permissions are any (this package cannot import
// that one).
func (a *RedisAuthz) Decide(principal string) (allowed bool, policy string, deny bool) {
	for _, p := range a.Rules.Deny {
		if connPolicyMatches(p, principal) {
			return false, p.Policy, true
		}
	}
	if !a.Rules.HasAllow {
		return true, "", false
	}
	for _, p := range a.Rules.Allow {
		if connPolicyMatches(p, principal) {
			return true, p.Policy, false
		}
	}
	names := a.Rules.AllowPolicies
	s := ""
	for i, n := range names {
		if i == maxNamedPools {
			s += fmt.Sprintf(" and %d more", len(names)-maxNamedPools)
			break
		}
		if i > 0 {
			s += ", "
		}
		s += n
	}
	return false, s, false
}

// connPolicyMatches: some permission is any (the allow-nothing policy's is not any) and
// some principal matches.
func connPolicyMatches(p *AuthzPolicy, principal string) bool {
	anyPerm := false
	for _, pm := range p.Permissions {
		if pm.Kind == PermAny {
			anyPerm = true
		}
	}
	return anyPerm && principalsMatch(p.Principals, principal)
}

func principalsMatch(ps []*Principal, principal string) bool {
	for _, p := range ps {
		if principalMatch(p, principal) {
			return true
		}
	}
	return false
}

func principalMatch(p *Principal, s string) bool {
	switch p.Kind {
	case PrincipalAny:
		return true
	case PrincipalAnd:
		for _, x := range p.IDs {
			if !principalMatch(x, s) {
				return false
			}
		}
		return true
	case PrincipalOr:
		for _, x := range p.IDs {
			if principalMatch(x, s) {
				return true
			}
		}
		return false
	case PrincipalNot:
		return !principalMatch(p.IDs[0], s)
	case PrincipalAuthenticated:
		return s != "" && (p.String == nil || p.String.Matches(s))
	}
	return false
}

// redisListenerFilters splits a redis listener's filter chain into its network RBAC
// filters (at most a DENY then an ALLOW one, before redis_proxy) and the redis_proxy
// filter; ok is false when the chain is not of that shape (the caller names the error).
func redisListenerFilters(fs []*listenerv3.Filter) (rbac []*listenerv3.Filter, redis *listenerv3.Filter, ok bool) {
	if len(fs) == 0 || fs[len(fs)-1].GetName() != contract.RedisFilterName {
		return nil, nil, false
	}
	for _, f := range fs[:len(fs)-1] {
		if f.GetName() != contract.NetworkRBACFilterName {
			return nil, nil, false
		}
	}
	return fs[:len(fs)-1], fs[len(fs)-1], true
}

// decodeRedisAuthz decodes the network RBAC filters of a redis listener and its
// weft.dev/redisAuthz metadata; nil when it has neither. Anything else Envoy's network RBAC
// filter could say (shadow rules, matchers, per-read enforcement, delayed denials,
// permissions on ports or addresses) is refused by name: the proxy would otherwise enforce
// less than the control plane meant.
func decodeRedisAuthz(l *listenerv3.Listener, rbacFilters []*listenerv3.Filter) (*RedisAuthz, error) {
	md := l.GetMetadata().GetFilterMetadata()[contract.RedisAuthzMetadataKey]
	if len(rbacFilters) == 0 && md == nil {
		return nil, nil
	}
	if md == nil {
		return nil, fmt.Errorf("%s filters without %s metadata", contract.NetworkRBACFilterName, contract.RedisAuthzMetadataKey)
	}
	if len(rbacFilters) == 0 {
		return nil, fmt.Errorf("%s metadata without a %s filter", contract.RedisAuthzMetadataKey, contract.NetworkRBACFilterName)
	}
	if len(rbacFilters) > 2 {
		return nil, fmt.Errorf("%d %s filters; the contract sends at most two (DENY, then ALLOW)", len(rbacFilters), contract.NetworkRBACFilterName)
	}
	m, err := contract.DecodeRedisAuthzMeta(md)
	if err != nil {
		return nil, fmt.Errorf("%s metadata: %w", contract.RedisAuthzMetadataKey, err)
	}
	a := &RedisAuthz{Pool: m.Pool, Judged: m.Judged, Caller: m.Caller}
	for i, f := range rbacFilters {
		where := fmt.Sprintf("%s[%d]", contract.NetworkRBACFilterName, i)
		var n netrbacv3.RBAC
		if err := f.GetTypedConfig().UnmarshalTo(&n); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if err := onlyFields(&n, where, "rules", "stat_prefix"); err != nil {
			return nil, err
		}
		if err := decodeRBACFilter(&rbacv3.RBAC{Rules: n.GetRules()}, &a.Rules, where); err != nil {
			return nil, err
		}
	}
	for _, ps := range [][]*AuthzPolicy{a.Rules.Deny, a.Rules.Allow} {
		for _, p := range ps {
			for _, pm := range p.Permissions {
				if !connectionPermission(pm) {
					return nil, fmt.Errorf("policy %s: a Redis pool's rules may only have permissions any (or not any): a connection has no host, path or method", p.Key)
				}
			}
		}
	}
	return a, nil
}

// connectionPermission reports whether pm is any or not-any: the only permissions a
// connection-level rule of the contract has.
func connectionPermission(pm *Permission) bool {
	return pm.Kind == PermAny || (pm.Kind == PermNot && pm.Rules[0].Kind == PermAny)
}
