package cli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/internal/xds"
)

// kinds maps what describe takes (name, plural, short name, any case) to the kind.
var kinds = map[string]string{
	"meshroute": "MeshRoute", "meshroutes": "MeshRoute", "mr": "MeshRoute",
	"meshfunction": "MeshFunction", "meshfunctions": "MeshFunction", "mfn": "MeshFunction",
	"redisproxy": "RedisProxy", "redisproxies": "RedisProxy", "rp": "RedisProxy",
}

// Description is what describe prints (and -o json|yaml emits).
type Description struct {
	Kind               string               `json:"kind"`
	Namespace          string               `json:"namespace"`
	Name               string               `json:"name"`
	Generation         int64                `json:"generation"`
	ObservedGeneration int64                `json:"observedGeneration"`
	Conditions         []DescribedCondition `json:"conditions"`
	Sidecars           SidecarSummary       `json:"sidecars"`
	Destinations       []DescribedTarget    `json:"destinations,omitempty"`
	Function           *FunctionState       `json:"function,omitempty"`
	Redis              *RedisState          `json:"redis,omitempty"`
	// Problems is the diagnosis: what is wrong and what to do, most important first.
	Problems []string         `json:"problems"`
	Events   []DescribedEvent `json:"events,omitempty"`
}

// DescribedCondition is a condition without its timestamps (they change every run).
type DescribedCondition struct {
	Type    string `json:"type"`
	Status  string `json:"status"`
	Reason  string `json:"reason"`
	Message string `json:"message,omitempty"`
}

// SidecarSummary is how the sidecars took the object's current version.
type SidecarSummary struct {
	Synced   int32 `json:"synced"`
	Rejected int32 `json:"rejected"`
	// LastRejection is the status field: one rejecting sidecar and its error.
	LastRejection string `json:"lastRejection,omitempty"`
	// Rejections are every rejecting sidecar the manager knows of (empty when it was not
	// asked or not reachable: ManagerError says why).
	Rejections []SidecarRejection `json:"rejections,omitempty"`
	// Receiving is how many connected sidecars receive the object, from the manager (nil
	// when it was not reachable).
	Receiving    *int   `json:"receiving,omitempty"`
	ManagerError string `json:"managerError,omitempty"`
}

// SidecarRejection is one sidecar's NACK of one type.
type SidecarRejection struct {
	Sidecar string `json:"sidecar"`
	Type    string `json:"type"`
	Error   string `json:"error"`
}

// DescribedTarget is a destination (or the object's own Service) and its endpoints.
type DescribedTarget struct {
	Target    string              `json:"target"`
	Endpoints []DescribedEndpoint `json:"endpoints"`
	Problem   string              `json:"problem,omitempty"`
}

// DescribedEndpoint is one address of an EndpointSlice.
type DescribedEndpoint struct {
	Address string `json:"address"`
	Ready   bool   `json:"ready"`
	Pod     string `json:"pod,omitempty"`
}

// FunctionState is a MeshFunction's scale and hold state.
type FunctionState struct {
	Replicas      int32  `json:"replicas"`
	ReadyReplicas int32  `json:"readyReplicas"`
	Desired       int32  `json:"desiredReplicas"`
	Min           int32  `json:"min"`
	Max           int32  `json:"max"`
	HoldTimeout   string `json:"holdTimeout"`
	MaxPending    int32  `json:"maxPending"`
	State         string `json:"state"`
	Deployment    string `json:"deployment"`
}

// RedisState is a RedisProxy's pool.
type RedisState struct {
	Servers      int32    `json:"servers"`
	ReadyServers int32    `json:"readyServers"`
	Static       []string `json:"static,omitempty"`
}

