package config

import (
	"fmt"
	"sort"

	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"

	"github.com/weftmesh/weft/contract"
)

// Bounds of one listener's authorization, so a malformed or hostile config cannot make
// every request walk an unbounded tree (the control plane stays far below them: 16 rules per
// MeshPolicy, 8 sources and 8 operations per rule, 64 forms per host).
const (
	MaxAuthzPolicies = 1024    // Envoy policies per RBAC filter
	maxAuthzDepth    = 8       // nesting of and/or/not
	maxAuthzNodes    = 1 << 16 // permissions + principals per policy (one MeshPolicy rule: at most 8 × (32 hosts × 64 forms + 36) + 8 × 35 ≈ 17,000)
)

// Authz is an inbound listener's authorization: the decoded RBAC filters of its HCM
// (Istio's translation of AuthorizationPolicy). sidecar/authz evaluates it.
type Authz struct {
	// Deny are the DENY filter's policies: a request matching one is refused.
	Deny []*AuthzPolicy
	// Allow are the ALLOW filter's policies: when HasAllow, a request must match one.
	Allow    []*AuthzPolicy
	HasAllow bool
	// AllowPolicies are the distinct MeshPolicy names behind Allow, sorted: a request no
	// ALLOW policy admits is refused naming them.
	AllowPolicies []string
}

// AuthzPolicy is one Envoy RBAC policy: it matches when some permission and some
// principal match.
type AuthzPolicy struct {
	// Key is the policy's key in the filter (contract.PolicyRuleName); Policy the
	// MeshPolicy it came from (<namespace>/<name>).
	Key, Policy string
	Permissions []*Permission
	Principals  []*Principal
}

// PermissionKind names what a Permission tests.
type PermissionKind int

// Permission kinds (Envoy's rbac.v3.Permission rules the contract uses).
const (
	PermAny       PermissionKind = iota
	PermAnd                      // all of Rules
	PermOr                       // any of Rules
	PermNot                      // not Rules[0]
	PermAuthority                // the request's :authority (Host) matches String
	PermMethod                   // the request's :method matches String
	PermPath                     // the request's normalized path without query matches String
)

// Permission is a decoded rbac.v3.Permission.
type Permission struct {
	Kind   PermissionKind
	Rules  []*Permission
	String *StringMatch
}

// PrincipalKind names what a Principal tests.
type PrincipalKind int

// Principal kinds.
const (
	PrincipalAny           PrincipalKind = iota
	PrincipalAnd                         // all of IDs
	PrincipalOr                          // any of IDs
	PrincipalNot                         // not IDs[0]
	PrincipalAuthenticated               // a verified peer identity (mutual TLS) whose SPIFFE ID matches String; nil String: any verified peer
)

// Principal is a decoded rbac.v3.Principal.
type Principal struct {
	Kind   PrincipalKind
	IDs    []*Principal
	String *StringMatch
}

