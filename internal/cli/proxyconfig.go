package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	corev1 "k8s.io/api/core/v1"

	"github.com/weftmesh/weft/internal/xds"
)

// configTypes maps what proxy-config takes (and kubectl-style aliases) to the dump's types.
var configTypes = map[string]string{
	"clusters": "CDS", "cluster": "CDS", "c": "CDS",
	"endpoints": "EDS", "endpoint": "EDS", "ep": "EDS",
	"listeners": "LDS", "listener": "LDS", "l": "LDS",
	"routes": "RDS", "route": "RDS", "r": "RDS",
	"secrets": "secrets", "secret": "secrets", "s": "secrets",
	"all": "all",
}

var configTypeNames = []string{"clusters", "endpoints", "listeners", "routes", "secrets", "all"}

func newProxyConfig(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "proxy-config <pod> clusters|endpoints|listeners|routes|secrets|all",
		Short: "The xDS configuration the manager serves one sidecar, secrets redacted",
		Long: `proxy-config prints the resources of one type in the snapshot the manager serves the
pod's sidecar (the sidecar applied it when proxy-status says SYNCED for that type). Inline
secrets (Redis passwords, the async queue's token, TLS keys) read "[redacted]": they never
leave the manager. "secrets" lists where such secrets are, not their values.`,
		Example: `  weft proxy-config productpage-7d4b9 routes -n shop
  weft proxy-config productpage-7d4b9 clusters -n shop -o yaml
  kubectl weft proxy-config productpage-7d4b9 endpoints`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 2 {
				return fmt.Errorf("want a pod and a type (%s), got %d arguments", strings.Join(configTypeNames, ", "), len(args))
			}
			if _, ok := configTypes[args[1]]; !ok {
				return fmt.Errorf("unknown configuration type %q: use one of %s", args[1], strings.Join(configTypeNames, ", "))
			}
			return nil
		},
		ValidArgsFunction: func(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
			if len(args) == 1 {
				return configTypeNames, cobra.ShellCompDirectiveNoFileComp
			}
			return nil, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.checkOutput("json", "yaml"); err != nil {
				return err
			}
			ctx, cancel := o.ctx(cmd.Context())
			defer cancel()
			k, err := o.kube()
			if err != nil {
				return err
			}
			pod := args[0]
			var p corev1.Pod
			if err := k.client.Get(ctx, client.ObjectKey{Namespace: k.namespace, Name: pod}, &p); err != nil {
				if apierrors.IsNotFound(err) {
					return fmt.Errorf("pod %s not found in namespace %s (pass -n for another namespace)", pod, k.namespace)
				}
				return fmt.Errorf("reading pod %s/%s: %w", k.namespace, pod, err)
			}
			ms, stop, err := o.managers(ctx, k)
			if err != nil {
				return err
			}
			defer stop()
			dump, err := configDump(ctx, ms, pod+"."+k.namespace)
			if err != nil {
				return err
			}
			warnUnapplied(o, dump, configTypes[args[1]])
			return printConfig(o, dump, configTypes[args[1]])
		},
	}
	addOutput(cmd, o, "json", "yaml")
	return cmd
}

func newConfigDump(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config-dump <pod>",
		Short: "The whole configuration the manager serves one sidecar and its sync state, as JSON (secrets redacted)",
		Long: `config-dump prints the manager's /debug/config_dump for the pod's sidecar: its sync state
per type (as proxy-status) and every resource of every type in protojson with Envoy's field
names, inline secrets "[redacted]". -o yaml prints it as YAML.`,
		Example: `  weft config-dump productpage-7d4b9 -n shop > dump.json`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.checkOutput("json", "yaml"); err != nil {
				return err
			}
			ctx, cancel := o.ctx(cmd.Context())
			defer cancel()
			k, err := o.kube()
			if err != nil {
				return err
			}
			ms, stop, err := o.managers(ctx, k)
			if err != nil {
				return err
			}
			defer stop()
			dump, err := configDump(ctx, ms, args[0]+"."+k.namespace)
			if err != nil {
				return err
			}
			format := o.output
			if format == "" {
				format = "json"
			}
			return printStructured(o.streams.Out, format, dump)
		},
	}
	addOutput(cmd, o, "json", "yaml")
	return cmd
}

// configDump asks each manager for the node's dump; the node is connected to one of them.
func configDump(ctx context.Context, ms []manager, id string) (*xds.ConfigDump, error) {
	var notFound error
	for _, m := range ms {
		var d xds.ConfigDump
		err := m.get(ctx, "/debug/config_dump?proxyID="+url.QueryEscape(id), &d)
		var me *managerError
		if errors.As(err, &me) && me.code == http.StatusNotFound {
			notFound = err
			continue
		}
		if err != nil {
			return nil, err
		}
		return &d, nil
	}
	return nil, notFound
}

// resource is one dumped resource: its name and JSON.
type resource struct {
	Name string
	Body map[string]any
}