// DescribedEvent is one recent event of the object.
type DescribedEvent struct {
	Type    string `json:"type"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
	// Count is how many identical events in a row this line stands for.
	Count int `json:"count"`
}

// maxEvents bounds the events describe prints.
const maxEvents = 10

func newDescribe(o *options) *cobra.Command {
	var events bool
	cmd := &cobra.Command{
		Use:   "describe <kind>/<name> | <kind> <name>",
		Short: "Why a MeshRoute, MeshFunction or RedisProxy is (not) working",
		Long: `describe reads the object's status (conditions, synced and rejected sidecar counts), the
sidecars that rejected its configuration and why (from the manager, when reachable), the
endpoints of its destinations (EndpointSlices), a function's scale and hold state and a
pool's servers, and ends with what to do about each problem it found.

Kinds: meshroute (mr), meshfunction (mfn), redisproxy (rp).`,
		Example: `  weft describe mr/reviews -n shop
  weft describe meshfunction hello
  weft describe rp/cache -o yaml`,
		Args: cobra.RangeArgs(1, 2),
		ValidArgsFunction: func(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
			if len(args) == 0 {
				return []string{"meshroute/", "meshfunction/", "redisproxy/", "mr/", "mfn/", "rp/"}, cobra.ShellCompDirectiveNoSpace
			}
			return nil, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.checkOutput("json", "yaml"); err != nil {
				return err
			}
			kind, name, err := parseRef(args)
			if err != nil {
				return err
			}
			ctx, cancel := o.ctx(cmd.Context())
			defer cancel()
			k, err := o.kube()
			if err != nil {
				return err
			}
			d, err := describe(ctx, o, k, kind, name, events)
			if err != nil {
				return err
			}
			if o.output != "" {
				return printStructured(o.streams.Out, o.output, d)
			}
			return printDescription(o.streams.Out, d)
		},
	}
	cmd.Flags().BoolVar(&events, "show-events", true, "list the object's recent events")
	addOutput(cmd, o, "json", "yaml")
	return cmd
}

func parseRef(args []string) (kind, name string, err error) {
	ref := args[0]
	if len(args) == 2 {
		ref = args[0] + "/" + args[1]
	}
	k, n, ok := strings.Cut(ref, "/")
	if !ok || n == "" || strings.Contains(n, "/") {
		return "", "", fmt.Errorf("want <kind>/<name> or <kind> <name>, e.g. mr/reviews; got %q", strings.Join(args, " "))
	}
	kind, known := kinds[strings.ToLower(strings.TrimSuffix(k, ".mesh.weft.dev"))]
	if !known {
		return "", "", fmt.Errorf("unknown kind %q: use meshroute (mr), meshfunction (mfn) or redisproxy (rp)", k)
	}
	return kind, n, nil
}

func describe(ctx context.Context, o *options, k *kube, kind, name string, events bool) (*Description, error) {
	key := client.ObjectKey{Namespace: k.namespace, Name: name}
	d := &Description{Kind: kind, Namespace: key.Namespace, Name: name}
	var obj client.Object
	var st *meshv1alpha1.MeshStatus
	switch kind {
	case "MeshRoute":
		mr := &meshv1alpha1.MeshRoute{}
		obj, st = mr, &mr.Status.MeshStatus
	case "MeshFunction":
		fn := &meshv1alpha1.MeshFunction{}
		obj, st = fn, &fn.Status.MeshStatus
	case "RedisProxy":
		rp := &meshv1alpha1.RedisProxy{}
		obj, st = rp, &rp.Status.MeshStatus
	}
	if err := k.client.Get(ctx, key, obj); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("%s %s not found in namespace %s (kubectl get %s -n %s)", kind, name, key.Namespace, strings.ToLower(kind), key.Namespace)
		}
		return nil, fmt.Errorf("reading %s %s/%s: %w", kind, key.Namespace, name, err)
	}
	d.Generation, d.ObservedGeneration = obj.GetGeneration(), st.ObservedGeneration
	for _, c := range st.Conditions {
		d.Conditions = append(d.Conditions, DescribedCondition{Type: c.Type, Status: string(c.Status), Reason: c.Reason, Message: c.Message})
	}
	d.Sidecars = SidecarSummary{Synced: st.SyncedSidecars, Rejected: st.RejectedSidecars, LastRejection: st.LastRejection}
	d.Sidecars.Rejections, d.Sidecars.Receiving, d.Sidecars.ManagerError = rejections(ctx, o, k, kind, key)

	var err error
	switch x := obj.(type) {
	case *meshv1alpha1.MeshRoute:
		err = describeRoute(ctx, k, x, d)
	case *meshv1alpha1.MeshFunction:
		err = describeFunction(ctx, k, x, d)
	case *meshv1alpha1.RedisProxy:
		err = describeRedis(ctx, k, x, d)
	}
	if err != nil {
		return nil, err
	}
	d.Problems = append(diagnose(d), d.Problems...)
	if len(d.Problems) == 0 {
		d.Problems = []string{}
	}
	if events {
		d.Events = recentEvents(ctx, k, kind, key)
	}
	return d, nil
}

// rejections asks the manager which sidecars reject a type at its current version.
func rejections(ctx context.Context, o *options, k *kube, kind string, key client.ObjectKey) ([]SidecarRejection, *int, string) {
	ms, stop, err := o.managers(ctx, k)
	if err != nil {
		return nil, nil, err.Error()
	}
	defer stop()
	rows, err := syncz(ctx, ms)
	if err != nil {
		return nil, nil, err.Error()
	}
	var out []SidecarRejection
	receiving := 0
	for _, r := range rows {
		if kind == "RedisProxy" && !contains(r.RedisPools, key.Namespace+"/"+key.Name) {
			continue
		}
		receiving++
		for _, typ := range statusTypes {
			if ts := r.Types[typ]; ts.Status == xds.SyncRejected {
				out = append(out, SidecarRejection{Sidecar: r.ID, Type: typ, Error: ts.Error})
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Sidecar != out[j].Sidecar {
			return out[i].Sidecar < out[j].Sidecar
		}
		return out[i].Type < out[j].Type
	})
	return out, &receiving, ""
}

func contains(l []string, s string) bool {
	for _, e := range l {
		if e == s {
			return true
		}
	}
	return false
}

// diagnose turns abnormal conditions into the problems a user reads first.
func diagnose(d *Description) []string {
	var out []string
	if d.ObservedGeneration < d.Generation {
		out = append(out, fmt.Sprintf("the manager has not processed generation %d yet (status is of generation %d): is it running? (weft check)", d.Generation, d.ObservedGeneration))
	}
	abnormal := map[string]string{
		meshv1alpha1.ConditionAccepted: "False", meshv1alpha1.ConditionResolvedRefs: "False", meshv1alpha1.ConditionProgrammed: "False",
		meshv1alpha1.ConditionAvailable: "False", meshv1alpha1.ConditionStalled: "True", meshv1alpha1.ConditionWarning: "True",
	}
	// Stalled repeats the reason of the condition it sums up ("Programmed: ..."): list the
	// cause once.
	seen := map[string]bool{}
	for _, c := range d.Conditions {
		if abnormal[c.Type] != c.Status || c.Reason == meshv1alpha1.ReasonNotAccepted || seen[c.Reason] {
			continue
		}
		seen[c.Reason] = true
		out = append(out, fmt.Sprintf("%s=%s (%s): %s", c.Type, c.Status, c.Reason, c.Message))
	}
	for _, r := range d.Sidecars.Rejections {
		pod, ns, _ := strings.Cut(r.Sidecar, ".")
		out = append(out, fmt.Sprintf("sidecar %s rejected %s: %s (weft proxy-status %s -n %s -o wide)", r.Sidecar, r.Type, r.Error, pod, ns))
	}
	for _, t := range d.Destinations {
		if t.Problem != "" {
			out = append(out, t.Problem)
		}
	}
	return out
}

func printDescription(w io.Writer, d *Description) error {
	fmt.Fprintf(w, "Name:         %s\nNamespace:    %s\nKind:         %s\nGeneration:   %d (status observed %d)\n", d.Name, d.Namespace, d.Kind, d.Generation, d.ObservedGeneration)
	fmt.Fprintln(w, "Conditions:")
	if len(d.Conditions) == 0 {
		fmt.Fprintln(w, "  none yet")
	} else {
		t := newTable(w, "  TYPE", "STATUS", "REASON", "MESSAGE")
		for _, c := range d.Conditions {
			t.row("  "+c.Type, c.Status, c.Reason, truncate(c.Message, 160))
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	s := d.Sidecars
	fmt.Fprintf(w, "Sidecars:     %d synced, %d rejected", s.Synced, s.Rejected)
	if s.Receiving != nil {
		fmt.Fprintf(w, " (%d connected sidecars receive it)", *s.Receiving)
	}
	fmt.Fprintln(w)
	if s.LastRejection != "" {
		fmt.Fprintf(w, "  last rejection: %s\n", s.LastRejection)
	}
	for _, r := range s.Rejections {
		fmt.Fprintf(w, "  rejected by %s (%s): %s\n", r.Sidecar, r.Type, r.Error)
	}
	if s.ManagerError != "" {
		fmt.Fprintf(w, "  (which sidecars: unknown, %s)\n", s.ManagerError)
	}
	if f := d.Function; f != nil {
		fmt.Fprintf(w, "Function:\n  Deployment:  %s\n  Replicas:    %d (%d ready, %d desired; scale %d..%s)\n  Hold:        up to %s, at most %d pending calls\n  State:       %s\n",
			f.Deployment, f.Replicas, f.ReadyReplicas, f.Desired, f.Min, maxReplicas(f.Max), f.HoldTimeout, f.MaxPending, f.State)
	}
	if r := d.Redis; r != nil {
		fmt.Fprintf(w, "Pool:         %d servers, %d ready\n", r.Servers, r.ReadyServers)
		for _, s := range r.Static {
			fmt.Fprintf(w, "  server %s\n", s)
		}
	}
	if len(d.Destinations) > 0 {
		fmt.Fprintln(w, "Endpoints:")
		for _, t := range d.Destinations {
			var eps []string
			for _, e := range t.Endpoints {
				st := "ready"
				if !e.Ready {
					st = "not ready"
				}
				eps = append(eps, e.Address+" ("+st+")")
			}
			if len(eps) == 0 {
				eps = []string{"none"}
			}
			fmt.Fprintf(w, "  %s: %s\n", t.Target, strings.Join(eps, ", "))
		}
	}
	if len(d.Events) > 0 {
		fmt.Fprintln(w, "Events:")
		for _, e := range d.Events {
			times := ""
			if e.Count > 1 {
				times = fmt.Sprintf(" (×%d)", e.Count)
			}
			fmt.Fprintf(w, "  %s %s: %s%s\n", e.Type, e.Reason, truncate(e.Message, 200), times)
		}
	}
	if len(d.Problems) == 0 {
		_, err := fmt.Fprintln(w, "Diagnosis:    no problems found")
		return err
	}
	fmt.Fprintln(w, "Diagnosis:")
	for _, p := range d.Problems {
		fmt.Fprintf(w, "  ✘ %s\n", p)
	}
	return nil
}

// maxReplicas prints scale.max, where 0 means no limit.
func maxReplicas(n int32) string {
	if n == 0 {
		return "unlimited"
	}
	return strconv.Itoa(int(n))
}

func selectorString(labels map[string]string) string {
	var parts []string
	for _, k := range sortedKeys(labels) {
		parts = append(parts, k+"="+labels[k])
	}
	return strings.Join(parts, ",")
}
