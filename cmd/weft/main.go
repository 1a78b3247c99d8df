// Command weft is the Weft CLI. `weft dev` runs the whole mesh on this machine (see
// internal/sandbox): real etcd, kube-apiserver and kube-controller-manager, the manager,
// and a node agent that runs Pods as local processes in their own network namespaces.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/sandbox"
)

const usage = `weft — the Weft service mesh CLI

Usage:
  weft dev [flags]     run a local mesh (needs root: it creates network namespaces)

Run "weft dev -h" for its flags.
`

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "dev":
		err = dev(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q\n\n%s", os.Args[1], usage)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "weft:", err)
		os.Exit(1)
	}
}

func dev(args []string) error {
	fs := flag.NewFlagSet("weft dev", flag.ExitOnError)
	var o sandbox.Options
	var cidr, imageMap string
	var verbose bool
	fs.StringVar(&o.StateDir, "state-dir", filepath.Join(os.TempDir(), "weft-dev"), "where logs, the kubeconfig and etcd data live; a run cleans up what an earlier run with the same dir left")
	fs.StringVar(&o.BinDir, "bin-dir", "bin", "directory of manager, sidecar and the example programs images map to")
	fs.StringVar(&o.AssetsDir, "assets", os.Getenv("KUBEBUILDER_ASSETS"), "directory with etcd, kube-apiserver, kube-controller-manager (default $KUBEBUILDER_ASSETS, else hack/envtest-assets.sh)")
	fs.StringVar(&o.CRDDir, "crds", "config/crd/bases", "directory of the CRDs to install")
	fs.StringVar(&cidr, "pod-cidr", "10.244.0.0/16", "pod network; the first address is the host's bridge address")
	fs.StringVar(&o.Bridge, "bridge", "weft0", "name of the host bridge pods attach to")
	fs.IntVar(&o.XDSPort, "xds-port", contract.XDSPort, "port of the manager's xDS server on the bridge address")
	fs.StringVar(&imageMap, "image-map", "", "file of extra \"image-repository program\" lines (programs relative to --bin-dir or absolute)")
	fs.BoolVar(&verbose, "v", false, "log node-agent events")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: weft dev [flags]\n\nBuilt-in image map (repository → program in --bin-dir):\n")
		for k, v := range sandbox.DefaultImages {
			fmt.Fprintf(fs.Output(), "  %-32s %s\n", k, v)
		}
		fmt.Fprintln(fs.Output(), "\nFlags:")
		fs.PrintDefaults()
	}
	_ = fs.Parse(args)
	var err error
	if o.PodCIDR, err = netip.ParsePrefix(cidr); err != nil {
		return fmt.Errorf("--pod-cidr=%q: %w", cidr, err)
	}
	for _, p := range []*string{&o.StateDir, &o.BinDir, &o.CRDDir} {
		if *p, err = filepath.Abs(*p); err != nil {
			return err
		}
	}
	if o.AssetsDir == "" {
		if o.AssetsDir, err = findAssets(); err != nil {
			return err
		}
	}
	o.Images = sandbox.NewImages(o.BinDir)
	if imageMap != "" {
		if err := o.Images.LoadFile(imageMap); err != nil {
			return err
		}
	}
	o.Out = os.Stdout
	o.Log = logr.Discard()
	if verbose {
		o.Log = funcr.New(func(prefix, args string) { fmt.Fprintln(os.Stderr, prefix, args) }, funcr.Options{})
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return sandbox.Run(ctx, o)
}

// findAssets runs hack/envtest-assets.sh, which finds or builds the control-plane binaries
// offline and prints their directory last.
func findAssets() (string, error) {
	script := filepath.Join("hack", "envtest-assets.sh")
	if _, err := os.Stat(script); err != nil {
		return "", errors.New("no control-plane binaries: pass --assets (a dir with etcd, kube-apiserver, kube-controller-manager) or set KUBEBUILDER_ASSETS, or run weft dev from a Weft clone")
	}
	cmd := exec.Command(script)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s failed: %w", script, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1], nil
}
