package contract

import "strings"

// RBACFilterName is Envoy's HTTP RBAC filter (envoy.extensions.filters.http.rbac.v3.RBAC).
// The inbound listener of a workload that MeshPolicies select carries up to two of them
// before the router, as Istio's: the DENY policies' filter first, then the ALLOW
// policies'.
const RBACFilterName = "envoy.filters.http.rbac"

// PolicyRuleName is the key of one MeshPolicy rule in an RBAC filter's policies map:
// <namespace>/<name>/<rule index>, or <namespace>/<name>/none for an ALLOW policy without
// rules (it keeps the policy's name in the filter while matching nothing).
func PolicyRuleName(namespace, name, rule string) string {
	return namespace + "/" + name + "/" + rule
}

// PolicyOfRule is the inverse of PolicyRuleName: <namespace>/<name> of the MeshPolicy a
// rule key belongs to. A key without a rule part is its own policy name.
func PolicyOfRule(key string) string {
	if i := strings.LastIndexByte(key, '/'); i > 0 && strings.IndexByte(key[:i], '/') > 0 {
		return key[:i]
	}
	return key
}

// NoRules is the rule part of an ALLOW policy without rules.
const NoRules = "none"
