package contract

// App probe rewriting (docs/probes.md), Istio's rewriteAppHTTPProbers with Weft's names.
// The kubelet's probes on a port that inbound capture takes would reach the sidecar's
// inbound listener, which in mutual TLS strict mode refuses them (they bring no mesh
// certificate). So the injector (internal/inject, and internal/workload for function pods)
// rewrites each such probe to an httpGet on MetricsPort at AppHealthPath(container, kind),
// never captured, and records the original in the sidecar's AppProbesEnv; the sidecar
// (sidecar/admin) answers that path by running the original probe against the app on the
// loopback.
const (
	// AppProbesEnv is the sidecar's environment variable holding the original probes: a JSON
	// object AppProbes, keyed by AppHealthPath (Istio: ISTIO_KUBE_APP_PROBERS).
	AppProbesEnv = "WEFT_APP_PROBERS"
	// AnnotationRewriteAppProbes set to "false" on a pod (or a MeshFunction's pod template)
	// keeps its probes as written (Istio: sidecar.istio.io/rewriteAppHTTPProbers).
	AnnotationRewriteAppProbes = "weft.dev/rewrite-app-probes"
	// MaxAppProbesBytes bounds AppProbesEnv. Three probes per container of a few hundred
	// bytes each fit many times over; the injector refuses a pod whose record would not fit,
	// and the sidecar refuses to start with a longer one.
	MaxAppProbesBytes = 64 << 10
)

// The probe kinds, the last element of an app-health path.
const (
	AppProbeReadiness = "readyz"
	AppProbeLiveness  = "livez"
	AppProbeStartup   = "startupz"
)

// AppHealthPath is the path on MetricsPort the rewritten probe of container asks:
// /app-health/<container>/<readyz|livez|startupz>, Istio's path.
func AppHealthPath(container, kind string) string {
	return "/app-health/" + container + "/" + kind
}

// AppProbes are the original probes by AppHealthPath.
type AppProbes map[string]AppProbe

// AppProbe is one original probe, in the JSON of the Kubernetes probe it came from (so the
// env var reads like the pod spec): exactly one of HTTPGet, TCPSocket and GRPC, with its
// port resolved to a number. The target host is always the pod's loopback, since a probe
// with a host of its own is never rewritten.
type AppProbe struct {
	HTTPGet   *AppProbeHTTPGet `json:"httpGet,omitempty"`
	TCPSocket *AppProbePort    `json:"tcpSocket,omitempty"`
	GRPC      *AppProbeGRPC    `json:"grpc,omitempty"`
	// TimeoutSeconds bounds one run of the probe; 0 means the kubelet's default, 1 s.
	TimeoutSeconds int32 `json:"timeoutSeconds,omitempty"`
}

// AppProbeHTTPGet is an httpGet probe: Kubernetes' HTTPGetAction without host.
type AppProbeHTTPGet struct {
	Path string `json:"path,omitempty"`
	Port int32  `json:"port"`
	// Scheme is "HTTP" (or empty) or "HTTPS".
	Scheme      string           `json:"scheme,omitempty"`
	HTTPHeaders []AppProbeHeader `json:"httpHeaders,omitempty"`
}

// AppProbeHeader is one header of an httpGet probe.
type AppProbeHeader struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// AppProbePort is a tcpSocket probe: connect to the port.
type AppProbePort struct {
	Port int32 `json:"port"`
}

// AppProbeGRPC is a grpc probe: grpc.health.v1.Health/Check of Service on Port.
type AppProbeGRPC struct {
	Port    int32   `json:"port"`
	Service *string `json:"service,omitempty"`
}
