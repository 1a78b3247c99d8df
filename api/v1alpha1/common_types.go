package v1alpha1

import metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

// MeshStatus is the part of every Weft status that reports how the object reached the
// sidecars. It is embedded inline in each kind's status.
type MeshStatus struct {
	// ObservedGeneration is the .metadata.generation this status was computed from.
	// +optional
	// +kubebuilder:default=0
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// Conditions are Accepted, ResolvedRefs, Programmed and Ready, as they apply to the kind.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`

	// SyncedSidecars is how many sidecars that receive this object have ACKed the snapshot
	// version that contains its current generation. The API server defaults it to 0 once
	// status is written (a merge patch never sends an unchanged 0), so tables show 0 rather
	// than a blank.
	// +optional
	// +kubebuilder:default=0
	SyncedSidecars int32 `json:"syncedSidecars,omitempty"`

	// RejectedSidecars is how many of those sidecars NACKed that version.
	// +optional
	RejectedSidecars int32 `json:"rejectedSidecars,omitempty"`

	// LastRejection is the error the most recent rejecting sidecar sent, prefixed with its
	// node ID.
	// +optional
	LastRejection string `json:"lastRejection,omitempty"`
}

// SecretKeyRef names one key of a Secret in the object's namespace.
type SecretKeyRef struct {
	// Name of the Secret, in the same namespace as the object.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// Key within the Secret's data. Defaults to "password".
	// +optional
	// +kubebuilder:default=password
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Key string `json:"key,omitempty"`
}
