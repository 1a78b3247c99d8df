package v1alpha1

// Condition types shared by the three kinds. They follow Gateway API's vocabulary so users
// reading `kubectl describe` see familiar words.
const (
	// ConditionAccepted is True when the object is valid and not in conflict with another.
	ConditionAccepted = "Accepted"
	// ConditionResolvedRefs is True when every Service, port, subset, function and Secret the
	// object names exists.
	ConditionResolvedRefs = "ResolvedRefs"
	// ConditionProgrammed is True when the object's current version is in the xDS snapshot and
	// no sidecar rejected it.
	ConditionProgrammed = "Programmed"
	// ConditionReady is True when the workload behind the object can serve (MeshFunction: it
	// has ready pods or can be activated; RedisProxy: at least one server is reachable).
	ConditionReady = "Ready"
)

// Condition reasons. Each names the cause in a word; the condition message says what to do.
const (
	ReasonAccepted        = "Accepted"
	ReasonHostConflict    = "HostConflict"
	ReasonInvalid         = "Invalid"
	ReasonResolvedRefs    = "ResolvedRefs"
	ReasonBackendNotFound = "BackendNotFound"
	ReasonSecretNotFound  = "SecretNotFound"
	ReasonProgrammed      = "Programmed"
	ReasonPending         = "Pending"
	ReasonRejected        = "Rejected"
	ReasonReady           = "Ready"
	ReasonScaledToZero    = "ScaledToZero"
	ReasonDeploying       = "Deploying"
	ReasonWorkloadFailed  = "WorkloadFailed"
	ReasonNoServers       = "NoServers"
)

// Status summary, ownership, consent and warning vocabulary (issue 13). Ready, Stalled and
// Reconciling follow kstatus (sigs.k8s.io/cli-utils/pkg/kstatus): Stalled=True makes kstatus
// report Failed, Reconciling=True or Ready=False InProgress, Ready=True Current.
const (
	// ConditionStalled is True when the object cannot make progress until a user changes it
	// (it is invalid, conflicts, names what it may not, or a sidecar rejected it).
	ConditionStalled = "Stalled"
	// ConditionReconciling is True while Weft is still working towards Ready (sidecars have
	// not ACKed the current generation yet, pods are starting).
	ConditionReconciling = "Reconciling"
	// ConditionAvailable is True when the workload behind the object can serve: MeshFunction
	// has ready pods or is scaled to zero and can be activated; RedisProxy has a server with a
	// ready endpoint. Ready sums it up with the other conditions.
	ConditionAvailable = "Available"
	// ConditionWarning is True when the object is served but likely not as its author meant
	// (a rule that can never match, a change that moved Redis keys). It never changes what
	// kstatus computes.
	ConditionWarning = "Warning"

	// ReasonNameConflict: an object Weft would create (Service, Deployment) already exists
	// and is not controlled by this resource; Weft leaves it alone.
	ReasonNameConflict = "NameConflict"
	// ReasonRefNotPermitted: a destination in another namespace, with no ReferenceGrant there
	// allowing it (Gateway API's reason).
	ReasonRefNotPermitted = "RefNotPermitted"
	// ReasonNotAllowedHosts: a host that belongs to another namespace, with no ReferenceGrant
	// there allowing it (Gateway API's listener reason).
	ReasonNotAllowedHosts = "NotAllowedHosts"
	// ReasonNotAccepted is Programmed's and Ready's reason while Accepted is False.
	ReasonNotAccepted = "NotAccepted"
	// ReasonShadowedRule: a rule comes after a catch-all rule and can never match.
	ReasonShadowedRule = "ShadowedRule"
	// ReasonTrafficPolicyIgnored: a MeshRoute with a trafficPolicy sends to a MeshFunction,
	// whose shared cluster the function shapes; the policy applies to Service destinations only.
	ReasonTrafficPolicyIgnored = "TrafficPolicyIgnored"
	// ReasonKeysRehomed: the pool's ring changed (server names, hash or distribution) while
	// it was serving, so keys now map to other servers.
	ReasonKeysRehomed = "KeysRehomed"
	// ReasonRevisionMissing: spec.traffic names a revision the function does not have
	// (Knative's reason); the split served before stays until it is fixed.
	ReasonRevisionMissing = "RevisionMissing"
	// ReasonHostNotFound: a MeshPolicy's to.hosts names a host no MeshRoute, MeshFunction
	// or Service serves; the rule matches only requests that name it literally.
	ReasonHostNotFound = "HostNotFound"
	// ReasonTargetNotFound: a MeshPolicy's targetRefs names a RedisProxy that does not exist
	// (Gateway API's policy reason); the policy guards nothing until it does.
	ReasonTargetNotFound = "TargetNotFound"
	// ReasonNoWarnings is Warning's reason when it is False.
	ReasonNoWarnings = "NoWarnings"
	// ReasonStatusPending: the other half of the status has not been written yet.
	ReasonStatusPending = "StatusPending"
)
