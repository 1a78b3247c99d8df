// Package v1alpha1 holds the Weft API: MeshRoute, MeshFunction and RedisProxy in the group
// mesh.weft.dev. These types are what users kubectl apply (or sync from Git); the operator
// turns them into Envoy xDS snapshots and Deployments.
//
// +kubebuilder:object:generate=true
// +groupName=mesh.weft.dev
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of every Weft kind.
	GroupVersion = schema.GroupVersion{Group: "mesh.weft.dev", Version: "v1alpha1"}

	// SchemeBuilder registers the Weft kinds with a runtime.Scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the Weft kinds to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
