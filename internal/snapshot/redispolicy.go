package snapshot

import (
	"net/netip"
	"regexp"
	"sort"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	redisv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/redis_proxy/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
)

// MeshPolicies attached to RedisProxy pools (spec.targetRefs) say which workload identities
// may use a pool. Where the pool is served decides who enforces them:
//
//   - A sidecar-local pool (its listener in each selected pod's sidecar, the app on
//     loopback): the caller is the pod's own verified identity, which the view carries, so
//     the control plane judges each view. An allowed view gets the pool as before; a denied
//     one gets the pool's listener with an RBAC network filter that refuses every
//     connection and a redis_proxy filter without passwords, and neither the pool's
//     clusters, endpoints nor secrets: no byte of a password reaches it.
//   - A standalone proxy (view.RedisProxy): callers come over the network, so its listener
//     carries the compiled rules (a DENY filter, then an ALLOW filter, as Istio's TCP
//     translation) and the proxy judges each connection's mutual-TLS peer.

// NodeServiceAccount is the node metadata key (a string) of the view's verified
// ServiceAccount, which the xDS server writes for an authenticated stream.
const NodeServiceAccount = "serviceAccount"

// policyTargets resolves a policy's targetRefs to the RedisProxies of its namespace; one
// that does not exist is flagged TargetNotFound and guards nothing.
func (t *translator) policyTargets(mp *meshv1alpha1.MeshPolicy, out *meshPolicy, p *problems) {
	out.attached = true
	out.selector = nil
	if mp.Spec.Selector != nil {
		p.invalidf("selector and targetRefs cannot both be set; the selector is ignored: write two MeshPolicies")
	}
	seen := map[ObjectKey]bool{}
	for i, ref := range mp.Spec.TargetRefs {
		where := "targetRefs[" + strconv.Itoa(i) + "]"
		if ref.Group != meshv1alpha1.PolicyTargetGroup || ref.Kind != meshv1alpha1.PolicyTargetRedisProxy {
			p.invalidf("%s: %s/%s is not a target a MeshPolicy can attach to; name a RedisProxy (group %s, kind %s)",
				where, ref.Group, ref.Kind, meshv1alpha1.PolicyTargetGroup, meshv1alpha1.PolicyTargetRedisProxy)
			continue
		}
		if _, ok := t.ix.redis[nsName(mp.Namespace, ref.Name)]; !ok {
			p.targets = append(p.targets, where+": RedisProxy "+mp.Namespace+"/"+ref.Name+
				" does not exist, so this policy guards no pool by that name; fix the name or create the RedisProxy")
			continue
		}
		k := ObjectKey{Kind: KindRedisProxy, Namespace: mp.Namespace, Name: ref.Name}
		if !seen[k] {
			seen[k] = true
			out.targets = append(out.targets, k)
		}
	}
}

// poolPermissions is a pool rule's to: Redis has no hosts, paths or methods, so a rule
// with to (stored before the CRD refused it) is invalid (nil: dropped from an ALLOW policy,
// matching everything in a DENY policy).
func poolPermissions(to []meshv1alpha1.PolicyOperation, p *problems, where string) *rbacconfigv3.Permission {
	if len(to) > 0 {
		p.invalidf("%s.to: a policy on RedisProxy pools matches callers only (Redis has no hosts, paths or methods); remove to", where)
		return nil
	}
	return &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Any{Any: true}}
}

// compileAdmits turns each rule's principals into a function of a SPIFFE ID, once per
// translation, for judging views (a rule's permissions are any: pool rules have no to).
func (p *meshPolicy) compileAdmits() {
	p.admits = make(map[string]func(string) bool, len(p.rules))
	for k, rule := range p.rules {
		var ors []func(string) bool
		for _, pr := range rule.GetPrincipals() {
			ors = append(ors, principalFunc(pr))
		}
		never := rule.GetPermissions()[0].GetNotRule() != nil // the allow-nothing policy
		p.admits[k] = func(id string) bool {
			if never {
				return false
			}
			for _, f := range ors {
				if f(id) {
					return true
				}
			}
			return false
		}
	}
}

