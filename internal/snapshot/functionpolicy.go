package snapshot

import (
	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
)

// A MeshRoute's trafficPolicy shapes the clusters the route itself creates: one per Service
// destination, named for the route. A function destination is different: every caller of a
// function (its own hosts and every MeshRoute that names it) shares the one function
// cluster the MeshFunction owns, and what that cluster does is set by the function
// (containerConcurrency in the function's sidecars, activation.maxPending and holdTimeout in
// the callers', its timeout). Applying one route's policy there would change it for every
// other caller and let two routes fight over one cluster; outlier detection and health
// checks would also eject pods that scale-to-zero is draining. So the policy is not applied
// to function destinations, and the route says so in Warning=True TrafficPolicyIgnored
// instead of ignoring it silently (the route stays Accepted and is served).

// flagFunctionPolicy records a warning on b for each function destination of mr (routed
// with a weight above zero, or mirrored) when mr sets a trafficPolicy.
func flagFunctionPolicy(mr *meshv1alpha1.MeshRoute, b *built) {
	if !hasTrafficPolicy(mr.Spec.TrafficPolicy) {
		return
	}
	fnName := func(d meshv1alpha1.Destination) string {
		ns := d.Namespace
		if ns == "" {
			ns = mr.Namespace
		}
		return ns + "/" + d.Function
	}
	for i := range mr.Spec.HTTP {
		rule := &mr.Spec.HTTP[i]
		for _, d := range rule.Route {
			if d.Function != "" && d.Weight > 0 {
				b.p.policyIgnoredf("rule %s sends to MeshFunction %s", ruleName(rule, i), fnName(d.Destination))
			}
		}
		if m := rule.Mirror; m != nil && m.Function != "" {
			b.p.policyIgnoredf("rule %s mirrors to MeshFunction %s", ruleName(rule, i), fnName(m.Destination))
		}
	}
}

// hasTrafficPolicy reports whether tp sets anything.
func hasTrafficPolicy(tp *meshv1alpha1.TrafficPolicy) bool {
	return tp != nil && (tp.LoadBalancer != nil || tp.ConnectionPool != nil || tp.OutlierDetection != nil || tp.HealthCheck != nil)
}

// policyIgnoredHint ends the TrafficPolicyIgnored message: why, and what to do instead.
const policyIgnoredHint = "spec.trafficPolicy is not applied to function destinations: every caller of a function shares its cluster, " +
	"which the MeshFunction shapes; set containerConcurrency, activation.maxPending, activation.holdTimeout and timeout on the " +
	"MeshFunction instead (the policy still applies to this route's Service destinations)"
