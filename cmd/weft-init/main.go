// Command weft-init installs the netfilter rules that send a pod's TCP through the Weft
// sidecar (Istio's istio-init / istio-iptables). The injection webhook runs it as the pod's
// first init container, with NET_ADMIN and NET_RAW, before the sidecar and the app start; its
// flags come from the pod's traffic.weft.dev/* annotations (internal/capture renders both).
// It runs iptables-restore (and ip6tables-restore with --ipv6) from the image, so the image
// must contain iptables. Running it again leaves the same rules (no duplicates).
//
// Exit status: 0 rules installed (or printed with --dry-run), 1 iptables missing or the
// rules refused, 2 bad flags.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/weftmesh/weft/internal/capture"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// options are weft-init's own flags; the capture settings are capture.Config's.
type options struct {
	cfg      capture.Config
	dryRun   bool
	ipv6     bool
	mode     string
	lockWait time.Duration
}

// run is main without the exit, for tests.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o := options{cfg: capture.Default()}
	fs := flag.NewFlagSet("weft-init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o.cfg.RegisterFlags(fs)
	fs.BoolVar(&o.dryRun, "dry-run", false, "print the iptables-restore input and exit; changes nothing and needs no iptables")
	fs.BoolVar(&o.ipv6, "ipv6", false, "also install the IPv6 rules with ip6tables-restore (the sidecar must then listen on [::1] and [::] too)")
	fs.StringVar(&o.mode, "iptables", "auto", `which iptables to run: "auto" (iptables-restore as installed), "nft" or "legacy"`)
	fs.DurationVar(&o.lockWait, "lock-wait", 10*time.Second, "how long iptables waits for the xtables lock another process holds")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "weft-init: unexpected arguments %q; every setting is a --flag\n", fs.Args())
		return 2
	}
	if o.mode != "auto" && o.mode != "nft" && o.mode != "legacy" {
		fmt.Fprintf(stderr, "weft-init: --iptables=%q: want auto, nft or legacy\n", o.mode)
		return 2
	}
	families := []capture.Family{capture.IPv4}
	if o.ipv6 {
		families = append(families, capture.IPv6)
	}
	for _, f := range families {
		if o.dryRun {
			fmt.Fprintf(stdout, "# %s: %s --noflush\n%s", f, tool(f, o.mode, "restore"), capture.Script(o.cfg, f, ""))
			continue
		}
		if err := install(ctx, o, f, stdout); err != nil {
			fmt.Fprintf(stderr, "weft-init: %v\n", err)
			return 1
		}
	}
	return 0
}

// tool is the iptables program for family f, mode and action ("save" or "restore").
func tool(f capture.Family, mode, action string) string {
	name := "iptables"
	if f == capture.IPv6 {
		name = "ip6tables"
	}
	if mode != "auto" {
		name += "-" + mode
	}
	return name + "-" + action
}

// install applies the rules of family f: it reads the nat table (to replace rules an
// earlier run left), applies the script in one iptables-restore transaction, and prints
// the resulting table for the container's log.
func install(ctx context.Context, o options, f capture.Family, stdout io.Writer) error {
	save, restore := tool(f, o.mode, "save"), tool(f, o.mode, "restore")
	for _, prog := range []string{save, restore} {
		if _, err := exec.LookPath(prog); err != nil {
			return fmt.Errorf("%s is not installed (%w): the init container's image must contain iptables (legacy or nft) for %s capture; use weft.dev/interception: proxy-env where that is not possible", prog, err, f)
		}
	}
	current, err := output(ctx, nil, save, "-t", "nat")
	if err != nil {
		return fmt.Errorf("reading the %s nat table: %w", f, err)
	}
	script := capture.Script(o.cfg, f, current)
	wait := fmt.Sprint(max(1, int(o.lockWait.Seconds())))
	if _, err := output(ctx, strings.NewReader(script), restore, "--noflush", "--wait", wait); err != nil {
		return fmt.Errorf("installing the %s capture rules: %w\nthe rules were:\n%s", f, err, numbered(script))
	}
	after, err := output(ctx, nil, save, "-t", "nat")
	if err != nil {
		return fmt.Errorf("reading back the %s nat table: %w", f, err)
	}
	fmt.Fprintf(stdout, "weft-init: %s capture rules installed; the nat table is now:\n%s", f, after)
	return nil
}

// output runs prog and returns its stdout, or an error carrying its stderr.
func output(ctx context.Context, stdin io.Reader, prog string, args ...string) (string, error) {
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errb
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errb.String())
		var exit *exec.ExitError
		if errors.As(err, &exit) && msg != "" {
			return "", fmt.Errorf("%s %s: %s (exit %d)", prog, strings.Join(args, " "), msg, exit.ExitCode())
		}
		return "", fmt.Errorf("%s %s: %w %s", prog, strings.Join(args, " "), err, msg)
	}
	return out.String(), nil
}

// numbered prefixes each line with its number, as iptables-restore's errors cite lines.
func numbered(s string) string {
	var b strings.Builder
	for i, line := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
		fmt.Fprintf(&b, "%3d  %s\n", i+1, line)
	}
	return b.String()
}
