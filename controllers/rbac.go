// Package controllers holds the reconcilers that turn MeshRoutes, MeshFunctions and
// RedisProxies (plus the Services, EndpointSlices, Pods and Secrets they name) into xDS
// snapshots, Deployments and status.
package controllers

// The permissions the manager needs, in one place. `make manifests` turns them into
// config/rbac/role.yaml.
//
// +kubebuilder:rbac:groups=mesh.weft.dev,resources=meshroutes;meshfunctions;redisproxies,verbs=get;list;watch
// +kubebuilder:rbac:groups=mesh.weft.dev,resources=meshroutes/status;meshfunctions/status;redisproxies/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=services,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch;create;update
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get;list;watch
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=apps,resources=deployments/scale,verbs=get;update;patch
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations,verbs=get;list;watch;update;patch
