// Package cli is the weft command line: cobra commands that read the cluster (CRs, their
// status, EndpointSlices, Deployments, the webhook) through the Kubernetes API and the
// manager's state (connected sidecars, the config each is served) through its debug
// endpoints, and print them as kubectl does: a table by default, -o wide|json|yaml.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// Streams are where commands write.
type Streams struct {
	Out, Err io.Writer
}

// options are the flags every command shares.
type options struct {
	kubeconfig  string
	context     string
	namespace   string
	output      string
	managerURL  string
	managerNS   string
	timeout     time.Duration
	streams     Streams
	commandName string
}

// PluginName is the binary name kubectl finds as the `weft` plugin (`kubectl weft ...`).
const PluginName = "kubectl-weft"

// CommandName is how the binary at argv0 is invoked: "kubectl weft" under the plugin name
// (kubectl-weft, kubectl_weft), else "weft". Help and completion use it.
func CommandName(argv0 string) string {
	base := strings.TrimSuffix(filepath.Base(argv0), ".exe")
	if base == PluginName || base == "kubectl_weft" {
		return "kubectl weft"
	}
	return "weft"
}

// NewRoot builds the command tree. extra are commands the caller adds (cmd/weft adds `dev`).
func NewRoot(name string, streams Streams, extra ...*cobra.Command) *cobra.Command {
	o := &options{streams: streams, commandName: name}
	root := &cobra.Command{
		Use:   "weft",
		Short: "Weft service mesh CLI",
		Long: name + ` inspects a Weft mesh: which sidecars are connected and in sync (proxy-status),
the configuration one sidecar is served (proxy-config), why a MeshRoute, MeshFunction or
RedisProxy is not working (describe), and whether the installation is healthy (check).`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	if name != "weft" {
		// kubectl passes its own name; cobra's completion script must call the plugin binary.
		root.Annotations = map[string]string{cobra.CommandDisplayNameAnnotation: name}
	}
	root.SetOut(streams.Out)
	root.SetErr(streams.Err)
	pf := root.PersistentFlags()
	pf.StringVar(&o.kubeconfig, "kubeconfig", "", "path to the kubeconfig file (default $KUBECONFIG or ~/.kube/config)")
	pf.StringVar(&o.context, "context", "", "the kubeconfig context to use")
	pf.StringVarP(&o.namespace, "namespace", "n", "", "namespace (default the context's namespace)")
	pf.StringVar(&o.managerURL, "manager-url", os.Getenv("WEFT_MANAGER_URL"),
		"base URL of the manager's debug endpoints, e.g. http://127.0.0.1:15014 (default $WEFT_MANAGER_URL; else a port-forward to each manager pod, or the host's loopback for the local mesh)")
	pf.StringVar(&o.managerNS, "manager-namespace", "weft-system", "namespace of the Weft manager")
	pf.DurationVar(&o.timeout, "request-timeout", 15*time.Second, "how long one command may take talking to the cluster and the manager")
	root.AddCommand(newProxyStatus(o), newProxyConfig(o), newConfigDump(o), newDescribe(o), newCheck(o))
	root.AddCommand(extra...)
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() == "completion" {
			// cobra would print help and succeed for a shell it has no script for.
			c.Args = cobra.ArbitraryArgs
			c.RunE = func(c *cobra.Command, args []string) error {
				if len(args) > 0 {
					return fmt.Errorf("no completion for shell %q: use bash, zsh, fish or powershell", args[0])
				}
				return c.Help()
			}
		}
	}
	return root
}

// addOutput registers -o with the formats a command supports.
func addOutput(cmd *cobra.Command, o *options, formats ...string) {
	cmd.Flags().StringVarP(&o.output, "output", "o", "", "output format: one of "+strings.Join(formats, "|")+" (default a table)")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions(formats, cobra.ShellCompDirectiveNoFileComp))
}

// checkOutput refuses a format the command does not know.
func (o *options) checkOutput(formats ...string) error {
	if o.output == "" {
		return nil
	}
	for _, f := range formats {
		if o.output == f {
			return nil
		}
	}
	return fmt.Errorf("unknown output format %q: use one of %s", o.output, strings.Join(formats, ", "))
}

func (o *options) ctx(parent context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(parent, o.timeout)
}

// ErrChecksFailed is returned by `check` when a check failed; main exits non-zero without
// printing it again.
var ErrChecksFailed = errors.New("some checks failed")

// Main runs the CLI with args and returns the process exit code.
func Main(argv0 string, args []string, streams Streams, extra ...*cobra.Command) int {
	name := CommandName(argv0)
	root := NewRoot(name, streams, extra...)
	root.SetArgs(args)
	if err := root.Execute(); err != nil {
		if !errors.Is(err, ErrChecksFailed) {
			fmt.Fprintf(streams.Err, "%s: %v\n", name, err)
		}
		return 1
	}
	return 0
}
