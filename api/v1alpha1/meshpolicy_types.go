package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// MeshPolicySpec says which workload identities may call the selected workloads, on which
// hosts, paths and methods (Istio's AuthorizationPolicy, flattened). The callee's sidecar
// enforces it on the caller's mutual-TLS identity: DENY policies first, then, when any ALLOW
// policy selects the workload, a request must match one of its rules; a workload no policy
// selects admits every call.
//
// With targetRefs the policy attaches to RedisProxy pools instead (Gateway API's policy
// attachment): it says which workload identities may use them.
//
// +kubebuilder:validation:XValidation:rule="self.action != 'DENY' || size(self.rules) > 0",message="a DENY policy needs at least one rule: with none it would deny nothing (to deny everything, write action: DENY with one rule that has no from and no to)"
// +kubebuilder:validation:XValidation:rule="!(has(self.selector) && has(self.targetRefs))",message="selector and targetRefs cannot both be set: a policy either selects pods by label (their inbound HTTP calls) or attaches to RedisProxy pools by targetRefs; write two MeshPolicies"
// +kubebuilder:validation:XValidation:rule="!has(self.targetRefs) || !has(self.rules) || self.rules.all(r, !has(r.to))",message="a policy whose targetRefs name a RedisProxy matches callers only: Redis has no hosts, paths or methods, so leave to out of its rules and say who may use the pool with from"
type MeshPolicySpec struct {
	// Selector picks the pods (in this namespace) whose inbound sidecar enforces the
	// policy, by their labels. Empty (and no targetRefs) selects every meshed pod of the
	// namespace.
	// +optional
	Selector *WorkloadSelector `json:"selector,omitempty"`

	// TargetRefs attach the policy to RedisProxy pools of this namespace instead of to
	// pods: its rules then say which workload identities may use the pools (from only).
	// A pool served in the caller's own sidecar is left out of, or refused in, the
	// sidecars of pods whose ServiceAccount the policy denies; a standalone proxy checks
	// each caller's mutual-TLS identity per connection.
	// +optional
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	TargetRefs []PolicyTargetRef `json:"targetRefs,omitempty"`

	// Action is ALLOW (a call must match a rule of some ALLOW policy) or DENY (a call that
	// matches a rule is refused, whatever ALLOW policies say).
	// +optional
	// +kubebuilder:default=ALLOW
	Action PolicyAction `json:"action,omitempty"`

	// Rules of the policy. A call matches a rule when it matches one of its from entries
	// (or the rule has none) and one of its to entries (or the rule has none). An ALLOW
	// policy with no rules allows nothing: the selected workloads refuse every call.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	Rules []PolicyRule `json:"rules,omitempty"`
}

// PolicyTargetRef names an object of the policy's namespace the policy attaches to (Gateway
// API's LocalPolicyTargetReference): today a RedisProxy.
type PolicyTargetRef struct {
	// Group of the target: mesh.weft.dev.
	// +kubebuilder:validation:Enum=mesh.weft.dev
	Group string `json:"group"`
	// Kind of the target: RedisProxy.
	// +kubebuilder:validation:Enum=RedisProxy
	Kind string `json:"kind"`
	// Name of the target, in the policy's namespace.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	Name string `json:"name"`
}

// Policy target kinds and group.
const (
	PolicyTargetGroup      = "mesh.weft.dev"
	PolicyTargetRedisProxy = "RedisProxy"
)

// PolicyAction is what a matching rule does.
// +kubebuilder:validation:Enum=ALLOW;DENY
type PolicyAction string

// Policy actions.
const (
	PolicyAllow PolicyAction = "ALLOW"
	PolicyDeny  PolicyAction = "DENY"
)

// PolicyRule is one rule: who (from) may do what (to).
type PolicyRule struct {
	// From lists the callers; a call matches when it matches any entry. Empty: any
	// caller, also one without a mesh identity (a plaintext caller in permissive mode).
	// +optional
	// +kubebuilder:validation:MaxItems=8
	// +listType=atomic
	From []PolicySource `json:"from,omitempty"`

	// To lists the operations; a call matches when it matches any entry. Empty: any
	// operation.
	// +optional
	// +kubebuilder:validation:MaxItems=8
	// +listType=atomic
	To []PolicyOperation `json:"to,omitempty"`
}