// principalFunc evaluates the Principal shapes policyPrincipals emits, as Envoy's RBAC
// does: authenticated needs a verified identity ("" has none).
func principalFunc(pr *rbacconfigv3.Principal) func(string) bool {
	switch id := pr.GetIdentifier().(type) {
	case *rbacconfigv3.Principal_Any:
		return func(string) bool { return id.Any }
	case *rbacconfigv3.Principal_Authenticated_:
		sm := id.Authenticated.GetPrincipalName()
		switch {
		case sm == nil:
			return func(s string) bool { return s != "" }
		case sm.GetExact() != "":
			want := sm.GetExact()
			return func(s string) bool { return s != "" && s == want }
		case sm.GetSafeRegex() != nil:
			re, err := regexp.Compile("^(?:" + sm.GetSafeRegex().GetRegex() + ")$")
			if err != nil {
				return func(string) bool { return false }
			}
			return func(s string) bool { return s != "" && re.MatchString(s) }
		}
	case *rbacconfigv3.Principal_OrIds:
		var fs []func(string) bool
		for _, x := range id.OrIds.GetIds() {
			fs = append(fs, principalFunc(x))
		}
		return func(s string) bool {
			for _, f := range fs {
				if f(s) {
					return true
				}
			}
			return false
		}
	case *rbacconfigv3.Principal_AndIds:
		var fs []func(string) bool
		for _, x := range id.AndIds.GetIds() {
			fs = append(fs, principalFunc(x))
		}
		return func(s string) bool {
			for _, f := range fs {
				if !f(s) {
					return false
				}
			}
			return true
		}
	}
	return func(string) bool { return false } // a shape this file does not emit: admits no one
}

// guards reports whether the attached policy guards pool k.
func (p *meshPolicy) guards(k ObjectKey) bool {
	for _, t := range p.targets {
		if t == k {
			return true
		}
	}
	return false
}

// guardsView reports whether policy p guards a pool that view v serves.
func (r *Result) guardsView(p *meshPolicy, v View) bool {
	for _, pool := range r.Redis {
		if pool.Listener != nil && pool.Selects(v) && p.guards(pool.Key) {
			return true
		}
	}
	return false
}

// viewIdentity is the SPIFFE ID of view v's workload ("" when the view has no verified
// ServiceAccount). The manager's CA signs in the default trust domain.
func viewIdentity(v View) string {
	if v.ServiceAccount == "" || v.Namespace == "" {
		return ""
	}
	return contract.SPIFFEID{TrustDomain: contract.DefaultTrustDomain, Namespace: v.Namespace, ServiceAccount: v.ServiceAccount}.String()
}

// poolRules are the rules of the policies guarding pool k: DENY and ALLOW rules by key,
// and whether any ALLOW policy guards it.
func (r *Result) poolRules(k ObjectKey) (deny, allow map[string]*rbacconfigv3.Policy, anyAllow bool, ps []*meshPolicy) {
	deny, allow = map[string]*rbacconfigv3.Policy{}, map[string]*rbacconfigv3.Policy{}
	for _, p := range r.policies {
		if !p.attached || !p.guards(k) {
			continue
		}
		ps = append(ps, p)
		dst := allow
		if p.deny {
			dst = deny
		} else {
			anyAllow = true
		}
		for key, rule := range p.rules {
			dst[key] = rule
		}
	}
	return deny, allow, anyAllow, ps
}

