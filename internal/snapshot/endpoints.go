package snapshot

import (
	"net"
	"sort"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/structpb"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/weftmesh/weft/contract"
)

// endpointFilter picks the endpoints of one cluster out of a Service's EndpointSlices.
type endpointFilter struct {
	// portName is the Service port's name (EndpointSlice ports carry it); targetPort is
	// used instead when the slices' ports are unnamed and there is more than one.
	portName   string
	targetPort int32
	// subset, when non-empty, are labels the endpoint's pod must all have.
	subset map[string]string
	// readyOnly drops serving-but-terminating endpoints (redis pools: a terminating server
	// must not own ring keys).
	readyOnly bool
	// preferHostname uses endpoint.hostname (StatefulSet pods) before the pod name.
	preferHostname bool
	// meshTLS marks endpoints whose pod terminates mesh TLS on their port (Service
	// clusters, which carry the transport socket matches: withMeshTLSMatches).
	meshTLS bool
}

func slicePort(es *discoveryv1.EndpointSlice, f endpointFilter) (int32, bool) {
	for _, p := range es.Ports {
		if p.Port == nil {
			continue
		}
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		if f.portName != "" && name == f.portName {
			return *p.Port, true
		}
		if f.portName == "" && (len(es.Ports) == 1 || *p.Port == f.targetPort) {
			return *p.Port, true
		}
	}
	return 0, false
}

// loadAssignment builds the ClusterLoadAssignment of cluster name from slices: ready
// endpoints HEALTHY, serving-but-terminating DRAINING, not-ready left out; addresses that
// appear in two slices (during slice hand-over) appear once, healthiest first.
func (ix *index) loadAssignment(name string, slices []*discoveryv1.EndpointSlice, f endpointFilter) *endpointv3.ClusterLoadAssignment {
	byAddr := map[string]*endpointv3.LbEndpoint{}
	for _, es := range slices {
		if es.AddressType == discoveryv1.AddressTypeFQDN {
			continue
		}
		port, ok := slicePort(es, f)
		if !ok {
			continue
		}
		for i := range es.Endpoints {
			e := &es.Endpoints[i]
			health, ok := endpointHealth(e.Conditions, f.readyOnly)
			if !ok {
				continue
			}
			podName := ""
			if e.TargetRef != nil && e.TargetRef.Kind == "Pod" {
				podName = e.TargetRef.Name
			}
			if len(f.subset) > 0 && !labelsMatch(ix.podLabels[nsName(es.Namespace, podName)], f.subset) {
				continue
			}
			hostname := podName
			// The pod's sidecar terminates mesh TLS on this port (meshedPort): Istio's
			// tlsMode endpoint label, for the cluster's transport_socket_matches.
			meshed := f.meshTLS && podName != "" && meshedPort(ix.podLabels[nsName(es.Namespace, podName)], port)
			if e.Hostname != nil && *e.Hostname != "" && (f.preferHostname || hostname == "") {
				hostname = *e.Hostname
			}
			for _, a := range e.Addresses {
				key := net.JoinHostPort(a, itoa(port))
				if old, dup := byAddr[key]; dup && old.HealthStatus == corev3.HealthStatus_HEALTHY {
					continue
				}
				lbe := &endpointv3.LbEndpoint{
					HealthStatus: health,
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
						Address:  socketAddress(a, uint32(port)),
						Hostname: hostname,
					}},
				}
				if meshed {
					lbe.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{contract.TransportSocketMatchKey: tlsModeMatch()}}
				}
				byAddr[key] = lbe
			}
		}
	}
	keys := make([]string, 0, len(byAddr))
	for k := range byAddr {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	ix.record(cla, name, slices, f)
	if len(keys) == 0 {
		return cla
	}
	loc := &endpointv3.LocalityLbEndpoints{}
	for _, k := range keys {
		loc.LbEndpoints = append(loc.LbEndpoints, byAddr[k])
	}
	cla.Endpoints = []*endpointv3.LocalityLbEndpoints{loc}
	return cla
}

// meshedPort reports whether the sidecar of a pod with labels terminates mesh TLS on port,
// as the injector labels it when capture brings the port to the sidecar: the app port
// (contract.LabelInboundTLSPort), or any port contract.LabelInboundTLS names (TCP ports,
// terminated by the sidecar's capture plane). A label that does not parse marks nothing.
func meshedPort(labels map[string]string, port int32) bool {
	if labels[contract.LabelInboundTLSPort] == itoa(port) {
		return true
	}
	v, ok := labels[contract.LabelInboundTLS]
	if !ok || port <= 0 || port > 65535 {
		return false
	}
	p, ok := contract.ParseInboundTLSPorts(v)
	return ok && p.Has(uint16(port))
}

// endpointHealth follows the EndpointSlice conditions' documented meaning: a nil ready is
// ready; serving and terminating without ready is draining (finishes in-flight work).
func endpointHealth(c discoveryv1.EndpointConditions, readyOnly bool) (corev3.HealthStatus, bool) {
	if c.Ready == nil || *c.Ready {
		return corev3.HealthStatus_HEALTHY, true
	}
	if !readyOnly && c.Serving != nil && *c.Serving && c.Terminating != nil && *c.Terminating {
		return corev3.HealthStatus_DRAINING, true
	}
	return 0, false
}

func labelsMatch(have, want map[string]string) bool {
	for k, v := range want {
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Protocol:      corev3.SocketAddress_TCP,
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// servicePort finds the port of svc a destination uses: the given one, or the only one.
// It returns the port and a reason when it cannot.
func servicePort(svc *corev1.Service, port int32) (corev1.ServicePort, string) {
	if port == 0 {
		if len(svc.Spec.Ports) == 1 {
			return svc.Spec.Ports[0], ""
		}
		return corev1.ServicePort{}, "has more than one port; set the destination's port"
	}
	for _, p := range svc.Spec.Ports {
		if p.Port == port {
			return p, ""
		}
	}
	return corev1.ServicePort{}, "has no port " + itoa(port)
}

// serviceFilter is filterFor a Service cluster, which marks meshed endpoints.
func serviceFilter(p corev1.ServicePort) endpointFilter {
	f := filterFor(p)
	f.meshTLS = true
	return f
}

func filterFor(p corev1.ServicePort) endpointFilter {
	f := endpointFilter{portName: p.Name}
	if p.TargetPort.IntVal != 0 {
		f.targetPort = p.TargetPort.IntVal
	} else {
		f.targetPort = p.Port
	}
	return f
}

func itoa(v int32) string { return strconv.Itoa(int(v)) }
