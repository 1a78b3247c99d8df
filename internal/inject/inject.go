// Package inject adds the Weft sidecar to Pods at admission. It takes a Pod and the labels of
// its namespace and returns the Pod with the sidecar container, what sends the app's traffic
// through it (the weft-init capture container with iptables interception, or HTTP_PROXY env
// with proxy-env; docs/capture.md), and the identity the sidecar presents to the control
// plane (docs/xds-contract.md "Nodes"). The mutation is a pure function (Inject); webhook.go wraps
// it in a controller-runtime admission handler, cert.go and cabundle.go keep the webhook's
// self-managed certificate and the MutatingWebhookConfiguration's caBundle in step.
package inject

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/capture"
	"github.com/weftmesh/weft/internal/workload"
)

// Labels and annotations users set to steer injection.
const (
	// LabelInject on a namespace ("enabled") opts every Pod in it in; on a Pod, "true" opts
	// it in and "false" opts it out even in an enabled namespace.
	LabelInject = "weft.dev/inject"
	// LabelFunction names the MeshFunction (in the Pod's namespace) a Pod serves.
	LabelFunction = "weft.dev/function"
	// AnnotationAppPort overrides the app port the sidecar's inbound listener forwards to.
	AnnotationAppPort = "weft.dev/app-port"
	// AnnotationConcurrency sets the sidecar's worker threads (its --concurrency flag);
	// unset, the sidecar runs one, as Linkerd's proxy does.
	AnnotationConcurrency = "weft.dev/proxy-concurrency"
	// AnnotationStatus records that the Pod was injected, and with which image.
	AnnotationStatus = "weft.dev/sidecar"
)

// Names the sidecar uses; its ports are the contract's (cmd/sidecar defaults).
const (
	ContainerName = "weft-sidecar"
	noProxy       = "localhost,127.0.0.1"
)

// Config is what the manager's flags decide about the injected sidecar.
type Config struct {
	// Image of the sidecar container, e.g. ghcr.io/weftmesh/weft-sidecar:v0.1.0.
	Image string
	// XDSAddress is where sidecars reach the control plane (host:port).
	XDSAddress string
	// DrainSeconds is how long the sidecar's preStop waits, so that callers' sidecars learn
	// over EDS that the pod is going away before it stops accepting calls.
	DrainSeconds int64
	// Interception is how pods without a weft.dev/interception annotation reach the
	// sidecar; empty is capture.InterceptionProxyEnv.
	Interception capture.Interception
	// XDSCA is the control plane's CA bundle (PEM); with it the sidecar gets a projected
	// token and the bundle to authenticate with (token.go).
	XDSCA []byte
}

// Wanted reports whether a Pod with podLabels in a namespace with nsLabels should get the
// sidecar: an explicit pod label wins, otherwise the namespace label decides.
func Wanted(nsLabels, podLabels map[string]string) bool {
	switch podLabels[LabelInject] {
	case "true":
		return true
	case "false":
		return false
	}
	return nsLabels[LabelInject] == "enabled"
}

// Injected reports whether pod already has the sidecar, which makes Inject idempotent when
// the webhook is called again (reinvocation, a retried create).
func Injected(pod *corev1.Pod) bool {
	return slices.ContainsFunc(pod.Spec.Containers, func(c corev1.Container) bool { return c.Name == ContainerName })
}

