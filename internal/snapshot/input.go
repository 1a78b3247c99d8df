package snapshot

import (
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
)

// Input is everything translation reads. The reconciler lists it from its cache; tests read
// it from YAML. Order does not matter: Translate sorts what it needs.
type Input struct {
	MeshRoutes    []meshv1alpha1.MeshRoute
	MeshFunctions []meshv1alpha1.MeshFunction
	RedisProxies  []meshv1alpha1.RedisProxy
	// MeshPolicies say who may call the workloads they select (policy.go).
	MeshPolicies   []meshv1alpha1.MeshPolicy
	Services       []corev1.Service
	EndpointSlices []discoveryv1.EndpointSlice
	// Pods carry only metadata: their labels place endpoints into subsets.
	Pods []metav1.PartialObjectMetadata
	// Secrets are only those a RedisProxy names.
	Secrets []corev1.Secret
	// Deployments carry only metadata: a MeshFunction or standalone RedisProxy whose
	// Deployment name is taken by one it does not control is in NameConflict.
	Deployments []metav1.PartialObjectMetadata
	// ReferenceGrants are Gateway API ReferenceGrants (gateway.networking.k8s.io/v1beta1):
	// a MeshRoute may use a host or destination of another namespace only when a grant
	// there allows it. Nil when the CRD is not installed: then nothing crosses namespaces.
	ReferenceGrants []ReferenceGrant
	// Queue, when set, is sent to every sidecar for asynchronous calls.
	Queue *Queue
	// OutboundTrafficPolicy is what sidecars do with a destination that is no Service of
	// the mesh: pass it through (ALLOW_ANY, also when empty) or refuse it (REGISTRY_ONLY).
	OutboundTrafficPolicy contract.OutboundTrafficPolicy
}

// Kinds of the objects that get conditions.
const (
	KindMeshRoute    = "MeshRoute"
	KindMeshFunction = "MeshFunction"
	KindRedisProxy   = "RedisProxy"
)

// ObjectKey names one Weft object.
type ObjectKey struct {
	Kind      string
	Namespace string
	Name      string
}

// String is "Kind/ns/name", the form used in route metadata and messages.
func (k ObjectKey) String() string { return k.Kind + "/" + k.Namespace + "/" + k.Name }

// ObjectStatus is what translation says about one object: the generation it read and the
// Accepted and ResolvedRefs conditions (without timestamps or observedGeneration, which the
// reconciler fills in).
type ObjectStatus struct {
	Generation int64
	Conditions []metav1.Condition
}

// index holds the Kubernetes objects by namespace/name for the lookups translation makes.
type index struct {
	services    map[string]*corev1.Service
	slices      map[string][]*discoveryv1.EndpointSlice // by namespace/service name
	podLabels   map[string]map[string]string            // by namespace/pod name
	secrets     map[string]*corev1.Secret
	deployments map[string]*metav1.PartialObjectMetadata
	grants      []ReferenceGrant
	functions   map[string]*meshv1alpha1.MeshFunction
	redis       map[string]*meshv1alpha1.RedisProxy
	// made records how loadAssignment built each ClusterLoadAssignment, so an endpoint-only
	// change can rebuild just the affected ones (eds.go); nil when nothing records.
	made map[*endpointv3.ClusterLoadAssignment]edsSource
}

func nsName(ns, name string) string { return ns + "/" + name }

func newIndex(in *Input) *index {
	ix := &index{
		services:    map[string]*corev1.Service{},
		slices:      map[string][]*discoveryv1.EndpointSlice{},
		podLabels:   map[string]map[string]string{},
		secrets:     map[string]*corev1.Secret{},
		deployments: map[string]*metav1.PartialObjectMetadata{},
		grants:      in.ReferenceGrants,
		functions:   map[string]*meshv1alpha1.MeshFunction{},
		redis:       map[string]*meshv1alpha1.RedisProxy{},
		made:        map[*endpointv3.ClusterLoadAssignment]edsSource{},
	}
	for i := range in.Services {
		s := &in.Services[i]
		ix.services[nsName(s.Namespace, s.Name)] = s
	}
	for i := range in.EndpointSlices {
		es := &in.EndpointSlices[i]
		svc := es.Labels[discoveryv1.LabelServiceName]
		if svc == "" {
			continue
		}
		k := nsName(es.Namespace, svc)
		ix.slices[k] = append(ix.slices[k], es)
	}
	for i := range in.Pods {
		p := &in.Pods[i]
		ix.podLabels[nsName(p.Namespace, p.Name)] = p.Labels
	}
	for i := range in.Secrets {
		s := &in.Secrets[i]
		ix.secrets[nsName(s.Namespace, s.Name)] = s
	}
	for i := range in.Deployments {
		d := &in.Deployments[i]
		ix.deployments[nsName(d.Namespace, d.Name)] = d
	}
	for i := range in.MeshFunctions {
		f := &in.MeshFunctions[i]
		ix.functions[nsName(f.Namespace, f.Name)] = f
	}
	for i := range in.RedisProxies {
		r := &in.RedisProxies[i]
		ix.redis[nsName(r.Namespace, r.Name)] = r
	}
	return ix
}
