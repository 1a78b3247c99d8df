package inject

import (
	"fmt"
	"net/url"
	"strconv"

	corev1 "k8s.io/api/core/v1"
)

// Telemetry annotations: a pod turns its sidecar's access log and tracing on with them.
// The sidecar reads the env they map to (cmd/sidecar/telemetry.go).
const (
	// AnnotationAccessLog "true" makes the sidecar write a JSON access-log line per HTTP
	// exchange to stdout; "inbound" or "outbound" logs only that listener's exchanges.
	AnnotationAccessLog = "weft.dev/access-log"
	// AnnotationAccessLogSample is the share of exchanges logged, 0 < s <= 1 (default 1).
	AnnotationAccessLogSample = "weft.dev/access-log-sample"
	// AnnotationAccessLogMinStatus logs only exchanges answered with at least this status
	// (e.g. "500": failures only).
	AnnotationAccessLogMinStatus = "weft.dev/access-log-min-status"
	// AnnotationTraceSample is the share of new traces the sidecar samples, 0..1 (default 0:
	// trace headers pass through untouched).
	AnnotationTraceSample = "weft.dev/trace-sample"
	// AnnotationTraceOTLPEndpoint is the OTLP/HTTP endpoint the sidecar sends its spans to
	// (e.g. http://otel-collector.observability:4318/v1/traces); without it spans are made
	// (trace context is rewritten) but not exported.
	AnnotationTraceOTLPEndpoint = "weft.dev/trace-otlp-endpoint"
)

// maxEndpointLen bounds the OTLP endpoint annotation.
const maxEndpointLen = 512

// telemetryEnv maps the pod's telemetry annotations to the sidecar's env, or says which
// annotation to fix.
func telemetryEnv(pod *corev1.Pod) ([]corev1.EnvVar, error) {
	var env []corev1.EnvVar
	a := pod.Annotations
	if v, ok := a[AnnotationAccessLog]; ok {
		switch v {
		case "inbound", "outbound":
			env = append(env, corev1.EnvVar{Name: "WEFT_ACCESS_LOG", Value: "true"},
				corev1.EnvVar{Name: "WEFT_ACCESS_LOG_LISTENER", Value: v})
		default:
			on, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("annotation %s=%q: use \"true\", \"false\", \"inbound\" or \"outbound\"", AnnotationAccessLog, v)
			}
			env = append(env, corev1.EnvVar{Name: "WEFT_ACCESS_LOG", Value: strconv.FormatBool(on)})
		}
	}
	share := func(k, name string, zeroOK bool) error {
		v, ok := a[k]
		if !ok {
			return nil
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 || f > 1 || (f == 0 && !zeroOK) {
			return fmt.Errorf("annotation %s=%q: use a share such as \"0.1\" (more than 0, at most 1)", k, v)
		}
		env = append(env, corev1.EnvVar{Name: name, Value: v})
		return nil
	}
	if err := share(AnnotationAccessLogSample, "WEFT_ACCESS_LOG_SAMPLE", false); err != nil {
		return nil, err
	}
	if v, ok := a[AnnotationAccessLogMinStatus]; ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 100 || n > 599 {
			return nil, fmt.Errorf("annotation %s=%q: use an HTTP status such as \"500\"", AnnotationAccessLogMinStatus, v)
		}
		env = append(env, corev1.EnvVar{Name: "WEFT_ACCESS_LOG_MIN_STATUS", Value: v})
	}
	if err := share(AnnotationTraceSample, "WEFT_TRACE_SAMPLE", true); err != nil {
		return nil, err
	}
	if v, ok := a[AnnotationTraceOTLPEndpoint]; ok {
		u, err := url.Parse(v)
		if err != nil || len(v) > maxEndpointLen || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("annotation %s=%q: use an http(s) URL of at most %d bytes, such as \"http://otel-collector.observability:4318/v1/traces\"",
				AnnotationTraceOTLPEndpoint, v, maxEndpointLen)
		}
		env = append(env, corev1.EnvVar{Name: "WEFT_TRACE_OTLP_ENDPOINT", Value: v})
	}
	return env, nil
}
