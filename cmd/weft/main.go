// Command weft is the Weft CLI (internal/cli: proxy-status, proxy-config, describe, check,
// completion; installed as kubectl-weft it is the `kubectl weft` plugin). `weft dev` runs
// the whole mesh on this machine (see internal/sandbox): real etcd, kube-apiserver and
// kube-controller-manager, the manager, and a node agent that runs Pods as local processes
// in their own network namespaces.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"github.com/spf13/cobra"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/cli"
	"github.com/weftmesh/weft/internal/k8sbin"
	"github.com/weftmesh/weft/internal/sandbox"
)

func main() {
	devCmd := &cobra.Command{
		Use:   "dev [flags]",
		Short: "Run a local mesh (needs root: it creates network namespaces); weft dev -h for its flags",
		// dev keeps its own flag set: its -h prints the built-in image map too.
		DisableFlagParsing: true,
		RunE:               func(_ *cobra.Command, args []string) error { return dev(args) },
	}
	os.Exit(cli.Main(os.Args[0], os.Args[1:], cli.Streams{Out: os.Stdout, Err: os.Stderr}, devCmd))
}

func dev(args []string) error {
	fs := flag.NewFlagSet("weft dev", flag.ExitOnError)
	var o sandbox.Options
	var cidr, imageMap, serviceCIDR, clusterDNS, upstream string
	var verbose bool
	fs.StringVar(&o.StateDir, "state-dir", filepath.Join(os.TempDir(), "weft-dev"), "where logs, the kubeconfig and etcd data live; a run cleans up what an earlier run with the same dir left")
	fs.StringVar(&o.BinDir, "bin-dir", "bin", "directory of manager, sidecar and the example programs images map to")
	fs.StringVar(&o.AssetsDir, "assets", os.Getenv("KUBEBUILDER_ASSETS"), "directory with etcd, kube-apiserver, kube-controller-manager (default $KUBEBUILDER_ASSETS, else found or built as by go run ./hack/envtest)")
	fs.StringVar(&o.CRDDir, "crds", "config/crd/bases", "directory of the CRDs to install")
	fs.StringVar(&cidr, "pod-cidr", "10.244.0.0/16", "pod network; the first address is the host's bridge address")
	fs.StringVar(&o.Bridge, "bridge", "weft0", "name of the host bridge pods attach to")
	fs.StringVar(&serviceCIDR, "service-cidr", "10.96.0.0/16", "ClusterIP range (kube-apiserver's service-cluster-ip-range), routed by kube-proxy")
	fs.StringVar(&clusterDNS, "cluster-dns", "", "ClusterIP of the kube-dns Service pods' resolv.conf names (default the service range's 10th address, 10.96.0.10)")
	fs.StringVar(&o.ClusterDomain, "cluster-domain", "cluster.local", "cluster DNS domain CoreDNS serves")
	fs.StringVar(&upstream, "dns-upstream", "", "where CoreDNS forwards names outside the cluster domain: \"host\" (the nameservers of /etc/resolv.conf) or a comma-separated list of ip[:port]; empty answers them SERVFAIL")
	fs.StringVar(&o.KubeProxyPath, "kube-proxy", "", "kube-proxy binary (default found or built as by go run ./hack/envtest -mesh)")
	fs.StringVar(&o.CoreDNSPath, "coredns", "", "CoreDNS binary with the kubernetes plugin (default found or built as by go run ./hack/envtest -mesh)")
	fs.IntVar(&o.XDSPort, "xds-port", contract.XDSPort, "port of the manager's xDS server on the bridge address")
	fs.StringVar(&imageMap, "image-map", "", "file of extra \"image-repository program\" lines (programs relative to --bin-dir or absolute)")
	fs.StringVar(&o.Registry, "registry", "", "serve an OCI registry on host:port (e.g. 127.0.0.1:5000) for make images REGISTRY=host:port/weftmesh; pods naming its images run them from their own root")
	fs.BoolVar(&o.NoManager, "no-manager", false, "start no Weft manager on the host: apply a release instead (make release REGISTRY=<--registry>/weftmesh; kubectl apply -f dist/install.yaml) and it runs as a pod")
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
	if o.ServiceCIDR, err = netip.ParsePrefix(serviceCIDR); err != nil {
		return fmt.Errorf("--service-cidr=%q: %w", serviceCIDR, err)
	}
	if clusterDNS != "" {
		if o.ClusterDNS, err = netip.ParseAddr(clusterDNS); err != nil {
			return fmt.Errorf("--cluster-dns=%q: %w", clusterDNS, err)
		}
	}
	if o.DNSUpstreams, err = sandbox.ParseDNSUpstreams(upstream, "/etc/resolv.conf"); err != nil {
		return fmt.Errorf("--dns-upstream=%q: %w", upstream, err)
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

// findAssets finds or builds the control-plane binaries offline (package k8sbin, as
// `go run ./hack/envtest` does) and returns their directory.
func findAssets() (string, error) {
	o, err := k8sbin.OptionsFromEnv(os.Getenv)
	if err != nil {
		return "", err
	}
	o.Log = os.Stderr
	dir, err := k8sbin.Resolve(context.Background(), o)
	if err != nil {
		return "", fmt.Errorf("no control-plane binaries (pass --assets, a dir with etcd, kube-apiserver and kube-controller-manager, or set KUBEBUILDER_ASSETS): %w", err)
	}
	return dir, nil
}
