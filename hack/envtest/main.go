// Command envtest finds or builds kube-apiserver, etcd and kube-controller-manager for envtest
// and the local mesh (package internal/k8sbin) and prints their directory as the LAST line on
// stdout; everything else goes to stderr. Usage:
//
//	KUBEBUILDER_ASSETS="$(go run ./hack/envtest | tail -n1)" go test ./...
//
// Flags / environment:
//
//	--rebuild | WEFT_ENVTEST_REBUILD=1          skip the lookups, rebuild all three
//	--no-download | WEFT_ENVTEST_NO_DOWNLOAD=1  skip setup-envtest's download
//	--mesh                                      also find or build the local mesh's kube-proxy and
//	                                            CoreDNS (into ~/.cache/weft/mesh/; logged, not printed)
//	WEFT_ENVTEST_DOWNLOAD_TIMEOUT               seconds (default 60)
//	WEFT_K8S_VERSION, WEFT_ETCD_VERSION, WEFT_SETUP_ENVTEST_VERSION override the pins
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/weftmesh/weft/internal/k8sbin"
)

func main() {
	o, err := k8sbin.OptionsFromEnv(os.Getenv)
	if err != nil {
		fail(err)
	}
	fs := flag.NewFlagSet("envtest", flag.ContinueOnError)
	fs.BoolVar(&o.Rebuild, "rebuild", o.Rebuild, "skip the lookups and rebuild all three binaries")
	fs.BoolVar(&o.NoDownload, "no-download", o.NoDownload, "skip setup-envtest's download")
	mesh := fs.Bool("mesh", false, "also find or build kube-proxy and CoreDNS for the local mesh")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(1)
	}
	if fs.NArg() > 0 {
		fail(fmt.Errorf("unknown argument: %s", fs.Arg(0)))
	}
	o.Log = os.Stderr
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir, err := k8sbin.Resolve(ctx, o)
	if err != nil {
		stop()
		fail(err)
	}
	if *mesh {
		if _, err := k8sbin.ResolveMesh(ctx, o); err != nil {
			stop()
			fail(err)
		}
	}
	fmt.Println(dir)
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "envtest-assets: ERROR: %v\n", err)
	os.Exit(1)
}