func resources(d *xds.ConfigDump, typ string) ([]resource, error) {
	m := d.Resources[typ]
	out := make([]resource, 0, len(m))
	for name, raw := range m {
		var body map[string]any
		if err := json.Unmarshal(raw, &body); err != nil {
			return nil, fmt.Errorf("%s %s in the dump: %w", typ, name, err)
		}
		out = append(out, resource{Name: name, Body: body})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func printConfig(o *options, d *xds.ConfigDump, typ string) error {
	types := []string{typ}
	if typ == "all" {
		types = []string{"CDS", "EDS", "LDS", "RDS", "secrets"}
	}
	structured := map[string]any{}
	for i, t := range types {
		var err error
		if o.output == "" && len(types) > 1 {
			if i > 0 {
				fmt.Fprintln(o.streams.Out)
			}
			fmt.Fprintf(o.streams.Out, "%s\n", typeTitle[t])
		}
		if t == "secrets" {
			err = printSecrets(o, d, structured)
		} else {
			err = printType(o, d, t, structured)
		}
		if err != nil {
			return err
		}
	}
	if o.output != "" {
		if typ != "all" {
			for _, v := range structured {
				return printStructured(o.streams.Out, o.output, v)
			}
		}
		return printStructured(o.streams.Out, o.output, structured)
	}
	return nil
}

var typeTitle = map[string]string{"CDS": "Clusters:", "EDS": "Endpoints:", "LDS": "Listeners:", "RDS": "Routes:", "secrets": "Secrets:"}

var typeKey = map[string]string{"CDS": "clusters", "EDS": "endpoints", "LDS": "listeners", "RDS": "routes", "SDS": "sds", "secrets": "secrets"}

func printType(o *options, d *xds.ConfigDump, typ string, structured map[string]any) error {
	rs, err := resources(d, typ)
	if err != nil {
		return err
	}
	if o.output != "" {
		list := make([]map[string]any, 0, len(rs))
		for _, r := range rs {
			list = append(list, r.Body)
		}
		structured[typeKey[typ]] = list
		return nil
	}
	var t *table
	switch typ {
	case "CDS":
		t = newTable(o.streams.Out, "NAME", "TYPE", "LB POLICY", "CONNECT TIMEOUT", "VERSION")
		for _, r := range rs {
			t.row(r.Name, str(r.Body, "type"), orDefault(str(r.Body, "lb_policy"), "ROUND_ROBIN"), str(r.Body, "connect_timeout"), d.Node.Types["CDS"].Current)
		}
	case "EDS":
		t = newTable(o.streams.Out, "ENDPOINT", "STATUS", "WEIGHT", "PRIORITY", "CLUSTER")
		for _, r := range rs {
			for _, loc := range list(r.Body, "endpoints") {
				for _, lb := range list(loc, "lb_endpoints") {
					sa := obj(obj(obj(lb, "endpoint"), "address"), "socket_address")
					addr := str(sa, "address") + ":" + num(sa, "port_value")
					t.row(addr, orDefault(str(lb, "health_status"), "HEALTHY"), orDefault(num(lb, "load_balancing_weight"), "1"), orDefault(num(loc, "priority"), "0"), r.Name)
				}
			}
		}
	case "LDS":
		t = newTable(o.streams.Out, "NAME", "ADDRESS", "PORT", "FILTER CHAINS", "FILTERS")
		for _, r := range rs {
			sa := obj(obj(r.Body, "address"), "socket_address")
			chains := list(r.Body, "filter_chains")
			if dc := obj(r.Body, "default_filter_chain"); dc != nil {
				chains = append(chains, dc)
			}
			t.row(r.Name, str(sa, "address"), num(sa, "port_value"), strconv.Itoa(len(chains)), strings.Join(filterNames(chains), ","))
		}
	case "RDS":
		t = newTable(o.streams.Out, "NAME", "VIRTUAL HOST", "DOMAINS", "MATCH", "ACTION")
		for _, r := range rs {
			for _, vh := range list(r.Body, "virtual_hosts") {
				domains := strs(vh, "domains")
				dom := strings.Join(domains, ",")
				if len(domains) > 3 {
					dom = strings.Join(domains[:3], ",") + fmt.Sprintf(" +%d more", len(domains)-3)
				}
				for _, rt := range list(vh, "routes") {
					t.row(r.Name, str(vh, "name"), dom, match(obj(rt, "match")), action(rt))
				}
			}
		}
	}
	return t.flush()
}

// printSecrets lists where the dump holds a secret (its value is always redacted): the SDS
// secrets of the sidecar's view, and inline values from a manager older than SDS secrets.
func printSecrets(o *options, d *xds.ConfigDump, structured map[string]any) error {
	type secretRow struct {
		Type     string `json:"type"`
		Resource string `json:"resource"`
		Field    string `json:"field"`
		Value    string `json:"value"`
	}
	var rows []secretRow
	for _, typ := range []string{"CDS", "EDS", "LDS", "RDS", "SDS"} {
		rs, err := resources(d, typ)
		if err != nil {
			return err
		}
		for _, r := range rs {
			for _, path := range secretPaths(r.Body, "") {
				rows = append(rows, secretRow{Type: typeKey[typ], Resource: r.Name, Field: path, Value: xds.Redacted})
			}
		}
	}
	if o.output != "" {
		if rows == nil {
			rows = []secretRow{}
		}
		structured["secrets"] = rows
		return nil
	}
	if len(rows) == 0 {
		_, err := fmt.Fprintln(o.streams.Out, "No secrets in this sidecar's configuration.")
		return err
	}
	t := newTable(o.streams.Out, "TYPE", "RESOURCE", "FIELD", "VALUE")
	for _, r := range rows {
		t.row(r.Type, r.Resource, r.Field, r.Value)
	}
	return t.flush()
}

// secretPaths are the paths of the secret-named keys under v, sorted.
func secretPaths(v any, prefix string) []string {
	var out []string
	switch x := v.(type) {
	case map[string]any:
		for _, k := range sortedKeys(x) {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			if xds.SecretKey(k) {
				out = append(out, p)
				continue
			}
			out = append(out, secretPaths(x[k], p)...)
		}
	case []any:
		for i, e := range x {
			out = append(out, secretPaths(e, prefix+"["+strconv.Itoa(i)+"]")...)
		}
	}
	return out
}

func filterNames(chains []map[string]any) []string {
	seen := map[string]bool{}
	var out []string
	for _, fc := range chains {
		for _, f := range list(fc, "filters") {
			n := strings.TrimPrefix(str(f, "name"), "envoy.filters.network.")
			if !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	return out
}

func match(m map[string]any) string {
	var parts []string
	for _, k := range []string{"prefix", "path", "path_separated_prefix"} {
		if v, ok := m[k].(string); ok {
			parts = append(parts, k+" "+v)
		}
	}
	if sr := obj(m, "safe_regex"); sr != nil {
		parts = append(parts, "regex "+str(sr, "regex"))
	}
	for _, h := range list(m, "headers") {
		parts = append(parts, "header "+str(h, "name"))
	}
	if len(parts) == 0 {
		return "*"
	}
	return truncate(strings.Join(parts, " "), 60)
}

func action(rt map[string]any) string {
	if r := obj(rt, "route"); r != nil {
		if c := str(r, "cluster"); c != "" {
			return "→ " + c
		}
		if wc := obj(r, "weighted_clusters"); wc != nil {
			var cs []string
			for _, c := range list(wc, "clusters") {
				cs = append(cs, str(c, "name")+"="+num(c, "weight"))
			}
			return "→ " + strings.Join(cs, ",")
		}
	}
	if obj(rt, "redirect") != nil {
		return "redirect"
	}
	if dr := obj(rt, "direct_response"); dr != nil {
		return "respond " + num(dr, "status")
	}
	return "-"
}

// Helpers over protojson-decoded maps.

func obj(m map[string]any, k string) map[string]any {
	v, _ := m[k].(map[string]any)
	return v
}

func list(m map[string]any, k string) []map[string]any {
	l, _ := m[k].([]any)
	out := make([]map[string]any, 0, len(l))
	for _, e := range l {
		if o, ok := e.(map[string]any); ok {
			out = append(out, o)
		}
	}
	return out
}

func str(m map[string]any, k string) string {
	s, _ := m[k].(string)
	return s
}

func strs(m map[string]any, k string) []string {
	l, _ := m[k].([]any)
	var out []string
	for _, e := range l {
		if s, ok := e.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// num prints a protojson number (uint32 fields are numbers, wrapped ones may be objects
// with a value, 64-bit ones strings).
func num(m map[string]any, k string) string {
	switch v := m[k].(type) {
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case string:
		return v
	case map[string]any:
		return num(v, "value")
	}
	return ""
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// warnUnapplied says on stderr when the sidecar does not run what is printed: the dump is
// what the manager serves, which the sidecar runs only once it ACKed it.
func warnUnapplied(o *options, d *xds.ConfigDump, typ string) {
	types := []string{typ}
	if typ == "all" || typ == "secrets" {
		types = []string{"CDS", "EDS", "LDS", "RDS", "SDS"}
	}
	for _, t := range types {
		ts := d.Node.Types[t]
		switch ts.Status {
		case xds.SyncRejected:
			fmt.Fprintf(o.streams.Err, "warning: sidecar %s rejected this %s version (%s); it runs the last one it accepted (%s)\n", d.Node.ID, t, ts.Error, orDefault(ts.Acked, "none"))
		case xds.SyncStale:
			fmt.Fprintf(o.streams.Err, "warning: sidecar %s has not ACKed this %s version yet; it runs %s\n", d.Node.ID, t, orDefault(ts.Acked, "none"))
		}
	}
}
