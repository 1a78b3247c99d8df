package cli

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
)

// What describe reads beside the object itself: the endpoints of its destinations, a
// function's Deployment, a pool's servers, and its events.

// describeRoute lists the endpoints of each destination of the route, once each.
func describeRoute(ctx context.Context, k *kube, mr *meshv1alpha1.MeshRoute, d *Description) error {
	seen := map[string]bool{}
	for _, rule := range mr.Spec.HTTP {
		for _, rd := range rule.Route {
			dst := rd.Destination
			ns := dst.Namespace
			if ns == "" {
				ns = mr.Namespace
			}
			var t DescribedTarget
			var err error
			if dst.Function != "" {
				t, err = serviceTarget(ctx, k, ns, dst.Function, 0, "function "+ns+"/"+dst.Function)
			} else {
				label := "service " + ns + "/" + dst.Service
				if dst.Port != 0 {
					label += ":" + strconv.Itoa(int(dst.Port))
				}
				if dst.Subset != "" {
					label += " subset " + dst.Subset
				}
				t, err = serviceTarget(ctx, k, ns, dst.Service, dst.Port, label)
				if err == nil && dst.Subset != "" {
					err = keepSubset(ctx, k, mr, ns, dst.Subset, &t)
				}
			}
			if err != nil {
				return err
			}
			if !seen[t.Target] {
				seen[t.Target] = true
				d.Destinations = append(d.Destinations, t)
			}
		}
	}
	return nil
}

// keepSubset keeps the endpoints whose pod has the subset's labels.
func keepSubset(ctx context.Context, k *kube, mr *meshv1alpha1.MeshRoute, ns, name string, t *DescribedTarget) error {
	var labels map[string]string
	found := false
	for _, ss := range mr.Spec.Subsets {
		if ss.Name == name {
			labels, found = ss.Labels, true
		}
	}
	if !found {
		t.Problem = fmt.Sprintf("subset %q is not defined in spec.subsets", name)
		return nil
	}
	var pods corev1.PodList
	if err := k.client.List(ctx, &pods, client.InNamespace(ns), client.MatchingLabels(labels)); err != nil {
		return fmt.Errorf("listing the pods of subset %s: %w", name, err)
	}
	in := map[string]bool{}
	for _, p := range pods.Items {
		in[p.Name] = true
	}
	kept := t.Endpoints[:0]
	ready := 0
	for _, e := range t.Endpoints {
		if in[e.Pod] {
			kept = append(kept, e)
			if e.Ready {
				ready++
			}
		}
	}
	t.Endpoints = kept
	if ready == 0 && t.Problem == "" {
		t.Problem = fmt.Sprintf("%s has no ready endpoints (no ready pod with labels %s): calls routed to it fail with 503", t.Target, selectorString(labels))
	}
	return nil
}

// serviceTarget lists the endpoints of a Service's EndpointSlices (of port, when non-zero).
func serviceTarget(ctx context.Context, k *kube, ns, svc string, port int32, label string) (DescribedTarget, error) {
	t := DescribedTarget{Target: label, Endpoints: []DescribedEndpoint{}}
	var s corev1.Service
	if err := k.client.Get(ctx, client.ObjectKey{Namespace: ns, Name: svc}, &s); err != nil {
		if apierrors.IsNotFound(err) {
			t.Problem = fmt.Sprintf("Service %s/%s does not exist", ns, svc)
			return t, nil
		}
		return t, fmt.Errorf("reading Service %s/%s: %w", ns, svc, err)
	}
	targetPort := ""
	for _, p := range s.Spec.Ports {
		if port == 0 || p.Port == port {
			targetPort = p.Name
			break
		}
	}
	var slices discoveryv1.EndpointSliceList
	if err := k.client.List(ctx, &slices, client.InNamespace(ns), client.MatchingLabels{discoveryv1.LabelServiceName: svc}); err != nil {
		return t, fmt.Errorf("listing EndpointSlices of Service %s/%s: %w", ns, svc, err)
	}
	for _, es := range slices.Items {
		portNum := ""
		for _, p := range es.Ports {
			if p.Port != nil && (p.Name == nil || *p.Name == targetPort || len(es.Ports) == 1) {
				portNum = strconv.Itoa(int(*p.Port))
				break
			}
		}
		for _, e := range es.Endpoints {
			ready := e.Conditions.Ready == nil || *e.Conditions.Ready
			pod := ""
			if e.TargetRef != nil && e.TargetRef.Kind == "Pod" {
				pod = e.TargetRef.Name
			}
			for _, a := range e.Addresses {
				addr := a
				if portNum != "" {
					addr += ":" + portNum
				}
				t.Endpoints = append(t.Endpoints, DescribedEndpoint{Address: addr, Ready: ready, Pod: pod})
			}
		}
	}
	sort.Slice(t.Endpoints, func(i, j int) bool { return t.Endpoints[i].Address < t.Endpoints[j].Address })
	ready := 0
	for _, e := range t.Endpoints {
		if e.Ready {
			ready++
		}
	}
	if ready == 0 && !strings.HasPrefix(label, "function ") {
		t.Problem = fmt.Sprintf("Service %s/%s has no ready endpoints: calls to it fail with 503 (kubectl get pods -n %s -l <its selector>)", ns, svc, ns)
	}
	return t, nil
}