// Inject adds the sidecar to pod (in namespace ns) unless it already has one. It returns
// whether pod changed, and an error that says what to fix when the Pod's annotations are
// unusable.
func Inject(pod *corev1.Pod, ns string, cfg Config) (bool, error) {
	if Injected(pod) {
		return false, nil
	}
	appPort, err := appPortOf(pod)
	if err != nil {
		return false, err
	}
	if err := checkConcurrency(pod); err != nil {
		return false, err
	}
	telEnv, err := telemetryEnv(pod) // telemetry.go
	if err != nil {
		return false, err
	}
	mode, capCfg, err := workload.InterceptionFor(pod.Annotations, cfg.Interception)
	if err != nil {
		return false, err
	}
	if slices.ContainsFunc(slices.Concat(pod.Spec.InitContainers, pod.Spec.Containers), func(c corev1.Container) bool {
		return c.Name == workload.CaptureInitContainerName
	}) {
		return false, fmt.Errorf("container name %q is reserved for Weft's capture init container; rename the container", workload.CaptureInitContainerName)
	}
	tlsPort := false // the sidecar terminates mesh TLS on podIP:appPort
	// tlsAll: the sidecar terminates mesh TLS on every port capture brings it (tlsPorts).
	tlsPorts, tlsAll := "", false
	// inboundCapture: a pod with no app port whose inbound is captured (one that serves
	// only TCP, such as redis:7 alone): its sidecar serves an inbound listener with only
	// the TCP passthrough (--inbound-capture; docs/mtls.md, "TCP").
	inboundCapture := false
	switch mode {
	case capture.InterceptionIPTables:
		// The app's TCP is captured: proxy env would only make HTTP clients address the
		// sidecar directly, which capture already does for every client. Inbound, every
		// port is captured unless the annotations say otherwise, as Istio does, app port
		// or not.
		pod.Spec.InitContainers = workload.InsertCaptureInit(pod.Spec.InitContainers, workload.CaptureInitContainer(cfg.Image, capCfg), ContainerName)
		tlsPort = appPort != 0 && workload.CapturesInbound(capCfg, uint16(appPort))
		tlsPorts, tlsAll = inboundTLSPorts(capCfg)
		inboundCapture = appPort == 0 && capturesAnyInbound(capCfg)
	default:
		for i := range pod.Spec.Containers {
			addProxyEnv(&pod.Spec.Containers[i])
		}
	}
	sc := sidecar(pod, ns, appPort, cfg)
	if err := rewriteAppProbes(pod, &sc, mode, capCfg); err != nil { // probes.go
		return false, err
	}
	if inboundCapture {
		sc.Args = append(sc.Args, "--"+contract.FlagInboundCapture)
	}
	sc.Env = append(sc.Env, telEnv...)
	pod.Spec.Containers = append(pod.Spec.Containers, sc)
	addXDSCredentials(pod, cfg)
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[AnnotationStatus] = "injected " + cfg.Image
	if tlsPort {
		// Callers' sidecars may originate mutual TLS to podIP:appPort: capture brings it to
		// this sidecar's inbound listener, which terminates it (docs/mtls.md). Set after the
		// sidecar's --labels, which name the workload's own labels only.
		if pod.Labels == nil {
			pod.Labels = map[string]string{}
		}
		pod.Labels[contract.LabelInboundTLSPort] = strconv.Itoa(int(appPort))
	}
	if tlsAll {
		// Every captured inbound port reaches this sidecar, which terminates mesh TLS on
		// the ports that are not the app port in its capture plane (weft-tcp; docs/mtls.md),
		// on a pod without an app port too (its inbound listener is then TCP only).
		if pod.Labels == nil {
			pod.Labels = map[string]string{}
		}
		pod.Labels[contract.LabelInboundTLS] = tlsPorts
	}
	return true, nil
}

// inboundTLSPorts is the value of contract.LabelInboundTLS for cfg's inbound capture, and
// false when no port is captured or the ports do not fit in a label value (then only the
// app port is marked, as before the label existed).
func inboundTLSPorts(cfg capture.Config) (string, bool) {
	p := contract.InboundTLSPorts{All: cfg.IncludeInboundPorts.All, Except: cfg.ExcludeInboundPorts}
	if !p.All {
		p.Except = nil
		for _, port := range cfg.IncludeInboundPorts.List {
			if workload.CapturesInbound(cfg, port) {
				p.Ports = append(p.Ports, port)
			}
		}
		if len(p.Ports) == 0 {
			return "", false
		}
	}
	return p.Encode()
}

// capturesAnyInbound reports whether cfg redirects some inbound port to the sidecar.
func capturesAnyInbound(cfg capture.Config) bool {
	if cfg.IncludeInboundPorts.All {
		return true // every port but the excluded ones: some always remain
	}
	return slices.ContainsFunc(cfg.IncludeInboundPorts.List, func(p uint16) bool { return workload.CapturesInbound(cfg, p) })
}