// poolRefusal judges identity id for pool k as a sidecar would (Istio's order): the key of
// the first matching DENY rule, or, when ALLOW policies guard the pool and none admits id,
// their names; both empty when id may use the pool.
func (r *Result) poolRefusal(k ObjectKey, id string) (denyRule string, allowPolicies []string) {
	_, _, anyAllow, ps := r.poolRules(k)
	var denies []string
	for _, p := range ps {
		if !p.deny {
			continue
		}
		for key, f := range p.admits {
			if f(id) {
				denies = append(denies, key)
			}
		}
	}
	if len(denies) > 0 {
		sort.Strings(denies)
		return denies[0], nil
	}
	if !anyAllow {
		return "", nil
	}
	for _, p := range ps {
		if p.deny {
			continue
		}
		for _, f := range p.admits {
			if f(id) {
				return "", nil
			}
		}
		allowPolicies = append(allowPolicies, p.key.Namespace+"/"+p.key.Name)
	}
	return "", allowPolicies
}

// poolForView is pool's listener as view v gets it, and whether v may use the pool (then
// its clusters, endpoints and secrets go with it). A standalone proxy's view gets the
// listener with the compiled rules; a sidecar-local view whose identity may not use the
// pool, or a pool its prefix routes send keys to, gets the refusing listener.
func (r *Result) poolForView(pool *RedisPool, v View) (*listenerv3.Listener, bool) {
	if v.RedisProxy != "" {
		if fs := r.compiledFilters(pool); len(fs) > 0 {
			return guardedListener(pool.Listener, fs, contract.RedisAuthzMeta{Pool: pool.Key.Namespace + "/" + pool.Key.Name}), true
		}
		return pool.Listener, true
	}
	id := viewIdentity(v)
	for _, k := range append([]ObjectKey{pool.Key}, r.routedPools(pool)...) {
		denyRule, allowPolicies := r.poolRefusal(k, id)
		if denyRule == "" && allowPolicies == nil {
			continue
		}
		var f *listenerv3.Filter
		if denyRule != "" {
			f = networkRBACFilter(rbacconfigv3.RBAC_DENY, map[string]*rbacconfigv3.Policy{denyRule: matchAll()}, pool)
		} else {
			never := map[string]*rbacconfigv3.Policy{}
			for _, name := range allowPolicies {
				ns, n, _ := cutSlash(name)
				never[contract.PolicyRuleName(ns, n, contract.NoRules)] = &rbacconfigv3.Policy{
					Principals:  []*rbacconfigv3.Principal{{Identifier: &rbacconfigv3.Principal_Any{Any: true}}},
					Permissions: []*rbacconfigv3.Permission{{Rule: &rbacconfigv3.Permission_NotRule{NotRule: &rbacconfigv3.Permission{Rule: &rbacconfigv3.Permission_Any{Any: true}}}}},
				}
			}
			f = networkRBACFilter(rbacconfigv3.RBAC_ALLOW, never, pool)
		}
		what := k.Namespace + "/" + k.Name
		if k != pool.Key {
			what = pool.Key.Namespace + "/" + pool.Key.Name + " (its prefix routes send keys to RedisProxy " + what + ")"
		}
		return refusingListener(pool, f, contract.RedisAuthzMeta{Pool: what, Judged: true, Caller: id}), false
	}
	if !loopbackListener(pool) {
		// Admitted, but the pool listens beyond loopback: other pods can reach it there, so
		// the sidecar judges them by their mutual-TLS peer, and loopback (the pod itself)
		// as this view's identity.
		if fs := r.compiledFilters(pool); len(fs) > 0 {
			return guardedListener(pool.Listener, fs, contract.RedisAuthzMeta{Pool: pool.Key.Namespace + "/" + pool.Key.Name, Caller: id}), true
		}
	}
	return pool.Listener, true
}

// compiledFilters are the RBAC network filters of the policies guarding pool, as a
// sidecar judges them per connection: the DENY policies' filter, then the ALLOW policies'
// (present when an ALLOW policy guards the pool); none when no policy does.
func (r *Result) compiledFilters(pool *RedisPool) []*listenerv3.Filter {
	deny, allow, anyAllow, _ := r.poolRules(pool.Key)
	var fs []*listenerv3.Filter
	if len(deny) > 0 {
		fs = append(fs, networkRBACFilter(rbacconfigv3.RBAC_DENY, deny, pool))
	}
	if anyAllow {
		fs = append(fs, networkRBACFilter(rbacconfigv3.RBAC_ALLOW, allow, pool))
	}
	return fs
}