// describeFunction reads a function's scale and hold state, its Service's endpoints and its
// Deployment's failures.
func describeFunction(ctx context.Context, k *kube, fn *meshv1alpha1.MeshFunction, d *Description) error {
	t, err := serviceTarget(ctx, k, fn.Namespace, fn.Name, 0, "function "+fn.Namespace+"/"+fn.Name)
	if err != nil {
		return err
	}
	d.Destinations = []DescribedTarget{t}
	sc, act := fn.Spec.Scale, fn.Spec.Activation
	f := &FunctionState{Replicas: fn.Status.Replicas, ReadyReplicas: fn.Status.ReadyReplicas, Desired: fn.Status.DesiredReplicas,
		Min: sc.Min, Max: sc.Max, HoldTimeout: act.HoldTimeout.Duration.String(), MaxPending: act.MaxPending, Deployment: fn.Namespace + "/" + fn.Name}
	switch {
	case f.Desired == 0 && f.ReadyReplicas == 0:
		f.State = fmt.Sprintf("scaled to zero: a caller's sidecar holds each call (up to %s, at most %d pending) and pokes the autoscaler; the first call starts a pod", f.HoldTimeout, f.MaxPending)
	case f.ReadyReplicas < f.Desired:
		f.State = fmt.Sprintf("scaling up: %d of %d pods ready; calls are held (up to %s) until one is", f.ReadyReplicas, f.Desired, f.HoldTimeout)
	case f.ReadyReplicas > f.Desired:
		f.State = fmt.Sprintf("scaling down: %d pods ready, %d wanted", f.ReadyReplicas, f.Desired)
	default:
		f.State = fmt.Sprintf("serving: %d pods ready", f.ReadyReplicas)
	}
	var dep appsv1.Deployment
	switch err := k.client.Get(ctx, client.ObjectKey{Namespace: fn.Namespace, Name: fn.Name}, &dep); {
	case apierrors.IsNotFound(err):
		d.Problems = append(d.Problems, fmt.Sprintf("Deployment %s/%s does not exist yet: the manager creates it (is the manager running? weft check)", fn.Namespace, fn.Name))
	case err != nil:
		return fmt.Errorf("reading Deployment %s/%s: %w", fn.Namespace, fn.Name, err)
	default:
		for _, c := range dep.Status.Conditions {
			if c.Type == appsv1.DeploymentReplicaFailure && c.Status == corev1.ConditionTrue {
				d.Problems = append(d.Problems, fmt.Sprintf("Deployment %s/%s cannot create pods: %s (%s)", fn.Namespace, fn.Name, c.Message, c.Reason))
			}
			if c.Type == appsv1.DeploymentProgressing && c.Status == corev1.ConditionFalse {
				d.Problems = append(d.Problems, fmt.Sprintf("Deployment %s/%s is not progressing: %s (kubectl describe deployment %s -n %s)", fn.Namespace, fn.Name, c.Message, fn.Name, fn.Namespace))
			}
		}
	}
	d.Function = f
	return nil
}

// describeRedis reads a pool's servers and flags a pool no sidecar serves.
func describeRedis(ctx context.Context, k *kube, rp *meshv1alpha1.RedisProxy, d *Description) error {
	r := &RedisState{Servers: rp.Status.Servers, ReadyServers: rp.Status.ReadyServers}
	for _, s := range rp.Spec.Servers {
		r.Static = append(r.Static, s.Name+"="+s.Address)
	}
	if ref := rp.Spec.ServiceRef; ref != nil {
		t, err := serviceTarget(ctx, k, rp.Namespace, ref.Name, ref.Port, "service "+rp.Namespace+"/"+ref.Name)
		if err != nil {
			return err
		}
		d.Destinations = append(d.Destinations, t)
	}
	if n := d.Sidecars.Receiving; n != nil && *n == 0 && rp.Spec.WorkloadSelector != nil {
		d.Problems = append(d.Problems, fmt.Sprintf("no connected sidecar serves this pool: no meshed pod in %s has the workloadSelector's labels (kubectl get pods -n %s -l %s)",
			rp.Namespace, rp.Namespace, selectorString(rp.Spec.WorkloadSelector.Labels)))
	}
	if r.Servers > 0 && r.ReadyServers == 0 {
		d.Problems = append(d.Problems, fmt.Sprintf("none of the pool's %d servers is ready: commands fail until one passes its PING health check", r.Servers))
	}
	d.Redis = r
	return nil
}

// recentEvents are the object's last events, identical ones in a row collapsed, at most maxEvents.
func recentEvents(ctx context.Context, k *kube, kind string, key client.ObjectKey) []DescribedEvent {
	var list corev1.EventList
	sel := fields.SelectorFromSet(fields.Set{"involvedObject.kind": kind, "involvedObject.name": key.Name})
	if err := k.client.List(ctx, &list, client.InNamespace(key.Namespace), client.MatchingFieldsSelector{Selector: sel}); err != nil {
		return nil
	}
	sort.SliceStable(list.Items, func(i, j int) bool { return eventTime(list.Items[i]).Time.Before(eventTime(list.Items[j]).Time) })
	var out []DescribedEvent
	for _, e := range list.Items {
		ev := DescribedEvent{Type: e.Type, Reason: e.Reason, Message: e.Message, Count: 1}
		if n := len(out); n > 0 && out[n-1].Type == ev.Type && out[n-1].Reason == ev.Reason && out[n-1].Message == ev.Message {
			out[n-1].Count++
			continue
		}
		out = append(out, ev)
	}
	if len(out) > maxEvents {
		out = out[len(out)-maxEvents:]
	}
	return out
}

// eventTime is when an event happened (events.k8s.io eventTime, else the core lastTimestamp).
func eventTime(e corev1.Event) metav1.Time {
	switch {
	case !e.EventTime.IsZero():
		return metav1.NewTime(e.EventTime.Time)
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp
	}
	return e.CreationTimestamp
}
