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
