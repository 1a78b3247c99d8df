// Package controllers holds the reconcilers that turn MeshRoutes, MeshFunctions and
// RedisProxies (plus the Services, EndpointSlices, Pods and Secrets they name) into xDS
// snapshots, Deployments and status.
package controllers

// The permissions the manager needs, in one place, each checked against what the code calls.
// `make manifests` turns them into config/rbac/role.yaml; controllers/rbac_test.go fails on
// any wildcard and on any write to Secrets outside the manager's namespace.
//
// The Weft kinds: read, and their status written (patch; update for a full status write).
// +kubebuilder:rbac:groups=mesh.weft.dev,resources=meshroutes;meshfunctions;redisproxies;meshpolicies,verbs=get;list;watch
// +kubebuilder:rbac:groups=mesh.weft.dev,resources=meshroutes/status;meshfunctions/status;redisproxies/status;meshpolicies/status,verbs=update;patch
//
// Services and Deployments of functions and standalone Redis proxies: created, updated and
// (RedisProxy replicas set back to none) deleted.
// +kubebuilder:rbac:groups="",resources=services,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=apps,resources=deployments,verbs=get;list;watch;create;update;patch;delete
//
// What translation reads: Pod labels (metadata only), EndpointSlices, Namespace labels (the
// injection webhook), and the Secrets RedisProxies name (metadata watched, data read
// uncached). Secrets are read cluster-wide but written only in the manager's own namespace.
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
//
// The manager's own Secrets (the webhook certificate, the NATS token), in its namespace only:
// a Role, bound by config/rbac/secrets_role_binding.yaml. config/default sets the namespace.
// +kubebuilder:rbac:groups="",namespace=system,resources=secrets,verbs=create;update
//
// Events, written with the events.k8s.io/v1 recorder.
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
// +kubebuilder:rbac:groups=gateway.networking.k8s.io,resources=referencegrants,verbs=get;list;watch
//
// The sidecar injector's MutatingWebhookConfiguration and the MeshFunction validator's
// ValidatingWebhookConfiguration, only Weft's (their caBundles are kept in
// step with the manager's CA by a merge patch).
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations,resourceNames=weft-sidecar-injector,verbs=get;patch
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=validatingwebhookconfigurations,resourceNames=weft-meshfunction-validator,verbs=get;patch