// checkConcurrency refuses a weft.dev/proxy-concurrency annotation the sidecar could not
// use, so the mistake shows at admission and not as a crash-looping container.
func checkConcurrency(pod *corev1.Pod) error {
	v, ok := pod.Annotations[AnnotationConcurrency]
	if !ok {
		return nil
	}
	if n, err := strconv.Atoi(v); err != nil || n < 0 || n > 64 {
		return fmt.Errorf("annotation %s=%q is not a thread count (0-64; 0 means one per CPU the container may use); fix or remove it", AnnotationConcurrency, v)
	}
	return nil
}

// addProxyEnv points the app's HTTP clients at the sidecar's outbound listener; both
// spellings because curl reads only http_proxy and Go reads either. A proxy the user set
// (in either spelling) wins, and then neither spelling is added.
func addProxyEnv(c *corev1.Container) {
	has := func(names ...string) bool {
		return slices.ContainsFunc(c.Env, func(x corev1.EnvVar) bool { return slices.Contains(names, x.Name) })
	}
	if !has("HTTP_PROXY", "http_proxy") {
		c.Env = append(c.Env, corev1.EnvVar{Name: "HTTP_PROXY", Value: contract.OutboundProxyURL}, corev1.EnvVar{Name: "http_proxy", Value: contract.OutboundProxyURL})
	}
	if !has("NO_PROXY", "no_proxy") {
		c.Env = append(c.Env, corev1.EnvVar{Name: "NO_PROXY", Value: noProxy}, corev1.EnvVar{Name: "no_proxy", Value: noProxy})
	}
}

// labelList renders labels as sorted k=v pairs: the sidecar's --labels format. They are
// computed at admission because the downward API cannot put labels into env.
func labelList(labels map[string]string) string {
	keys := slices.Sorted(maps.Keys(labels))
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+labels[k])
	}
	return strings.Join(parts, ",")
}

func fieldEnv(name, path string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}}
}

func sidecar(pod *corev1.Pod, ns string, appPort int32, cfg Config) corev1.Container {
	args := []string{"--xds-address=" + cfg.XDSAddress, "--labels=$(WEFT_POD_LABELS)"}
	if appPort != 0 {
		args = append(args, "--app-port="+strconv.Itoa(int(appPort)))
	}
	if fn := pod.Labels[LabelFunction]; fn != "" {
		args = append(args, "--function="+ns+"/"+fn)
	}
	if v, ok := pod.Annotations[AnnotationConcurrency]; ok {
		args = append(args, "--concurrency="+v)
	}
	drain := cfg.DrainSeconds
	if drain <= 0 {
		drain = workload.EndpointDrainSeconds
	}
	// The API server refuses a preStop sleep that is not shorter than the pod's grace
	// period; a pod that asks to be stopped quickly gets a shorter drain, or none.
	if g := pod.Spec.TerminationGracePeriodSeconds; g != nil && drain >= *g {
		drain = *g - 1
	}
	var lifecycle *corev1.Lifecycle
	if drain > 0 {
		lifecycle = &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: drain}}}
	}
	return corev1.Container{
		Name:  ContainerName,
		Image: cfg.Image,
		Args:  args,
		Env: []corev1.EnvVar{
			fieldEnv("POD_NAME", "metadata.name"),
			fieldEnv("POD_NAMESPACE", "metadata.namespace"),
			fieldEnv("POD_IP", "status.podIP"),
			{Name: "WEFT_POD_LABELS", Value: labelList(pod.Labels)},
		},
		Ports: []corev1.ContainerPort{
			{Name: "weft-inbound", ContainerPort: contract.InboundPort, Protocol: corev1.ProtocolTCP},
			{Name: "weft-metrics", ContainerPort: contract.MetricsPort, Protocol: corev1.ProtocolTCP},
		},
		ReadinessProbe: &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ready", Port: intstr.FromInt32(contract.MetricsPort)}},
			PeriodSeconds: 2, FailureThreshold: 3,
		},
		// Sleep, not exec: the sidecar image has no shell. While the pod sleeps here it is
		// already marked terminating, so callers' sidecars see it DRAINING over EDS and stop
		// picking it before it stops listening.
		Lifecycle: lifecycle,
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot: ptr(true), RunAsUser: ptr(int64(contract.ProxyUID)), RunAsGroup: ptr(int64(contract.ProxyGID)), AllowPrivilegeEscalation: ptr(false),
			ReadOnlyRootFilesystem: ptr(true), Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		},
	}
}

func ptr[T any](v T) *T { return &v }
