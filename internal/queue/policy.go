package queue

import (
	"context"
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
)

// AnnotationAsyncCallers on a MeshFunction restricts who may queue asynchronous calls to
// it: a comma-separated list of "<namespace>" (every sidecar of that namespace) and
// "<namespace>/<function>" (the pods of that function). Without it every identity may.
// The function's own pods always may. Example: weft.dev/async-callers: "shop, batch/nightly".
const AnnotationAsyncCallers = "weft.dev/async-callers"

// MaxAsyncCallers bounds the entries of one weft.dev/async-callers; more is a typo or an
// attack on the permission lists every connection carries.
const MaxAsyncCallers = 64

// ParseAsyncCallers reads a weft.dev/async-callers value.
func ParseAsyncCallers(v string) ([]string, error) {
	var out []string
	for _, c := range strings.Split(v, ",") {
		c = strings.TrimSpace(c)
		if c == "" {
			continue
		}
		ns, name, hasName := strings.Cut(c, "/")
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			return nil, fmt.Errorf("%s entry %q: namespace: %s", AnnotationAsyncCallers, c, strings.Join(errs, "; "))
		}
		if hasName {
			if errs := validation.IsDNS1123Label(name); len(errs) > 0 {
				return nil, fmt.Errorf("%s entry %q: function: %s", AnnotationAsyncCallers, c, strings.Join(errs, "; "))
			}
		}
		out = append(out, c)
	}
	if len(out) > MaxAsyncCallers {
		return nil, fmt.Errorf("%s lists %d callers, more than the %d allowed", AnnotationAsyncCallers, len(out), MaxAsyncCallers)
	}
	return out, nil
}

// MeshFunctions reads MeshFunctions from the manager's cache: the CallPolicy of their
// weft.dev/async-callers, read when a client connects, and the FunctionLister whose
// consumers the manager makes. An annotation that does not parse admits no caller but the
// function's own pods: a typo must not open the function to everyone.
type MeshFunctions struct {
	Reader client.Reader
}

// Functions lists every MeshFunction with its revisions and split.
func (p *MeshFunctions) Functions(ctx context.Context) ([]Function, error) {
	var list meshv1alpha1.MeshFunctionList
	if err := p.Reader.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("listing MeshFunctions: %w", err)
	}
	out := make([]Function, 0, len(list.Items))
	for i := range list.Items {
		out = append(out, FunctionOf(&list.Items[i]))
	}
	return out, nil
}

// FunctionOf is fn as the queue sees it. It serves revisions when it has spec.traffic and
// the controller resolved it into status.traffic (as the snapshot's routes do); its split
// is status.traffic's percents summed per revision, in first-appearance order.
func FunctionOf(fn *meshv1alpha1.MeshFunction) Function {
	f := Function{FunctionKey: FunctionKey{fn.Namespace, fn.Name}}
	if len(fn.Spec.Traffic) == 0 || len(fn.Status.Traffic) == 0 {
		return f
	}
	for _, rs := range fn.Status.Revisions {
		f.Revisions = append(f.Revisions, rs.Name)
	}
	at := map[string]int{}
	for _, ts := range fn.Status.Traffic {
		pct := int32(0)
		if ts.Percent != nil && *ts.Percent > 0 && *ts.Percent <= 100 {
			pct = int32(*ts.Percent)
		}
		if pct == 0 {
			continue
		}
		if i, ok := at[ts.RevisionName]; ok {
			f.Traffic[i].Percent += pct
			continue
		}
		at[ts.RevisionName] = len(f.Traffic)
		f.Traffic = append(f.Traffic, contract.RevisionTraffic{Revision: ts.RevisionName, Percent: pct})
	}
	return f
}

// Restricted lists the MeshFunctions with weft.dev/async-callers.
func (p *MeshFunctions) Restricted() (map[FunctionKey][]string, error) {
	var list meshv1alpha1.MeshFunctionList
	ctx, cancel := context.WithTimeout(context.Background(), time.Second) // within NATS's auth timeout
	defer cancel()
	if err := p.Reader.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("listing MeshFunctions for %s: %w", AnnotationAsyncCallers, err)
	}
	out := map[FunctionKey][]string{}
	for i := range list.Items {
		fn := &list.Items[i]
		v, ok := fn.Annotations[AnnotationAsyncCallers]
		if !ok {
			continue
		}
		callers, err := ParseAsyncCallers(v)
		if err != nil {
			callers = nil
		}
		out[FunctionKey{fn.Namespace, fn.Name}] = callers
	}
	return out, nil
}
