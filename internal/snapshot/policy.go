package snapshot

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
)

// KindMeshPolicy is the kind of MeshPolicy objects.
const KindMeshPolicy = "MeshPolicy"

// maxHostForms bounds the :authority values one to.hosts entry expands to (every domain
// form of the virtual hosts it names, a few per Service port).
const maxHostForms = 64

// meshPolicy is one translated MeshPolicy: its rules as Envoy RBAC policies, keyed by
// contract.PolicyRuleName, for the inbound listeners of the views it selects.
type meshPolicy struct {
	key      ObjectKey
	selector map[string]string
	deny     bool
	rules    map[string]*rbacconfigv3.Policy
	// attached is set for a policy with targetRefs (redispolicy.go): it guards the RedisProxy
	// pools in targets (those that exist) and no inbound listener.
	attached bool
	targets  []ObjectKey
	// admits has, per rule key of an attached policy, whether the rule admits a SPIFFE ID
	// ("" for none): the control plane judges the views of sidecar-local pools with it.
	admits map[string]func(string) bool
}

// selects reports whether the policy applies to view v's inbound listener: a pod of its
// namespace with every label of its selector.
func (p *meshPolicy) selects(v View) bool {
	if p.attached || v.Gateway || v.AppPort == 0 || v.Namespace != p.key.Namespace {
		return false
	}
	for k, val := range p.selector {
		if w, ok := v.Labels[k]; !ok || w != val {
			return false
		}
	}
	return true
}

// hostForms finds the domains callers use for a host: by the virtual hosts that serve it.
type hostForms struct {
	global map[string][]*vhostEntry // by lower-case domain
	local  map[string][]*vhostEntry // by namespace \x00 lower-case domain (short names)
	byName map[string][]*vhostEntry // every entry (one per route configuration) of a virtual host
	all    []string                 // every domain, for wildcard hosts
}

func newHostForms(vhosts []vhostEntry) *hostForms {
	h := &hostForms{global: map[string][]*vhostEntry{}, local: map[string][]*vhostEntry{}, byName: map[string][]*vhostEntry{}}
	for i := range vhosts {
		e := &vhosts[i]
		h.byName[e.global.Name] = append(h.byName[e.global.Name], e)
		for _, d := range e.global.Domains {
			d = strings.ToLower(d)
			h.global[d] = append(h.global[d], e)
			h.all = append(h.all, d)
		}
		if e.local != nil {
			for _, d := range e.local.Domains {
				d = strings.ToLower(d)
				h.local[e.ns+"\x00"+d] = append(h.local[e.ns+"\x00"+d], e)
				h.all = append(h.all, d)
			}
		}
	}
	return h
}