// loopbackListener reports whether the pool's listener binds a loopback address, which
// only the pod's own containers can reach.
func loopbackListener(pool *RedisPool) bool {
	a, err := netip.ParseAddr(pool.Listener.GetAddress().GetSocketAddress().GetAddress())
	return err == nil && a.IsLoopback()
}

// routedPools are the pools pool's prefix routes send keys to.
func (r *Result) routedPools(pool *RedisPool) []ObjectKey {
	var out []ObjectKey
	for _, n := range pool.Routes {
		for _, q := range r.Redis {
			if q.Cluster.GetName() == n {
				out = append(out, q.Key)
			}
		}
	}
	return out
}

func cutSlash(s string) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == '/' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

// networkRBACFilter packs one RBAC network filter deterministically (its policies are a
// map, as in rbacFilter).
func networkRBACFilter(action rbacconfigv3.RBAC_Action, policies map[string]*rbacconfigv3.Policy, pool *RedisPool) *listenerv3.Filter {
	a := &anypb.Any{}
	cfg := &netrbacv3.RBAC{Rules: &rbacconfigv3.RBAC{Action: action, Policies: policies},
		StatPrefix: "redis_" + pool.Key.Namespace + "_" + pool.Key.Name + "."}
	if err := anypb.MarshalFrom(a, cfg, proto.MarshalOptions{Deterministic: true}); err != nil {
		panic(err) // a registered Envoy type
	}
	return &listenerv3.Filter{Name: contract.NetworkRBACFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: a}}
}

// guardedListener is l with filters fs before its redis_proxy filter and the authorization
// metadata; l itself (shared by every view) is not changed.
func guardedListener(l *listenerv3.Listener, fs []*listenerv3.Filter, md contract.RedisAuthzMeta) *listenerv3.Listener {
	out := proto.Clone(l).(*listenerv3.Listener)
	fc := out.FilterChains[0]
	fc.Filters = append(fs, fc.Filters...)
	if out.Metadata == nil {
		out.Metadata = &corev3.Metadata{}
	}
	if out.Metadata.FilterMetadata == nil {
		out.Metadata.FilterMetadata = map[string]*structpb.Struct{}
	}
	out.Metadata.FilterMetadata[contract.RedisAuthzMetadataKey] = md.Encode()
	return out
}

// refusingListener is the listener of a pool view v may not use: the pool's address and
// name, filter f refusing every connection, then a redis_proxy filter with the pool's
// settings and catch-all route but no passwords, no prefix routes and no secret reference
// (so no SDS secret is named or sent).
func refusingListener(pool *RedisPool, f *listenerv3.Filter, md contract.RedisAuthzMeta) *listenerv3.Listener {
	var rp redisv3.RedisProxy
	if err := pool.Listener.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&rp); err != nil {
		panic(err) // built by redisListener
	}
	bare := &redisv3.RedisProxy{StatPrefix: rp.GetStatPrefix(), Settings: rp.GetSettings(),
		PrefixRoutes: &redisv3.RedisProxy_PrefixRoutes{CatchAllRoute: rp.GetPrefixRoutes().GetCatchAllRoute()}}
	tc, err := anypb.New(bare)
	if err != nil {
		panic(err)
	}
	l := &listenerv3.Listener{
		Name:    pool.Listener.GetName(),
		Address: pool.Listener.GetAddress(),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: contract.RedisFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: tc}}}}},
		TrafficDirection: pool.Listener.GetTrafficDirection(),
	}
	return guardedListener(l, []*listenerv3.Filter{f}, md)
}
