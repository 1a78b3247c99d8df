package snapshot

import (
	"fmt"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
)

// functionServicePort is the port of the Service the function controller creates for a
// function (targetPort 15006, the sidecar's inbound listener).
const functionServicePort = 80

const defaultFunctionTimeout = 300 * time.Second

func functionTimeout(fn *meshv1alpha1.MeshFunction) time.Duration {
	if fn.Spec.Timeout != nil {
		return fn.Spec.Timeout.Duration
	}
	return defaultFunctionTimeout
}

// meshFunction translates a MeshFunction: its cluster (endpoints are its pods' sidecar
// inbound port) and one catch-all route for its own name and spec.hosts.
func (t *translator) meshFunction(fn *meshv1alpha1.MeshFunction) *built {
	key := ObjectKey{KindMeshFunction, fn.Namespace, fn.Name}
	b := &built{key: key, created: fn.CreationTimestamp, p: &problems{}}
	c := functionCluster(fn)
	f := endpointFilter{targetPort: contract.InboundPort}
	if svc, ok := t.ix.services[nsName(fn.Namespace, fn.Name)]; ok {
		if sp, why := servicePort(svc, functionServicePort); why == "" {
			f = filterFor(sp)
		}
	}
	cla := t.ix.loadAssignment(c.Name, t.ix.slices[nsName(fn.Namespace, fn.Name)], f)
	if goingToZero(fn) {
		drainAll(cla)
	}
	if servesRevisions(fn) {
		// Its pods dispatch queued calls by the split (sidecar/async).
		m := functionMeta(fn)
		m.Traffic = trafficOf(fn)
		c.Metadata = metadata(contract.FunctionMetadataKey, m.Encode())
	}
	b.addCluster(c, cla)
	b.routes = []*routev3.Route{functionRoute(fn, "default", c.Name)}
	if servesRevisions(fn) {
		// The revisions' clusters exist even when the function's name is taken: a
		// MeshRoute destination naming the function splits over them.
		t.revisions(fn, b, f)
	}
	if t.nameTaken(b, fn.UID, fn.Name) {
		// The name's host belongs to the user's Service: serving the function there would
		// take its traffic.
		return b
	}
	var tagged []hostEntry
	if servesRevisions(fn) {
		tagged = t.tagHosts(fn, b)
	}
	for _, h := range append([]string{fn.Name}, fn.Spec.Hosts...) {
		b.hosts = append(b.hosts, hostEntry{host: h, key: hostKey(h, fn.Namespace), ports: t.functionHostRoutes(h, fn.Namespace)})
	}
	b.hosts = append(b.hosts, tagged...)
	return b
}

// functionRoute is the one catch-all route of a function's host, to cluster.
func functionRoute(fn *meshv1alpha1.MeshFunction, rule, cluster string) *routev3.Route {
	return &routev3.Route{
		Name:  fmt.Sprintf("%s/%s/%s/0", fn.Namespace, fn.Name, rule),
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
			Timeout:          timeoutOf(functionTimeout(fn)),
			RetryPolicy:      functionRetries,
		}},
		Metadata: metadata(contract.RouteMetadataKey, contract.RouteMeta{Owner: ObjectKey{KindMeshFunction, fn.Namespace, fn.Name}.String()}.Encode()),
	}
}

// functionRetries is the retry policy of a function's own route: 2 retries, each on a host
// not tried yet, of the failures where the request never reached the function — a connect
// that failed or timed out, an HTTP/2 stream refused. A pod removed by a scale-down can still
// be in a caller's endpoints for the moment the removal takes to reach it; its connect then
// fails, and the call goes to a pod that is still there instead of failing. Nothing the
// function may have half-done is retried (no 5xx: a function call need not be idempotent).
var functionRetries = retryPolicy(&meshv1alpha1.HTTPRetry{
	Attempts: 2,
	RetryOn:  []meshv1alpha1.RetryOn{"connect-failure", "refused-stream"},
}, false)

// goingToZero reports that the MeshFunction controller has announced zero replicas
// (status.desiredReplicas 0 after it has written status once) while pods may still run. The
// function's endpoints are then sent as DRAINING: callers' sidecars stop sending new requests
// and hold them instead, and once every sidecar has ACKed that, the controller removes the
// last pod (positive hand-off). A function that has no status yet is not going anywhere.
func goingToZero(fn *meshv1alpha1.MeshFunction) bool {
	return fn.Status.ObservedGeneration > 0 && fn.Status.DesiredReplicas == 0
}

// drainAll marks every endpoint of cla DRAINING.
func drainAll(cla *endpointv3.ClusterLoadAssignment) {
	for _, loc := range cla.GetEndpoints() {
		for _, e := range loc.GetLbEndpoints() {
			e.HealthStatus = corev3.HealthStatus_DRAINING
		}
	}
}

// functionHostRoutes: a function's hosts are served on port 80 (its Service's port), with
// its Service's ClusterIP forms for its own name.
func (t *translator) functionHostRoutes(h, ns string) []hostPort {
	g, l := hostDomains(h, ns, []int32{functionServicePort})
	if svc := t.serviceOfHost(h, ns); svc != nil {
		for _, ip := range clusterIPs(svc) {
			g = append(g, ip, ip+":"+itoa(functionServicePort))
		}
	}
	return []hostPort{{rc: contract.RouteConfigName(functionServicePort), global: g, local: l}}
}