// forms returns every :authority under which host (as written in namespace ns) reaches
// the same virtual host, sorted; nil when no virtual host serves it. A host with a port
// keeps to that port's forms.
func (h *hostForms) forms(ns, host string) []string {
	host = strings.ToLower(host)
	es := h.local[ns+"\x00"+host]
	if es == nil {
		es = h.global[host]
	}
	if es == nil {
		return nil
	}
	_, port, hasPort := strings.Cut(host, ":")
	seen := map[string]bool{}
	for _, e := range es {
		for _, same := range h.byName[e.global.Name] {
			ds := same.global.Domains
			if same.local != nil {
				ds = same.local.Domains
			}
			for _, d := range ds {
				d = strings.ToLower(d)
				_, p, dp := strings.Cut(d, ":")
				if hasPort && (!dp || p != port) {
					continue
				}
				seen[d] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for d := range seen {
		out = append(out, d)
	}
	sort.Strings(out)
	if len(out) > maxHostForms {
		out = out[:maxHostForms]
	}
	return out
}

// anyEndsWith reports whether some served domain ends with suffix.
func (h *hostForms) anyEndsWith(suffix string) bool {
	for _, d := range h.all {
		if strings.HasSuffix(d, suffix) {
			return true
		}
	}
	return false
}

// principalRE and namespaceRE are the shapes the CRD admits (checked again here: an object
// stored before the CRD could refuse it must not reach a sidecar).
var (
	spiffeRE   = regexp.MustCompile(`^spiffe://[a-z0-9.-]+/ns/[a-z0-9]([-a-z0-9]*[a-z0-9])?/sa/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)
	shortRE    = regexp.MustCompile(`^([a-z0-9]([-a-z0-9]*[a-z0-9])?)/([a-z0-9]([-a-z0-9.]*[a-z0-9])?)$`)
	dnsLabelRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	methodRE   = regexp.MustCompile(`^[A-Z][A-Z-]*$`)
)

// meshPolicies translates every MeshPolicy into RBAC policies and conditions. A rule that
// cannot be translated makes the policy Accepted=False; it is dropped from an ALLOW policy
// (which then admits less) and turned into "matches every request" in a DENY policy (which
// then refuses more): an authorization error fails closed, as Istio's does.
func (t *translator) meshPolicies(in *Input, res *Result) {
	hf := newHostForms(res.vhosts)
	for i := range in.MeshPolicies {
		mp := &in.MeshPolicies[i]
		key := ObjectKey{Kind: KindMeshPolicy, Namespace: mp.Namespace, Name: mp.Name}
		p := &problems{}
		out := &meshPolicy{key: key, deny: mp.Spec.Action == meshv1alpha1.PolicyDeny, rules: map[string]*rbacconfigv3.Policy{}}
		if s := mp.Spec.Selector; s != nil && len(s.Labels) > 0 {
			out.selector = s.Labels
		}
		if len(mp.Spec.TargetRefs) > 0 {
			t.policyTargets(mp, out, p)
		}
		for ri, rule := range mp.Spec.Rules {
			where := "rules[" + strconv.Itoa(ri) + "]"
			var perm *rbacconfigv3.Permission
			if out.attached {
				perm = poolPermissions(rule.To, p, where)
			} else {
				perm = policyPermissions(rule.To, mp.Namespace, hf, p, where)
			}
			rp := &rbacconfigv3.Policy{
				Principals:  []*rbacconfigv3.Principal{policyPrincipals(rule.From, p, where)},
				Permissions: []*rbacconfigv3.Permission{perm},
			}
			if rp.Principals[0] == nil || rp.Permissions[0] == nil {
				if !out.deny {
					continue
				}
				rp = matchAll()
			}
			if err := rp.Validate(); err != nil {
				p.invalidf("%s: %v", where, err)
				if !out.deny {
					continue
				}
				rp = matchAll()
			}
			out.rules[contract.PolicyRuleName(mp.Namespace, mp.Name, strconv.Itoa(ri))] = rp
		}
		if !out.deny && len(out.rules) == 0 {
			// An ALLOW policy with no (usable) rule allows nothing; a policy that never
			// matches keeps its name in the filter for the 403 answer.
			out.rules[contract.PolicyRuleName(mp.Namespace, mp.Name, contract.NoRules)] = &rbacconfigv3.Policy{
				Principals:  []*rbacconfigv3.Principal{{Identifier: &rbacconfigv3.Principal_Any{Any: true}}},
				Permissions: []*rbacconfigv3.Permission{{Rule: &rbacconfigv3.Permission_NotRule{NotRule: &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Any{Any: true}}}}},
			}
		}
		if out.attached {
			out.compileAdmits()
		}
		if len(mp.Spec.Rules) > 16 {
			p.invalidf("%d rules; at most 16 are supported", len(mp.Spec.Rules))
		}
		res.policies = append(res.policies, out)
		res.Status[key] = ObjectStatus{Generation: mp.Generation, Conditions: p.conditions()}
	}
	sort.Slice(res.policies, func(i, j int) bool { return res.policies[i].key.String() < res.policies[j].key.String() })
}

func matchAll() *rbacconfigv3.Policy {
	return &rbacconfigv3.Policy{
		Principals:  []*rbacconfigv3.Principal{{Identifier: &rbacconfigv3.Principal_Any{Any: true}}},
		Permissions: []*rbacconfigv3.Permission{{Rule: &rbacconfigv3.Permission_Any{Any: true}}},
	}
}

// policyPrincipals is a rule's from: any of the sources (any caller when empty); nil when
// a source is invalid.
func policyPrincipals(from []meshv1alpha1.PolicySource, p *problems, where string) *rbacconfigv3.Principal {
	if len(from) == 0 {
		return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Any{Any: true}}
	}
	var srcs []*rbacconfigv3.Principal
	ok := true
	for si, s := range from {
		w := where + ".from[" + strconv.Itoa(si) + "]"
		var and []*rbacconfigv3.Principal
		if len(s.Principals) > 0 {
			var ids []*rbacconfigv3.Principal
			for _, pr := range s.Principals {
				id, err := principalID(pr)
				if err != nil {
					p.invalidf("%s.principals: %v", w, err)
					ok = false
					continue
				}
				ids = append(ids, id)
			}
			and = append(and, orIDs(ids))
		}
		if len(s.Namespaces) > 0 {
			var ids []*rbacconfigv3.Principal
			for _, ns := range s.Namespaces {
				if !dnsLabelRE.MatchString(ns) {
					p.invalidf("%s.namespaces: %q is not a namespace name", w, ns)
					ok = false
					continue
				}
				ids = append(ids, authenticatedRegex(`spiffe://[^/]+/ns/`+regexp.QuoteMeta(ns)+`/sa/[^/]+`))
			}
			and = append(and, orIDs(ids))
		}
		if len(and) == 0 {
			p.invalidf("%s: needs principals or namespaces", w)
			ok = false
			continue
		}
		if len(and) == 1 {
			srcs = append(srcs, and[0])
		} else {
			srcs = append(srcs, &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_AndIds{AndIds: &rbacconfigv3.Principal_Set{Ids: and}}})
		}
	}
	if !ok {
		return nil
	}
	return orIDs(srcs)
}