// decodeRBACFilter adds one RBAC http filter's rules to a.
func decodeRBACFilter(cfg *rbacv3.RBAC, a *Authz, where string) error {
	where += " rbac filter"
	if err := onlyFields(cfg, where, "rules"); err != nil {
		return err
	}
	rules := cfg.GetRules()
	if rules == nil {
		return fmt.Errorf("%s: has no rules (shadow rules and matchers are not supported)", where)
	}
	if err := onlyFields(rules, where+" rules", "action", "policies"); err != nil {
		return err
	}
	if len(rules.GetPolicies()) > MaxAuthzPolicies {
		return fmt.Errorf("%s: %d policies; at most %d are supported", where, len(rules.GetPolicies()), MaxAuthzPolicies)
	}
	var dst *[]*AuthzPolicy
	switch rules.GetAction() {
	case rbacconfigv3.RBAC_ALLOW:
		if a.HasAllow {
			return fmt.Errorf("%s: a second ALLOW rbac filter; the contract sends at most one", where)
		}
		a.HasAllow, dst = true, &a.Allow
	case rbacconfigv3.RBAC_DENY:
		if a.HasAllow {
			return fmt.Errorf("%s: the DENY rbac filter must come before the ALLOW one", where)
		}
		if a.Deny != nil {
			return fmt.Errorf("%s: a second DENY rbac filter; the contract sends at most one", where)
		}
		a.Deny = []*AuthzPolicy{}
		dst = &a.Deny
	default:
		return fmt.Errorf("%s: action %s is not supported; use ALLOW or DENY", where, rules.GetAction())
	}
	keys := make([]string, 0, len(rules.GetPolicies()))
	for k := range rules.GetPolicies() {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	names := map[string]bool{}
	for _, k := range keys {
		p, err := decodeRBACPolicy(k, rules.GetPolicies()[k], where)
		if err != nil {
			return err
		}
		*dst = append(*dst, p)
		if dst == &a.Allow && !names[p.Policy] {
			names[p.Policy] = true
			a.AllowPolicies = append(a.AllowPolicies, p.Policy)
		}
	}
	sort.Strings(a.AllowPolicies)
	return nil
}

func decodeRBACPolicy(key string, p *rbacconfigv3.Policy, where string) (*AuthzPolicy, error) {
	where += " policy " + key
	if err := onlyFields(p, where, "permissions", "principals"); err != nil {
		return nil, err
	}
	if len(p.GetPermissions()) == 0 || len(p.GetPrincipals()) == 0 {
		return nil, fmt.Errorf("%s: needs at least one permission and one principal", where)
	}
	out := &AuthzPolicy{Key: key, Policy: contract.PolicyOfRule(key)}
	nodes := 0
	for _, pm := range p.GetPermissions() {
		d, err := decodePermission(pm, where, 0, &nodes)
		if err != nil {
			return nil, err
		}
		out.Permissions = append(out.Permissions, d)
	}
	for _, pr := range p.GetPrincipals() {
		d, err := decodePrincipal(pr, where, 0, &nodes)
		if err != nil {
			return nil, err
		}
		out.Principals = append(out.Principals, d)
	}
	return out, nil
}

func decodePermission(p *rbacconfigv3.Permission, where string, depth int, nodes *int) (*Permission, error) {
	if *nodes++; *nodes > maxAuthzNodes || depth > maxAuthzDepth {
		return nil, fmt.Errorf("%s: permissions nest deeper than %d or number more than %d", where, maxAuthzDepth, maxAuthzNodes)
	}
	set := func(kind PermissionKind, rules []*rbacconfigv3.Permission) (*Permission, error) {
		out := &Permission{Kind: kind}
		for _, r := range rules {
			d, err := decodePermission(r, where, depth+1, nodes)
			if err != nil {
				return nil, err
			}
			out.Rules = append(out.Rules, d)
		}
		if len(out.Rules) == 0 {
			return nil, fmt.Errorf("%s: an empty and_rules/or_rules", where)
		}
		return out, nil
	}
	switch r := p.GetRule().(type) {
	case *rbacconfigv3.Permission_Any:
		if !r.Any {
			return nil, fmt.Errorf("%s: permission any must be true", where)
		}
		return &Permission{Kind: PermAny}, nil
	case *rbacconfigv3.Permission_AndRules:
		return set(PermAnd, r.AndRules.GetRules())
	case *rbacconfigv3.Permission_OrRules:
		return set(PermOr, r.OrRules.GetRules())
	case *rbacconfigv3.Permission_NotRule:
		return set(PermNot, []*rbacconfigv3.Permission{r.NotRule})
	case *rbacconfigv3.Permission_Header:
		h := r.Header
		if err := onlyFields(h, where+" header", "name", "string_match"); err != nil {
			return nil, err
		}
		var kind PermissionKind
		switch h.GetName() {
		case ":authority", "host":
			kind = PermAuthority
		case ":method":
			kind = PermMethod
		default:
			return nil, fmt.Errorf("%s: header %q is not supported in a permission; use :authority or :method", where, h.GetName())
		}
		sm, err := decodeStringMatch(h.GetStringMatch(), where)
		if err != nil {
			return nil, err
		}
		return &Permission{Kind: kind, String: sm}, nil
	case *rbacconfigv3.Permission_UrlPath:
		if err := onlyFields(r.UrlPath, where+" url_path", "path"); err != nil {
			return nil, err
		}
		sm, err := decodeStringMatch(r.UrlPath.GetPath(), where)
		if err != nil {
			return nil, err
		}
		return &Permission{Kind: PermPath, String: sm}, nil
	default:
		return nil, fmt.Errorf("%s: permission %T is not supported; use any, and_rules, or_rules, not_rule, header (:authority, :method) or url_path", where, r)
	}
}

func decodePrincipal(p *rbacconfigv3.Principal, where string, depth int, nodes *int) (*Principal, error) {
	if *nodes++; *nodes > maxAuthzNodes || depth > maxAuthzDepth {
		return nil, fmt.Errorf("%s: principals nest deeper than %d or number more than %d", where, maxAuthzDepth, maxAuthzNodes)
	}
	set := func(kind PrincipalKind, ids []*rbacconfigv3.Principal) (*Principal, error) {
		out := &Principal{Kind: kind}
		for _, id := range ids {
			d, err := decodePrincipal(id, where, depth+1, nodes)
			if err != nil {
				return nil, err
			}
			out.IDs = append(out.IDs, d)
		}
		if len(out.IDs) == 0 {
			return nil, fmt.Errorf("%s: an empty and_ids/or_ids", where)
		}
		return out, nil
	}
	switch r := p.GetIdentifier().(type) {
	case *rbacconfigv3.Principal_Any:
		if !r.Any {
			return nil, fmt.Errorf("%s: principal any must be true", where)
		}
		return &Principal{Kind: PrincipalAny}, nil
	case *rbacconfigv3.Principal_AndIds:
		return set(PrincipalAnd, r.AndIds.GetIds())
	case *rbacconfigv3.Principal_OrIds:
		return set(PrincipalOr, r.OrIds.GetIds())
	case *rbacconfigv3.Principal_NotId:
		return set(PrincipalNot, []*rbacconfigv3.Principal{r.NotId})
	case *rbacconfigv3.Principal_Authenticated_:
		if err := onlyFields(r.Authenticated, where+" authenticated", "principal_name"); err != nil {
			return nil, err
		}
		out := &Principal{Kind: PrincipalAuthenticated}
		if pn := r.Authenticated.GetPrincipalName(); pn != nil {
			sm, err := decodeStringMatch(pn, where)
			if err != nil {
				return nil, err
			}
			out.String = sm
		}
		return out, nil
	default:
		return nil, fmt.Errorf("%s: principal %T is not supported; use any, and_ids, or_ids, not_id or authenticated.principal_name", where, r)
	}
}
