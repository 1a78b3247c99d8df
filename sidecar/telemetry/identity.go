// Package telemetry turns what the sidecar's data plane saw (one HTTP exchange, one
// proxied TCP connection) into Istio's standard metrics, Envoy-style JSON access logs and
// W3C/B3 trace context. It takes the pod's identity at start-up and per-request records
// from sidecar/httpproxy and sidecar/capture, and produces Prometheus text for /stats
// (WritePrometheus), JSON lines on a bounded writer, and the headers each hop adds.
//
// Everything here is bounded: label sets per metric family (MaxSeries, overflow counted
// in one series), peers and services interned (maxPeers, maxServices), the access-log
// queue (AccessLogOptions.Buffer lines, drops counted).
package telemetry

import "strings"

// Unknown is the value Istio gives a label it cannot know (a caller without a sidecar, a
// principal before mTLS).
const Unknown = "unknown"

// Workload is one side of an exchange, as Istio's labels describe it.
type Workload struct {
	Name, Namespace   string
	App, Version      string
	CanonicalService  string
	CanonicalRevision string
	// Principal is the SPIFFE identity; Unknown until Weft has mTLS.
	Principal string
	// Cluster is the Kubernetes cluster's name (Istio's source_cluster); Unknown when not set.
	Cluster string
}

// WorkloadFromPod derives the pod's workload identity as Istio does from its owner and
// labels: the Deployment's name is the pod name without the ReplicaSet's
// "-<pod-template-hash>-<suffix>"; app and version come from the app.kubernetes.io labels
// or the plain app/version labels; the canonical service and revision from Istio's own
// labels, else app and version ("latest" when there is none, as Istio).
func WorkloadFromPod(pod, namespace string, labels map[string]string) Workload {
	w := Workload{Name: workloadName(pod, labels), Namespace: orUnknown(namespace), Principal: Unknown, Cluster: Unknown}
	w.App = first(labels, "app.kubernetes.io/name", "app")
	w.Version = first(labels, "app.kubernetes.io/version", "version")
	w.CanonicalService = first(labels, "service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
	if w.CanonicalService == "" {
		w.CanonicalService = w.Name
	}
	w.CanonicalRevision = first(labels, "service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")
	if w.CanonicalRevision == "" {
		w.CanonicalRevision = "latest"
	}
	w.App, w.Version = orUnknown(w.App), orUnknown(w.Version)
	return w
}

func workloadName(pod string, labels map[string]string) string {
	if pod == "" {
		return Unknown
	}
	if h := labels["pod-template-hash"]; h != "" {
		if i := strings.LastIndex(pod, "-"+h+"-"); i > 0 {
			return pod[:i]
		}
	}
	return pod
}

func first(labels map[string]string, keys ...string) string {
	for _, k := range keys {
		if v := labels[k]; v != "" {
			return v
		}
	}
	return ""
}

func orUnknown(s string) string {
	if s == "" {
		return Unknown
	}
	return s
}