// principalID is one principal: a full SPIFFE ID exactly, ns/sa in any trust domain, or *
// for any verified peer.
func principalID(s string) (*rbacconfigv3.Principal, error) {
	switch {
	case s == "*":
		return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Authenticated_{Authenticated: &rbacconfigv3.Principal_Authenticated{}}}, nil
	case spiffeRE.MatchString(s):
		return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Authenticated_{Authenticated: &rbacconfigv3.Principal_Authenticated{
			PrincipalName: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: s}}}}}, nil
	case shortRE.MatchString(s):
		ns, sa, _ := strings.Cut(s, "/")
		return authenticatedRegex(`spiffe://[^/]+/ns/` + regexp.QuoteMeta(ns) + `/sa/` + regexp.QuoteMeta(sa)), nil
	}
	return nil, fmt.Errorf("%q is not spiffe://<trust domain>/ns/<namespace>/sa/<service account>, <namespace>/<service account> or *", s)
}

func authenticatedRegex(re string) *rbacconfigv3.Principal {
	return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Authenticated_{Authenticated: &rbacconfigv3.Principal_Authenticated{
		PrincipalName: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: re}}}}}}
}

func orIDs(ids []*rbacconfigv3.Principal) *rbacconfigv3.Principal {
	if len(ids) == 1 {
		return ids[0]
	}
	return &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_OrIds{OrIds: &rbacconfigv3.Principal_Set{Ids: ids}}}
}

// policyPermissions is a rule's to: any of the operations (any request when empty); nil
// when an operation is invalid.
func policyPermissions(to []meshv1alpha1.PolicyOperation, ns string, hf *hostForms, p *problems, where string) *rbacconfigv3.Permission {
	if len(to) == 0 {
		return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Any{Any: true}}
	}
	var ops []*rbacconfigv3.Permission
	ok := true
	for oi, op := range to {
		w := where + ".to[" + strconv.Itoa(oi) + "]"
		var and []*rbacconfigv3.Permission
		if len(op.Hosts) > 0 {
			var hs []*rbacconfigv3.Permission
			for _, h := range op.Hosts {
				hs = append(hs, hostPermissions(h, ns, hf, p, w)...)
			}
			and = append(and, orRules(hs))
		}
		if len(op.Paths) > 0 {
			var ps []*rbacconfigv3.Permission
			for _, path := range op.Paths {
				pm, err := pathPermission(path)
				if err != nil {
					p.invalidf("%s.paths: %v", w, err)
					ok = false
					continue
				}
				ps = append(ps, pm)
			}
			and = append(and, orRules(ps))
		}
		if len(op.Methods) > 0 {
			var ms []*rbacconfigv3.Permission
			for _, m := range op.Methods {
				if !methodRE.MatchString(m) {
					p.invalidf("%s.methods: %q is not a method such as GET", w, m)
					ok = false
					continue
				}
				ms = append(ms, headerPermission(":method", exact(m, false)))
			}
			and = append(and, orRules(ms))
		}
		if len(and) == 0 {
			p.invalidf("%s: needs hosts, paths or methods", w)
			ok = false
			continue
		}
		if len(and) == 1 {
			ops = append(ops, and[0])
		} else {
			ops = append(ops, &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_AndRules{AndRules: &rbacconfigv3.Permission_Set{Rules: and}}})
		}
	}
	if !ok {
		return nil
	}
	return orRules(ops)
}

