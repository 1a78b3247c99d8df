package cli

import (
	"fmt"
	"sort"

	"github.com/spf13/cobra"

	"github.com/weftmesh/weft/internal/xds"
)

// statusTypes are the columns of proxy-status, in istioctl's order.
var statusTypes = []string{"CDS", "LDS", "EDS", "RDS"}

func newProxyStatus(o *options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "proxy-status [pod]",
		Short: "Every connected sidecar and whether it runs the configuration the manager serves it",
		Long: `proxy-status lists the sidecars connected to the manager (every replica) and, per xDS
type, whether each ACKed the version its view's snapshot has:

  SYNCED    it ACKed the current version
  STALE     the manager has a version it has not ACKed yet (or never asked for)
  REJECTED  it NACKed the current version (-o wide shows its error; weft describe shows
            which object it concerns)
  NOT SENT  its view has nothing of the type

Without -n every namespace is listed; a pod argument lists that pod only.`,
		Example: `  weft proxy-status
  weft proxy-status -n shop -o wide
  weft proxy-status productpage-7d4b9 -n shop -o yaml`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.checkOutput("wide", "json", "yaml"); err != nil {
				return err
			}
			ctx, cancel := o.ctx(cmd.Context())
			defer cancel()
			var k *kube
			if o.managerURL == "" || len(args) > 0 || o.namespace != "" {
				var err error
				if k, err = o.kube(); err != nil && o.managerURL == "" {
					return err
				}
			}
			ms, stop, err := o.managers(ctx, k)
			if err != nil {
				return err
			}
			defer stop()
			rows, err := syncz(ctx, ms)
			if err != nil {
				return err
			}
			rows = filterRows(rows, k, args)
			sort.Slice(rows, func(i, j int) bool { return rows[i].ID < rows[j].ID })
			if len(args) > 0 && len(rows) == 0 {
				return fmt.Errorf("no sidecar of pod %s/%s is connected to the manager: is the pod running with its weft-sidecar container? (kubectl get pod %s -n %s)",
					k.namespace, args[0], args[0], k.namespace)
			}
			return printProxyStatus(o, rows)
		},
	}
	addOutput(cmd, o, "wide", "json", "yaml")
	return cmd
}

func filterRows(rows []nodeRow, k *kube, args []string) []nodeRow {
	if k == nil || (!k.nsExplicit && len(args) == 0) {
		return rows
	}
	out := rows[:0]
	for _, r := range rows {
		if r.Namespace != k.namespace || (len(args) > 0 && r.Pod != args[0]) {
			continue
		}
		out = append(out, r)
	}
	return out
}

func printProxyStatus(o *options, rows []nodeRow) error {
	w := o.streams.Out
	switch o.output {
	case "json", "yaml":
		if rows == nil {
			rows = []nodeRow{}
		}
		return printStructured(w, o.output, map[string]any{"sidecars": rows})
	}
	if len(rows) == 0 {
		_, err := fmt.Fprintln(w, "No sidecars are connected to the manager.")
		return err
	}
	header := append([]string{"NAME"}, statusTypes...)
	header = append(header, "MANAGER")
	wide := o.output == "wide"
	if wide {
		header = append(header, "VERSIONS (ACKED/CURRENT)", "REJECTION")
	}
	t := newTable(w, header...)
	for _, r := range rows {
		cells := []string{r.ID}
		for _, typ := range statusTypes {
			cells = append(cells, r.Types[typ].Status)
		}
		cells = append(cells, r.Manager)
		if wide {
			cells = append(cells, versions(r.NodeSync), rejection(r.NodeSync))
		}
		t.row(cells...)
	}
	return t.flush()
}

// versions prints each type's ACKed and current version, 8 characters of each.
func versions(n xds.NodeSync) string {
	var s string
	for i, typ := range statusTypes {
		ts := n.Types[typ]
		if i > 0 {
			s += " "
		}
		s += fmt.Sprintf("%s=%s/%s", typ, short(ts.Acked), short(ts.Current))
	}
	return s
}

func short(v string) string {
	if v == "" {
		return "-"
	}
	return truncate(v, 9)
}

// rejection is the first type's last NACK error.
func rejection(n xds.NodeSync) string {
	for _, typ := range statusTypes {
		if e := n.Types[typ].Error; e != "" {
			return typ + ": " + truncate(e, 120)
		}
	}
	return ""
}
