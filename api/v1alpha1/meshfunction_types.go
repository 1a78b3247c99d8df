package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// LabelRevision names the revision a Deployment and its pods belong to (a MeshFunction with
// spec.traffic): xDS translation splits the function's endpoints by it and the autoscaler
// counts a pod's stats for it, as Knative's serving.knative.dev/revision label.
const LabelRevision = "weft.dev/revision"

// MeshFunctionSpec describes a function: its pods, how they scale (Knative's KPA vocabulary
// and defaults), how callers' sidecars hold requests while it scales from zero, and how it is
// called asynchronously.
type MeshFunctionSpec struct {
	// Template is the pod the function runs in, as in a Deployment. Weft adds its sidecar
	// next to the first container, which is the function. The schema describes the fields
	// Weft reads and keeps the others as written; the full pod template schema would make
	// the CRD about 640 KB, too large for client-side apply.
	// The schema is set by hack/crd-template-schema from functiontemplate_schema.yaml.
	// +kubebuilder:validation:Schemaless
	// +kubebuilder:pruning:PreserveUnknownFields
	// +kubebuilder:validation:Type=object
	Template FunctionTemplate `json:"template"`

	// Port the function's container listens on.
	// +optional
	// +kubebuilder:default=8080
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port,omitempty"`

	// Hosts callers use in addition to the function's own name (which also matches
	// name.namespace, name.namespace.svc and name.namespace.svc.cluster.local). Each is a
	// lower-case DNS name, optionally starting with "*." to match every subdomain, without a
	// port: callers may use any port.
	// +optional
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:items:Pattern=`^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	// +kubebuilder:validation:XValidation:rule="self.all(h, !h.contains(':'))",message="ports are not part of a host: use the port field"
	// +kubebuilder:validation:XValidation:rule="self.all(h, h.matches('^(\\\\*\\\\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$'))",message="each host must be a lower-case DNS name such as api.example.com or *.example.com, with no spaces, ports or upper-case letters"
	// +listType=set
	Hosts []string `json:"hosts,omitempty"`

	// Timeout for one call, from when it reaches the function's sidecar (Knative's revision
	// timeout, 300s by default).
	// +optional
	// +kubebuilder:default="300s"
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self) <= duration('1h')",message="timeout must be a duration from 0s to 1h, such as 30s or 1m30s"
	Timeout *Duration `json:"timeout,omitempty"`

	// Concurrency is how many requests one pod takes and the autoscaler aims for.
	// +optional
	// +kubebuilder:default={}
	Concurrency Concurrency `json:"concurrency,omitempty"`

	// Scale bounds and tunes the autoscaler.
	// +optional
	// +kubebuilder:default={}
	Scale Scale `json:"scale,omitempty"`

	// Activation bounds how callers' sidecars hold requests while the function has no ready
	// pod.
	// +optional
	// +kubebuilder:default={}
	Activation Activation `json:"activation,omitempty"`

	// Async enables calls that return 202 at once and run later through NATS JetStream.
	// +optional
	Async *Async `json:"async,omitempty"`

	// Traffic splits calls to the function's host between its revisions, as a Knative
	// Service's spec.traffic. Setting it turns revisions on: every change of spec.template
	// then creates an immutable revision with its own Deployment, named
	// spec.template.metadata.name or <function>-<n> (n counting from 00001), and each
	// revision scales (to zero) on its own. Without traffic the function has one
	// Deployment, named after it, that a template change rolls in place.
	// [{latestRevision: true, percent: 100}] sends every call to the newest ready revision;
	// naming revisions pins a split, and a rollback is a change of this list.
	// +optional
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:XValidation:rule="self.map(t, has(t.percent) ? t.percent : 0).sum() == 100",message="traffic percents must add up to 100"
	// +kubebuilder:validation:XValidation:rule="self.all(t, !has(t.tag) || self.filter(u, has(u.tag) && u.tag == t.tag).size() == 1)",message="each traffic tag may appear once: tags name their own host <tag>-<function>"
	// +listType=atomic
	Traffic []TrafficTarget `json:"traffic,omitempty"`

	// RevisionHistoryLimit is how many revisions without traffic are kept (their
	// Deployments at zero replicas) for a rollback; older ones are deleted. Revisions that
	// spec.traffic names, by name, tag or as the latest, are never deleted. Only used with
	// spec.traffic.
	// +optional
	// Bounded at 100 so status.revisions stays small (about 200 bytes a revision).
	// +kubebuilder:default=10
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	RevisionHistoryLimit *int32 `json:"revisionHistoryLimit,omitempty"`
}

// TrafficTarget sends a share of the function's calls to one revision and may give that
// revision a host of its own. Field names are Knative's.
// +kubebuilder:validation:XValidation:rule="!(has(self.revisionName) && has(self.latestRevision) && self.latestRevision)",message="a traffic target names either revisionName or latestRevision: true, not both"
// +kubebuilder:validation:XValidation:rule="has(self.revisionName) || (has(self.latestRevision) && self.latestRevision)",message="a traffic target needs revisionName or latestRevision: true"
type TrafficTarget struct {
	// RevisionName is the revision that gets this share, as listed in status.revisions.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	RevisionName string `json:"revisionName,omitempty"`

	// LatestRevision true sends this share to the newest revision that became ready, so
	// a new template takes it over once its pods serve.
	// +optional
	LatestRevision *bool `json:"latestRevision,omitempty"`

	// Percent of the calls to the function's own host that go to this revision, 0 to 100;
	// the percents of all targets add up to 100.
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	Percent *int64 `json:"percent,omitempty"`

	// Tag gives this revision a host of its own, <tag>-<function> (with the namespace forms
	// the function's host has), that reaches only this revision whatever its percent.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=30
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Tag string `json:"tag,omitempty"`
}

// Concurrency is Knative's containerConcurrency and target.
//
// The CEL rule on target repeats its OpenAPI minimum on purpose: the API server compares an
// integer value ("target: 0") with the minimum truncated to an integer (0), so the minimum
// alone lets 0 through (seen with kube-apiserver v1.36.3).
// +kubebuilder:validation:XValidation:rule="!has(self.target) || self.target >= 0.01",message="concurrency.target must be at least 0.01: use a positive per-pod target, or leave it unset for the default"
// +kubebuilder:validation:XValidation:rule="!has(self.target) || !has(self.containerConcurrency) || self.containerConcurrency == 0 || self.target <= double(self.containerConcurrency)",message="target cannot exceed containerConcurrency: lower target or raise containerConcurrency"
type Concurrency struct {
	// ContainerConcurrency is the hard limit of requests in flight per pod, enforced by its
	// sidecar (excess requests queue up to 10x this, then get 503). 0 means no limit.
	// +optional
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	ContainerConcurrency int32 `json:"containerConcurrency"`

	// Target is the per-pod value of the scale metric the autoscaler aims for, before
	// utilization. Defaults to containerConcurrency if set, else 100 (concurrency) or 200
	// (rps).
	// +optional
	// +kubebuilder:validation:Minimum=0.01
	// +kubebuilder:validation:Maximum=100000
	Target *float64 `json:"target,omitempty"`

	// TargetUtilizationPercentage of the target the autoscaler fills before adding pods.
	// +optional
	// +kubebuilder:default=70
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	TargetUtilizationPercentage int32 `json:"targetUtilizationPercentage"`
}

// ScaleMetric is what the autoscaler measures.
// +kubebuilder:validation:Enum=concurrency;rps
type ScaleMetric string

// Scale metrics.
const (
	MetricConcurrency ScaleMetric = "concurrency"
	MetricRPS         ScaleMetric = "rps"
)

// Scale tunes the autoscaler. Names and defaults are Knative's.
// +kubebuilder:validation:XValidation:rule="!has(self.max) || self.max == 0 || !has(self.min) || self.min <= self.max",message="scale.min cannot be above scale.max: lower min or raise max"
// +kubebuilder:validation:XValidation:rule="!has(self.max) || self.max == 0 || !has(self.initial) || self.initial <= self.max",message="scale.initial cannot be above scale.max"
// +kubebuilder:validation:XValidation:rule="!has(self.stableWindow) || (self.stableWindow.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self.stableWindow) >= duration('6s') && duration(self.stableWindow) <= duration('1h'))",message="scale.stableWindow must be a duration from 6s to 1h, such as 60s"
type Scale struct {
	// Metric the autoscaler measures.
	// +optional
	// +kubebuilder:default=concurrency
	Metric ScaleMetric `json:"metric"`

	// Min is the fewest replicas the autoscaler keeps, 0 to 1000. 0 lets the function scale
	// to zero.
	// +optional
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	// +kubebuilder:validation:XValidation:rule="self >= 0 && self <= 1000",message="scale.min must be between 0 and 1000"
	Min int32 `json:"min"`

	// Max is the most replicas the autoscaler starts, 0 to 1000. 0 means no limit.
	// +optional
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	// +kubebuilder:validation:XValidation:rule="self >= 0 && self <= 1000",message="scale.max must be between 0 and 1000 (0 means no limit)"
	Max int32 `json:"max"`

	// Initial is the number of replicas started when the function is created, 0 to 1000.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000
	// +kubebuilder:validation:XValidation:rule="self >= 0 && self <= 1000",message="scale.initial must be between 0 and 1000"
	Initial int32 `json:"initial"`

	// ActivationScale is the least number of replicas started when the function scales up
	// from zero.
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	// +kubebuilder:validation:XValidation:rule="self >= 1 && self <= 1000",message="scale.activationScale must be between 1 and 1000"
	ActivationScale int32 `json:"activationScale"`

	// StableWindow is the period the metric is averaged over for normal scaling, and how long
	// the function must be idle before it scales to zero.
	// +optional
	// +kubebuilder:default="60s"
	StableWindow Duration `json:"stableWindow"`

	// PanicWindowPercentage is the panic window as a share of the stable window.
	// +optional
	// +kubebuilder:default=10
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	PanicWindowPercentage int32 `json:"panicWindowPercentage"`

	// PanicThresholdPercentage of current capacity that, reached in the panic window, makes the
	// autoscaler scale up fast and stop scaling down.
	// +optional
	// +kubebuilder:default=200
	// +kubebuilder:validation:Minimum=110
	// +kubebuilder:validation:Maximum=1000
	PanicThresholdPercentage int32 `json:"panicThresholdPercentage"`

	// MaxScaleUpRate bounds growth per decision to this many times the ready pods.
	// +optional
	// +kubebuilder:default=1000
	// +kubebuilder:validation:Minimum=1.01
	// +kubebuilder:validation:Maximum=1000
	MaxScaleUpRate float64 `json:"maxScaleUpRate"`

	// MaxScaleDownRate bounds shrinking per decision to ready pods divided by this.
	// +optional
	// +kubebuilder:default=2
	// +kubebuilder:validation:Minimum=1.01
	// +kubebuilder:validation:Maximum=1000
	MaxScaleDownRate float64 `json:"maxScaleDownRate"`

	// ScaleDownDelay keeps the highest recent decision for this long before scaling down.
	// +optional
	// +kubebuilder:default="0s"
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self) <= duration('1h')",message="scale.scaleDownDelay must be a duration from 0s to 1h, such as 30s or 1m30s"
	ScaleDownDelay Duration `json:"scaleDownDelay"`

	// ScaleToZeroGracePeriod is the least time the last pod stays after the function became
	// idle, for callers' sidecars to learn it is gone.
	// +optional
	// +kubebuilder:default="30s"
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self) <= duration('1h')",message="scale.scaleToZeroGracePeriod must be a duration from 0s to 1h, such as 30s or 1m30s"
	ScaleToZeroGracePeriod Duration `json:"scaleToZeroGracePeriod"`
}

// Activation bounds the hold in callers' sidecars while a function scales from zero.
type Activation struct {
	// HoldTimeout is the longest a caller's sidecar holds a request for the function; then it
	// answers 503 with Retry-After.
	// +optional
	// +kubebuilder:default="30s"
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self) <= duration('1h')",message="activation.holdTimeout must be a duration from 0s to 1h, such as 30s or 1m30s"
	HoldTimeout Duration `json:"holdTimeout"`

	// MaxPending requests each caller's sidecar holds for the function; more get 503 at once.
	// +optional
	// +kubebuilder:default=100
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000
	MaxPending int32 `json:"maxPending"`
}

// Async configures asynchronous calls: a caller's sidecar publishes them to NATS JetStream and
// the function's sidecars pull them.
type Async struct {
	// Enabled makes every call to the function asynchronous. Without it, callers opt in per
	// request with the header "Prefer: respond-async".
	// +optional
	Enabled bool `json:"enabled,omitempty"`

	// MaxAttempts before a call goes to the dead-letter stream.
	// +optional
	// +kubebuilder:default=3
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=100
	MaxAttempts int32 `json:"maxAttempts,omitempty"`

	// Backoff before the first retry; it doubles per attempt up to MaxBackoff.
	// +optional
	// +kubebuilder:default="1s"
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self) <= duration('1h')",message="async.backoff must be a duration from 0s to 1h, such as 30s or 1m30s"
	Backoff *Duration `json:"backoff,omitempty"`

	// MaxBackoff caps the back-off between retries.
	// +optional
	// +kubebuilder:default="60s"
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self) <= duration('24h')",message="async.maxBackoff must be a duration from 0s to 24h, such as 30s or 1m30s"
	MaxBackoff *Duration `json:"maxBackoff,omitempty"`

	// RetryOn lists the function's status codes that cause a retry. Connection failures and
	// timeouts are always retried.
	// +optional
	// +kubebuilder:default={500,502,503,504,429}
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:Minimum=400
	// +kubebuilder:validation:items:Maximum=599
	// +listType=set
	RetryOn []int32 `json:"retryOn,omitempty"`

	// MaxAge of a call; older calls go to the dead-letter stream unprocessed.
	// +optional
	// +kubebuilder:default="24h"
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]{1,5}(\\\\.[0-9]{1,9})?(ms|s|m|h)){1,4}$') && duration(self) <= duration('720h')",message="async.maxAge must be a duration from 0s to 720h, such as 30s or 1m30s"
	MaxAge *Duration `json:"maxAge,omitempty"`

	// DeadLetter keeps calls that ran out of attempts or age in a dead-letter stream.
	// +optional
	// +kubebuilder:default=true
	DeadLetter *bool `json:"deadLetter,omitempty"`

	// MaxInflight calls each function pod's sidecar runs at once.
	// +optional
	// +kubebuilder:default=10
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1000
	MaxInflight int32 `json:"maxInflight,omitempty"`

	// MaxBodyBytes of an async call; bigger bodies get 413.
	// +optional
	// +kubebuilder:default=1048576
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=8388608
	MaxBodyBytes int32 `json:"maxBodyBytes,omitempty"`
}

// MeshFunctionStatus reports the function's address, replicas and readiness.
type MeshFunctionStatus struct {
	MeshStatus `json:",inline"`

	// URL callers use for the function.
	// +optional
	URL string `json:"url,omitempty"`

	// Replicas the Deployment has.
	// +optional
	Replicas int32 `json:"replicas"`

	// ReadyReplicas the Deployment has.
	// +optional
	ReadyReplicas int32 `json:"readyReplicas"`

	// DesiredReplicas the autoscaler chose last.
	// +optional
	DesiredReplicas int32 `json:"desiredReplicas"`

	// LastScaleTime is when the autoscaler last changed the replicas.
	// +optional
	LastScaleTime *metav1.Time `json:"lastScaleTime,omitempty"`

	// LatestCreatedRevisionName is the newest revision (with spec.traffic).
	// +optional
	LatestCreatedRevisionName string `json:"latestCreatedRevisionName,omitempty"`

	// LatestReadyRevisionName is the newest revision that had a ready pod; latestRevision
	// traffic goes to it.
	// +optional
	LatestReadyRevisionName string `json:"latestReadyRevisionName,omitempty"`

	// Revisions are the function's kept revisions, newest first (with spec.traffic).
	// +optional
	// +listType=atomic
	Revisions []RevisionStatus `json:"revisions,omitempty"`

	// Traffic is spec.traffic as served: each target with its revision resolved. When
	// spec.traffic cannot be served (it names a revision that does not exist), this keeps
	// the split served before and the TrafficResolved condition says why.
	// +optional
	// +listType=atomic
	Traffic []TrafficStatus `json:"traffic,omitempty"`
}

// RevisionStatus is one revision: an immutable pod template with its own Deployment
// (labelled weft.dev/revision=<name>) that scales on its own.
type RevisionStatus struct {
	// Name of the revision and of its Deployment.
	Name string `json:"name"`

	// TemplateHash identifies spec.template as it was when the revision was created.
	TemplateHash string `json:"templateHash"`

	// CreationTimestamp is when the revision was created.
	// +optional
	CreationTimestamp metav1.Time `json:"creationTimestamp,omitempty"`

	// Replicas the revision's Deployment has.
	// +optional
	Replicas int32 `json:"replicas"`

	// ReadyReplicas the revision's Deployment has.
	// +optional
	ReadyReplicas int32 `json:"readyReplicas"`

	// DesiredReplicas the autoscaler chose last for this revision.
	// +optional
	DesiredReplicas int32 `json:"desiredReplicas"`

	// Ready is true once the revision had a ready pod: it can serve, and a revision scaled
	// to zero since is activated by the first call.
	// +optional
	Ready bool `json:"ready"`
}

// TrafficStatus is one served traffic target (Knative's status.traffic).
type TrafficStatus struct {
	// RevisionName is the revision the target resolved to.
	RevisionName string `json:"revisionName"`

	// LatestRevision is true when the target follows the newest ready revision.
	// +optional
	LatestRevision *bool `json:"latestRevision,omitempty"`

	// Percent of the function's calls this revision gets.
	// +optional
	Percent *int64 `json:"percent,omitempty"`

	// Tag of the target, if any.
	// +optional
	Tag string `json:"tag,omitempty"`

	// URL reaches this revision only (tagged targets).
	// +optional
	URL string `json:"url,omitempty"`
}

// MeshFunction is a function that scales to zero; callers' sidecars hold requests while it
// starts, with no gateway or activator in the path.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=mfn,categories=weft
// +kubebuilder:printcolumn:name="URL",type=string,JSONPath=`.status.url`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,description="Why the object is or is not ready"
// +kubebuilder:printcolumn:name="Replicas",type=integer,JSONPath=`.status.replicas`
// +kubebuilder:printcolumn:name="Desired",type=integer,JSONPath=`.status.desiredReplicas`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type MeshFunction struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec MeshFunctionSpec `json:"spec"`
	// Status is defaulted to {observedGeneration: 0} so an object Weft has not reconciled
	// yet reads InProgress to kstatus (which skips its generation check when
	// observedGeneration is absent and would call the object Current).
	// +kubebuilder:default={observedGeneration: 0}
	Status MeshFunctionStatus `json:"status,omitempty"`
}

// MeshFunctionList is a list of MeshFunctions.
//
// +kubebuilder:object:root=true
type MeshFunctionList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MeshFunction `json:"items"`
}
