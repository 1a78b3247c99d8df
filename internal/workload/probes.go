package workload

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/capture"
)

// RewriteAppProbes hands the kubelet's probes that inbound capture would take to the
// sidecar (docs/probes.md): every httpGet, tcpSocket and grpc liveness, readiness and
// startup probe of a container other than sidecarName, aimed at the pod (no host of its
// own) on a port that capCfg captures inbound, becomes an httpGet on contract.MetricsPort
// at contract.AppHealthPath, with its timing fields kept. It returns the sidecar's
// contract.AppProbesEnv holding the originals, or nil when nothing was rewritten.
//
// Left alone: pods with proxy-env interception (nothing is captured inbound), pods with
// annotation contract.AnnotationRewriteAppProbes "false", exec probes, probes naming a
// port the container does not declare (the kubelet fails them as written), and probes
// already on MetricsPort, which is never captured; so a second run changes nothing.
func RewriteAppProbes(spec *corev1.PodSpec, annotations map[string]string, mode capture.Interception, capCfg capture.Config, sidecarName string) (*corev1.EnvVar, error) {
	if v, ok := annotations[contract.AnnotationRewriteAppProbes]; ok {
		on, err := strconv.ParseBool(v)
		if err != nil {
			return nil, fmt.Errorf("annotation %s=%q is not a boolean; set \"false\" to keep the pod's probes as written, or remove it", contract.AnnotationRewriteAppProbes, v)
		}
		if !on {
			return nil, nil
		}
	}
	if mode != capture.InterceptionIPTables {
		return nil, nil
	}
	probes := contract.AppProbes{}
	for _, cs := range []*[]corev1.Container{&spec.InitContainers, &spec.Containers} {
		for i := range *cs {
			c := &(*cs)[i]
			if c.Name == sidecarName {
				continue
			}
			for _, p := range []struct {
				probe **corev1.Probe
				kind  string
			}{{&c.ReadinessProbe, contract.AppProbeReadiness}, {&c.LivenessProbe, contract.AppProbeLiveness}, {&c.StartupProbe, contract.AppProbeStartup}} {
				orig, ok := appProbeOf(*p.probe, c, capCfg)
				if !ok {
					continue
				}
				path := contract.AppHealthPath(c.Name, p.kind)
				probes[path] = orig
				*p.probe = rewrittenProbe(*p.probe, path)
			}
		}
	}
	if len(probes) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(probes) // map keys sorted: the same pod gives the same value
	if err != nil {
		return nil, fmt.Errorf("recording the pod's probes: %w", err)
	}
	if len(b) > contract.MaxAppProbesBytes {
		return nil, fmt.Errorf("the pod's probes take %d bytes recorded for the sidecar, more than %d; shorten their headers, or set annotation %s: \"false\" to keep them as written",
			len(b), contract.MaxAppProbesBytes, contract.AnnotationRewriteAppProbes)
	}
	return &corev1.EnvVar{Name: contract.AppProbesEnv, Value: string(b)}, nil
}

// appProbeOf is the record of probe when it is to be rewritten: an httpGet, tcpSocket or
// grpc probe of the pod on a port capCfg captures inbound.
func appProbeOf(probe *corev1.Probe, c *corev1.Container, capCfg capture.Config) (contract.AppProbe, bool) {
	if probe == nil {
		return contract.AppProbe{}, false
	}
	rec := contract.AppProbe{TimeoutSeconds: probe.TimeoutSeconds}
	var port int32
	switch {
	case probe.HTTPGet != nil:
		g := probe.HTTPGet
		if g.Host != "" {
			return rec, false // the kubelet dials that host, not the pod: nothing is captured
		}
		n, ok := resolveProbePort(g.Port, c)
		if !ok {
			return rec, false
		}
		h := &contract.AppProbeHTTPGet{Path: g.Path, Port: n, Scheme: string(g.Scheme)}
		for _, hd := range g.HTTPHeaders {
			h.HTTPHeaders = append(h.HTTPHeaders, contract.AppProbeHeader{Name: hd.Name, Value: hd.Value})
		}
		rec.HTTPGet, port = h, n
	case probe.TCPSocket != nil:
		if probe.TCPSocket.Host != "" {
			return rec, false
		}
		n, ok := resolveProbePort(probe.TCPSocket.Port, c)
		if !ok {
			return rec, false
		}
		rec.TCPSocket, port = &contract.AppProbePort{Port: n}, n
	case probe.GRPC != nil:
		rec.GRPC, port = &contract.AppProbeGRPC{Port: probe.GRPC.Port, Service: probe.GRPC.Service}, probe.GRPC.Port
	default:
		return rec, false // exec: runs inside the container, nothing crosses capture
	}
	if port < 1 || port > 65535 || !CapturesInbound(capCfg, uint16(port)) {
		return rec, false
	}
	return rec, true
}

// resolveProbePort is the number of a probe's port, a named one looked up in the
// container's ports as the kubelet does.
func resolveProbePort(p intstr.IntOrString, c *corev1.Container) (int32, bool) {
	if p.Type == intstr.Int {
		return p.IntVal, true
	}
	i := slices.IndexFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == p.StrVal })
	if i < 0 {
		return 0, false
	}
	return c.Ports[i].ContainerPort, true
}

// rewrittenProbe is probe asking the sidecar's status port at path instead: the handler is
// replaced, the timing fields (delay, period, timeout, thresholds, grace) are kept.
func rewrittenProbe(probe *corev1.Probe, path string) *corev1.Probe {
	p := probe.DeepCopy()
	p.ProbeHandler = corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
		Path: path, Port: intstr.FromInt32(contract.MetricsPort), Scheme: corev1.URISchemeHTTP,
	}}
	return p
}

// CapturesInbound reports whether cfg redirects inbound connections to port to the
// sidecar: in the include list (or all), not excluded, and not one of the sidecar's own
// ports (capture.AlwaysExcludedInboundPorts).
func CapturesInbound(cfg capture.Config, port uint16) bool {
	if slices.Contains(cfg.ExcludeInboundPorts, port) {
		return false
	}
	for _, r := range capture.AlwaysExcludedInboundPorts {
		if port >= r.First && port <= r.Last {
			return false
		}
	}
	return cfg.IncludeInboundPorts.All || slices.Contains(cfg.IncludeInboundPorts.List, port)
}

// rewriteFunctionProbes rewrites the probes of a function pod template (interception mode,
// capture cfg) and gives its sidecar, a native sidecar among the init containers, the record.
func rewriteFunctionProbes(tmpl *corev1.PodTemplateSpec, mode capture.Interception, cfg capture.Config) error {
	env, err := RewriteAppProbes(&tmpl.Spec, tmpl.Annotations, mode, cfg, SidecarContainerName)
	if err != nil || env == nil {
		return err
	}
	i := slices.IndexFunc(tmpl.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == SidecarContainerName })
	if i < 0 {
		return fmt.Errorf("no %s container to record the probes in", SidecarContainerName)
	}
	tmpl.Spec.InitContainers[i].Env = append(tmpl.Spec.InitContainers[i].Env, *env)
	return nil
}
