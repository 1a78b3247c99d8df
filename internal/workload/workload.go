// Package workload renders the Kubernetes objects Weft runs for its custom resources: the
// Deployment and Service of a MeshFunction (function container plus the Weft sidecar in front
// of it). Rendering is pure: the same resource and options always give the same objects, so
// reconcilers can compare and skip no-op writes, and golden files pin the output.
package workload

import (
	"fmt"
	"strconv"
	"time"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/capture"
)

// Ports; the sidecar's own (contract.InboundPort, contract.MetricsPort) are the contract's.
const (
	// ServicePort is the port of a function's Service: callers use plain http://name.
	ServicePort = 80
)

// Labels and annotations Weft puts on what it renders.
const (
	LabelFunction  = "weft.dev/function"
	LabelManagedBy = "app.kubernetes.io/managed-by"
	ManagedBy      = "weft"
	// LabelInject opts a pod in or out of sidecar injection; rendered pods already carry the
	// sidecar, so they opt out.
	LabelInject = "weft.dev/inject"
	// AnnotationTemplateHash records the hash of the rendered pod template, so a reconciler can
	// tell a changed spec from a no-op.
	AnnotationTemplateHash = "weft.dev/template-hash"
)

// Options are the cluster-wide settings rendering needs.
type Options struct {
	// SidecarImage is the image of the Weft sidecar.
	SidecarImage string
	// XDSAddress is host:port of the manager's ADS (and autoscaler signal) endpoint.
	XDSAddress string
	// DrainTimeout is how long a sidecar finishes in-flight requests after SIGTERM.
	DrainTimeout time.Duration
	// ClusterDomain is the DNS suffix of Services ("cluster.local").
	ClusterDomain string
	// Interception is how function pods without a weft.dev/interception annotation reach
	// their sidecar. Empty is capture.InterceptionProxyEnv, which for a function pod means no
	// capture at all (its calls bypass the mesh); capture.InterceptionIPTables adds the
	// weft-init container.
	Interception capture.Interception
	// XDSCA is the control plane's CA bundle (PEM): rendered sidecars get it and a projected
	// token to authenticate with (AddXDSCredentials). Empty renders neither.
	XDSCA []byte
}

// DefaultOptions are the settings used when the manager is given no flags.
func DefaultOptions() Options {
	return Options{
		SidecarImage:  "ghcr.io/weftmesh/weft-sidecar:v0.1.0",
		XDSAddress:    "weft-manager.weft-system.svc:" + strconv.Itoa(contract.XDSPort),
		DrainTimeout:  20 * time.Second,
		ClusterDomain: "cluster.local",
	}
}

// FunctionURL is the address callers use for a function.
func FunctionURL(namespace, name, clusterDomain string) string {
	return fmt.Sprintf("http://%s.%s.svc.%s", name, namespace, clusterDomain)
}
