package inject

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func telemetryPod(ann map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", Annotations: ann},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app",
			Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}}}}
}

func sidecarEnv(t *testing.T, pod *corev1.Pod) map[string]string {
	t.Helper()
	for _, c := range pod.Spec.Containers {
		if c.Name == ContainerName {
			env := map[string]string{}
			for _, e := range c.Env {
				env[e.Name] = e.Value
			}
			return env
		}
	}
	t.Fatal("no sidecar container")
	return nil
}

// The telemetry annotations reach the sidecar as the env cmd/sidecar reads; without them
// the access log stays off (no env at all).
func TestTelemetryAnnotationsBecomeSidecarEnv(t *testing.T) {
	pod := telemetryPod(map[string]string{AnnotationAccessLog: "true", AnnotationAccessLogSample: "0.25",
		AnnotationAccessLogMinStatus: "500", AnnotationTraceSample: "0.01",
		AnnotationTraceOTLPEndpoint: "http://otlp-sink.default:4318/v1/traces"})
	if _, err := Inject(pod, "default", testConfig); err != nil {
		t.Fatal(err)
	}
	env := sidecarEnv(t, pod)
	want := map[string]string{"WEFT_ACCESS_LOG": "true", "WEFT_ACCESS_LOG_SAMPLE": "0.25", "WEFT_ACCESS_LOG_MIN_STATUS": "500", "WEFT_TRACE_SAMPLE": "0.01",
		"WEFT_TRACE_OTLP_ENDPOINT": "http://otlp-sink.default:4318/v1/traces"}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("sidecar env %s = %q, want %q", k, env[k], v)
		}
	}

	plain := telemetryPod(nil)
	if _, err := Inject(plain, "default", testConfig); err != nil {
		t.Fatal(err)
	}
	for k := range want {
		if _, ok := sidecarEnv(t, plain)[k]; ok {
			t.Errorf("a pod without telemetry annotations got %s", k)
		}
	}
}

// Bad values are refused at admission with the annotation to fix, not ignored.
func TestTelemetryAnnotationsRefused(t *testing.T) {
	for ann, v := range map[string]string{AnnotationAccessLog: "sideways", AnnotationAccessLogSample: "0",
		AnnotationAccessLogMinStatus: "5xx", AnnotationTraceSample: "1.5"} {
		pod := telemetryPod(map[string]string{ann: v})
		changed, err := Inject(pod, "default", testConfig)
		if err == nil || changed || !strings.Contains(err.Error(), ann) {
			t.Errorf("%s=%q: changed %v, err %v; want a refusal naming the annotation", ann, v, changed, err)
		}
	}
	for _, v := range []string{"inbound", "outbound"} {
		pod := telemetryPod(map[string]string{AnnotationAccessLog: v})
		if _, err := Inject(pod, "default", testConfig); err != nil {
			t.Fatalf("%s=%q: %v", AnnotationAccessLog, v, err)
		}
		if env := sidecarEnv(t, pod); env["WEFT_ACCESS_LOG"] != "true" || env["WEFT_ACCESS_LOG_LISTENER"] != v {
			t.Errorf("%s=%q: sidecar env %v, want the log on for the %s listener", AnnotationAccessLog, v, env, v)
		}
	}
	for _, v := range []string{"otlp-sink:4318", "file:///etc/passwd", "http://", "http://x/" + strings.Repeat("a", 600), "://bad"} {
		pod := telemetryPod(map[string]string{AnnotationTraceOTLPEndpoint: v})
		changed, err := Inject(pod, "default", testConfig)
		if err == nil || changed || !strings.Contains(err.Error(), AnnotationTraceOTLPEndpoint) {
			t.Errorf("%s=%q: changed %v, err %v; want a refusal naming the annotation", AnnotationTraceOTLPEndpoint, v, changed, err)
		}
	}
}
