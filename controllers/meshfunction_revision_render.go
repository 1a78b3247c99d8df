package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	logf "sigs.k8s.io/controller-runtime/pkg/log"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/workload"
)

// Rendering a revision's Deployment: from the function at creation, and again from the
// revision's recorded template when the manager renders differently (rerender).

// revisionSpec is the part of a MeshFunction a revision's Deployment is rendered from; the
// rest (scale, concurrency, timeouts) reaches its pods' sidecars over xDS.
type revisionSpec struct {
	Template meshv1alpha1.FunctionTemplate `json:"template"`
	Port     int32                         `json:"port"`
}

// revisionDeployment renders a revision's Deployment: the function's Deployment as
// workload renders it, named after the revision, its selector and pods labelled with it.
func revisionDeployment(fn *meshv1alpha1.MeshFunction, name string, number int, hash string, replicas int32, o workload.Options) (*appsv1.Deployment, error) {
	dep, err := workload.FunctionDeployment(fn, replicas, o)
	if err != nil {
		return nil, err
	}
	spec, err := json.Marshal(revisionSpec{Template: fn.Spec.Template, Port: fn.Spec.Port})
	if err != nil {
		return nil, fmt.Errorf("recording the revision's template: %w", err)
	}
	dep.Name = name
	dep.Labels[meshv1alpha1.LabelRevision] = name
	dep.Annotations = map[string]string{annotationRevisionHash: hash, annotationRevisionNumber: strconv.Itoa(number)}
	if len(spec) <= maxRecordedRevisionSpec {
		dep.Annotations[annotationRevisionSpec] = string(spec)
	}
	dep.Spec.Selector.MatchLabels[meshv1alpha1.LabelRevision] = name
	tmpl := &dep.Spec.Template
	tmpl.Name = "" // the revision's name, not the pods'
	tmpl.Labels[meshv1alpha1.LabelRevision] = name
	for i := range tmpl.Spec.InitContainers {
		c := &tmpl.Spec.InitContainers[i]
		if c.Name != workload.SidecarContainerName {
			continue
		}
		for j := range c.Env {
			if c.Env[j].Name == "POD_LABELS" {
				c.Env[j].Value = labelString(tmpl.Labels)
			}
		}
	}
	return dep, nil
}

// labelString renders labels as sorted k=v pairs, the sidecar's POD_LABELS form.
func labelString(labels map[string]string) string {
	parts := make([]string, 0, len(labels))
	for k, v := range labels {
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

// rerendered is what rerender found: a pod template to roll to (nil: none), the
// revisionSpec annotation to record ("" when it is there already) and why.
type rerendered struct {
	template *corev1.PodTemplateSpec
	record   string
	why      string
}

// rerender renders revision rv's pod template again from the template it was created
// from, with the manager's current options, and reports it when it differs from what the
// Deployment runs: a manager upgrade or a changed sidecar image then reaches every kept
// revision, as Knative's revision reconciler rolls its queue-proxy. What the user wrote does
// not change: a revision stays immutable. It does not modify rv.
//
// Revisions created before the template was recorded get it recorded when it is certain:
// a revision whose hash is the function's current template's, with the port its sidecar
// was rendered with. Older ones are left as they are.
func (r *MeshFunctionReconciler) rerender(ctx context.Context, fn *meshv1alpha1.MeshFunction, rv *revision) rerendered {
	log := logf.FromContext(ctx)
	var spec revisionSpec
	raw, recorded := rv.dep.Annotations[annotationRevisionSpec]
	if recorded {
		if err := json.Unmarshal([]byte(raw), &spec); err != nil || spec.Template.DecodeError != "" {
			log.Info("revision's recorded template does not decode; its pods are not rendered again", "revision", rv.name, "error", err)
			return rerendered{}
		}
	} else {
		if rv.hash != TemplateHash(fn) {
			return rerendered{}
		}
		spec = revisionSpec{Template: fn.Spec.Template, Port: renderedAppPort(rv.dep, fn.Spec.Port)}
	}
	shadow := fn.DeepCopy()
	shadow.Spec.Template, shadow.Spec.Port = spec.Template, spec.Port
	want, err := revisionDeployment(shadow, rv.name, rv.number, rv.hash, 0, r.Options)
	if err != nil {
		log.Info("revision cannot be rendered again; its pods keep running as they are", "revision", rv.name, "error", err)
		return rerendered{}
	}
	var out rerendered
	if !recorded {
		out.record = want.Annotations[annotationRevisionSpec]
	}
	if rv.dep.Spec.Template.Annotations[workload.AnnotationTemplateHash] == want.Spec.Template.Annotations[workload.AnnotationTemplateHash] {
		return out
	}
	out.template = &want.Spec.Template
	out.why = "the manager renders it differently now"
	if img := sidecarImage(&want.Spec.Template); img != sidecarImage(&rv.dep.Spec.Template) {
		out.why = "sidecar image " + img
	}
	return out
}

// sidecarImage is the image of the Weft sidecar in tmpl, or "".
func sidecarImage(tmpl *corev1.PodTemplateSpec) string {
	for _, c := range slices.Concat(tmpl.Spec.InitContainers, tmpl.Spec.Containers) {
		if c.Name == workload.SidecarContainerName {
			return c.Image
		}
	}
	return ""
}

// renderedAppPort is the --app-port a revision's sidecar was rendered with, or def.
func renderedAppPort(dep *appsv1.Deployment, def int32) int32 {
	for _, c := range slices.Concat(dep.Spec.Template.Spec.InitContainers, dep.Spec.Template.Spec.Containers) {
		if c.Name != workload.SidecarContainerName {
			continue
		}
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, "--app-port="); ok {
				if p, err := strconv.Atoi(v); err == nil && p > 0 && p < 65536 {
					return int32(p)
				}
			}
		}
	}
	return def
}
