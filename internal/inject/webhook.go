package inject

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// Path is where the manager serves the injection webhook.
const Path = "/inject-pod"

// NamespaceLabels looks up a namespace's labels; the webhook needs them because the
// admission request carries only the Pod.
type NamespaceLabels interface {
	NamespaceLabels(ctx context.Context, name string) (map[string]string, error)
}

// NamespaceLabelsFunc adapts a function to NamespaceLabels.
type NamespaceLabelsFunc func(ctx context.Context, name string) (map[string]string, error)

// NamespaceLabels calls f.
func (f NamespaceLabelsFunc) NamespaceLabels(ctx context.Context, name string) (map[string]string, error) {
	return f(ctx, name)
}

// Handler is the mutating admission handler for Pod creation.
type Handler struct {
	Config     Config
	Namespaces NamespaceLabels
	Decoder    admission.Decoder
}

// Handle injects the sidecar into opted-in Pods and allows every other Pod unchanged.
// Errors refuse the Pod with a message, so a user whose Pod is not created learns why.
func (h *Handler) Handle(ctx context.Context, req admission.Request) admission.Response {
	pod := &corev1.Pod{}
	if err := h.Decoder.Decode(req, pod); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decoding Pod %s/%s: %w", req.Namespace, req.Name, err))
	}
	nsLabels, err := h.Namespaces.NamespaceLabels(ctx, req.Namespace)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError,
			fmt.Errorf("reading labels of namespace %s to decide on sidecar injection: %w; retry, or label the Pod %s=false to skip injection", req.Namespace, err, LabelInject))
	}
	if !Wanted(nsLabels, pod.Labels) {
		return admission.Allowed("sidecar injection not requested")
	}
	changed, err := Inject(pod, req.Namespace, h.Config)
	if err != nil {
		return admission.Denied(fmt.Sprintf("injecting the Weft sidecar into Pod %s/%s: %v", req.Namespace, podName(pod), err))
	}
	if !changed {
		return admission.Allowed("sidecar already present")
	}
	raw, err := json.Marshal(pod)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("encoding Pod %s/%s: %w", req.Namespace, podName(pod), err))
	}
	return admission.PatchResponseFromRaw(req.Object.Raw, raw)
}

func podName(pod *corev1.Pod) string {
	if pod.Name != "" {
		return pod.Name
	}
	return pod.GenerateName + "*"
}
