// Package v1alpha1 holds the Weft API: MeshRoute, MeshFunction, RedisProxy and MeshPolicy in the group
// mesh.weft.dev. These types are what users kubectl apply (or sync from Git); the operator
// turns them into Envoy xDS snapshots and Deployments.
//
// +kubebuilder:object:generate=true
// +groupName=mesh.weft.dev
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of every Weft kind.
	GroupVersion = schema.GroupVersion{Group: "mesh.weft.dev", Version: "v1alpha1"}

	// SchemeBuilder registers the Weft kinds with a runtime.Scheme.
	// (apimachinery's builder, not controller-runtime's deprecated scheme.Builder: the API
	// package stays importable without controller-runtime.)
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the Weft kinds to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

// addKnownTypes registers every Weft kind and the group version's meta types (ListOptions,
// WatchEvent, ...), as controller-runtime's scheme.Builder.Register did.
func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&MeshRoute{}, &MeshRouteList{},
		&MeshFunction{}, &MeshFunctionList{},
		&RedisProxy{}, &RedisProxyList{},
		&MeshPolicy{}, &MeshPolicyList{},
	)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