// hostPermissions matches the :authority of one to.hosts entry: every form of the
// virtual host that serves it, or the host literally (flagged) when none does.
func hostPermissions(h, ns string, hf *hostForms, p *problems, where string) []*rbacconfigv3.Permission {
	h = strings.ToLower(h)
	if suffix, ok := strings.CutPrefix(h, "*"); ok {
		if !hf.anyEndsWith(suffix) {
			p.unknownHostf("%s.hosts: no MeshRoute, MeshFunction or Service serves a host matching %q, so this entry matches no request the mesh routes; fix the pattern or remove it", where, h)
		}
		return []*rbacconfigv3.Permission{headerPermission(":authority", &matcherv3.StringMatcher{
			MatchPattern: &matcherv3.StringMatcher_Suffix{Suffix: suffix}, IgnoreCase: true})}
	}
	forms := hf.forms(ns, h)
	if forms == nil {
		p.unknownHostf("%s.hosts: no MeshRoute, MeshFunction or Service serves %q (as seen from namespace %s), so this entry matches only requests whose Host is literally %s; name a Service (such as reviews or reviews.<namespace>.svc.cluster.local), a MeshRoute or MeshFunction host, or remove it", where, h, ns, h)
		forms = []string{h}
	}
	out := make([]*rbacconfigv3.Permission, 0, len(forms))
	for _, f := range forms {
		out = append(out, headerPermission(":authority", exact(f, true)))
	}
	return out
}

// pathPermission is one to.paths entry: * any path, a trailing * a prefix, else exact.
// Paths are matched without the query string (url_path), as Istio's.
func pathPermission(path string) (*rbacconfigv3.Permission, error) {
	if path == "*" {
		return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Any{Any: true}}, nil
	}
	if !strings.HasPrefix(path, "/") || strings.ContainsAny(path, "?#") || strings.Contains(strings.TrimSuffix(path, "*"), "*") {
		return nil, fmt.Errorf("%q must start with / and may end in *, such as /api/* or /healthz", path)
	}
	var sm *matcherv3.StringMatcher
	if pre, ok := strings.CutSuffix(path, "*"); ok {
		sm = &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: pre}}
	} else {
		sm = exact(path, false)
	}
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_UrlPath{UrlPath: &matcherv3.PathMatcher{
		Rule: &matcherv3.PathMatcher_Path{Path: sm}}}}, nil
}

func exact(v string, ignoreCase bool) *matcherv3.StringMatcher {
	return &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: v}, IgnoreCase: ignoreCase}
}

func headerPermission(name string, sm *matcherv3.StringMatcher) *rbacconfigv3.Permission {
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Header{Header: &routev3.HeaderMatcher{
		Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: sm}}}}
}

func orRules(rs []*rbacconfigv3.Permission) *rbacconfigv3.Permission {
	if len(rs) == 1 {
		return rs[0]
	}
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_OrRules{OrRules: &rbacconfigv3.Permission_Set{Rules: rs}}}
}

// rbacFilters are the HTTP filters that enforce the MeshPolicies selecting view v, before
// the inbound listener's router: Istio's layout, the DENY policies' RBAC filter first, then
// the ALLOW policies' (present when any ALLOW policy selects v, so that a request must
// match one). None when no policy selects v.
func (r *Result) rbacFilters(v View) []*hcmv3.HttpFilter {
	deny, allow := map[string]*rbacconfigv3.Policy{}, map[string]*rbacconfigv3.Policy{}
	anyAllow := false
	for _, p := range r.policies {
		if !p.selects(v) {
			continue
		}
		dst := allow
		if p.deny {
			dst = deny
		} else {
			anyAllow = true
		}
		for k, rule := range p.rules {
			dst[k] = rule
		}
	}
	var out []*hcmv3.HttpFilter
	if len(deny) > 0 {
		out = append(out, rbacFilter(rbacconfigv3.RBAC_DENY, deny))
	}
	if anyAllow {
		out = append(out, rbacFilter(rbacconfigv3.RBAC_ALLOW, allow))
	}
	return out
}

// rbacFilter packs one RBAC filter deterministically: its policies are a map, which
// anypb.New would serialize in random order, changing the listener's version (a hash of
// its bytes) on every translation.
func rbacFilter(action rbacconfigv3.RBAC_Action, policies map[string]*rbacconfigv3.Policy) *hcmv3.HttpFilter {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, &rbacv3.RBAC{Rules: &rbacconfigv3.RBAC{Action: action, Policies: policies}}, proto.MarshalOptions{Deterministic: true}); err != nil {
		panic(err) // a registered Envoy type
	}
	return &hcmv3.HttpFilter{Name: contract.RBACFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}}
}

// includesPolicy reports whether view v's inbound listener enforces policy k, or, for a
// policy with targetRefs, whether v serves one of the pools it guards.
func (r *Result) includesPolicy(v View, k ObjectKey) bool {
	for _, p := range r.policies {
		if p.key == k {
			if p.attached {
				return r.guardsView(p, v)
			}
			return p.selects(v)
		}
	}
	return false
}