// PolicySource names callers by their verified mutual-TLS identity. Set principals,
// namespaces or both (then a caller must match both).
//
// +kubebuilder:validation:XValidation:rule="has(self.principals) || has(self.namespaces)",message="a from entry needs principals or namespaces (leave from out to match any caller)"
type PolicySource struct {
	// Principals are workload identities: spiffe://<trust domain>/ns/<namespace>/sa/<service account>,
	// or <namespace>/<service account> for any trust domain the mesh trusts, or * for any
	// caller with a mesh identity.
	// +optional
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.all(p, p == '*' || p.matches('^spiffe://[a-z0-9.-]+/ns/[a-z0-9]([-a-z0-9]*[a-z0-9])?/sa/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$') || p.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$'))",message="each principal must be spiffe://<trust domain>/ns/<namespace>/sa/<service account>, <namespace>/<service account> (such as default/productpage), or *"
	Principals []string `json:"principals,omitempty"`

	// Namespaces of callers: any workload identity of these namespaces.
	// +optional
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	// +kubebuilder:validation:items:MaxLength=63
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Namespaces []string `json:"namespaces,omitempty"`
}

// PolicyOperation names requests. Set any of hosts, paths and methods; a request must
// match each one set.
//
// +kubebuilder:validation:XValidation:rule="has(self.hosts) || has(self.paths) || has(self.methods)",message="a to entry needs hosts, paths or methods (leave to out to match any request)"
type PolicyOperation struct {
	// Hosts the request names (its Host or :authority). A host a MeshRoute, MeshFunction
	// or Service serves matches every form callers use for it (reviews, reviews.ns,
	// reviews.ns.svc.cluster.local, with or without its ports); another host matches
	// literally, and *.example.com any host ending in .example.com.
	// +optional
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=32
	// +listType=atomic
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:items:Pattern=`^(\*\.)?[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?$`
	Hosts []string `json:"hosts,omitempty"`

	// Paths the request's path (without its query) must equal, or, ending in *, start
	// with: /api/* matches /api/ and everything below it; * alone matches every path.
	// Paths are compared after RFC 3986 normalization (dot segments removed, duplicate
	// slashes merged, percent-encoded unreserved characters decoded).
	// +optional
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	// +kubebuilder:validation:items:MaxLength=512
	// +kubebuilder:validation:XValidation:rule="self.all(p, p == '*' || (p.startsWith('/') && !p.substring(0, size(p) - 1).contains('*') && !p.contains('?') && !p.contains('#')))",message="each path must start with / and may end in * (a prefix), such as /api/* or /healthz; or be * for every path; no ? or # and no * elsewhere"
	Paths []string `json:"paths,omitempty"`

	// Methods, such as GET or POST.
	// +optional
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	// +kubebuilder:validation:items:MaxLength=32
	// +kubebuilder:validation:items:Pattern=`^[A-Z][A-Z-]*$`
	Methods []string `json:"methods,omitempty"`
}

// MeshPolicyStatus reports whether the policy is valid and in force.
type MeshPolicyStatus struct {
	MeshStatus `json:",inline"`
}

// MeshPolicy says which workload identities may call the selected workloads, and how.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=mp,categories=weft
// +kubebuilder:printcolumn:name="Action",type=string,JSONPath=`.spec.action`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,description="Why the object is or is not ready"
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type MeshPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec MeshPolicySpec `json:"spec"`
	// Status is defaulted to {observedGeneration: 0} so an object Weft has not reconciled
	// yet reads InProgress to kstatus.
	// +kubebuilder:default={observedGeneration: 0}
	Status MeshPolicyStatus `json:"status,omitempty"`
}

// MeshPolicyList is a list of MeshPolicies.
//
// +kubebuilder:object:root=true
type MeshPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MeshPolicy `json:"items"`
}
