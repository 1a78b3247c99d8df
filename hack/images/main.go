// Command images builds Weft's OCI images without Docker: it cross-compiles the programs in
// the table below (static: CGO_ENABLED=0, -trimpath, no build id) for each platform, hands
// the binaries to internal/image, and writes an OCI image layout (OUT/oci), a list of the
// built references with their digests (OUT/images.txt) and, with -registry, pushes every
// index. With -release it also renders config/default (kubectl kustomize) with every Weft
// image pinned by digest into OUT/install.yaml.
//
//	go run ./hack/images [-version v0.1.0] [-registry host/path] [-release] [-only weft-sidecar]
//
// The same commit gives the same digests: the version, revision and creation time (the
// commit's time, or SOURCE_DATE_EPOCH) are the only metadata, and the Go build is
// reproducible with these flags for one Go release.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/weftmesh/weft/internal/image"
)

// target is one image: the Go package it is built from and how it runs.
type target struct {
	name     string     // image name under the registry
	pkg      string     // Go main package; its last element names the binary
	user     image.User // the user the entrypoint runs as
	caCerts  bool       // copy the system CA bundle in (the program dials TLS with system roots)
	optional bool       // build only if the package's directory exists
	title    string
	// extra are more Go main packages whose programs go next to the main one (/name).
	extra []string
	// iptables puts the build host's iptables (nft), its libraries and modules in a layer
	// below the program (image.HostLayer); only for the host's own architecture, the only
	// one whose binaries are here. needsIptables drops the other platforms from the image.
	iptables, needsIptables bool
}

// targets are the images Weft ships. Adding one is one line.
var targets = []target{
	// The manager may dial an external NATS cluster over TLS (--nats-url tls://...).
	{name: "weft-manager", pkg: "./cmd/manager", user: image.NonRoot, caCerts: true, title: "Weft manager: operator, xDS server, sidecar injector, autoscaler"},
	// The capture init container runs the sidecar image with command weft-init
	// (internal/workload/capture.go), as Istio's istio-init runs its proxy image: so the
	// sidecar image carries weft-init and iptables too.
	{name: "weft-sidecar", pkg: "./cmd/sidecar", user: image.Proxy, extra: []string{"./cmd/weft-init"}, iptables: true, title: "Weft sidecar: the data-plane proxy"},
	// The CLI talks to an API server named by a kubeconfig, which may be a public endpoint.
	{name: "weft", pkg: "./cmd/weft", user: image.NonRoot, caCerts: true, title: "weft: the Weft command line"},
	// The traffic-capture init container writes iptables rules in the pod's network
	// namespace: it needs CAP_NET_ADMIN in effect, which a non-root user does not get from
	// the pod's securityContext alone, so it runs as root (as istio-init does).
	{name: "weft-init", pkg: "./cmd/weft-init", user: image.User{Name: "root", UID: 0}, optional: true, iptables: true, needsIptables: true, title: "Weft init: the pod's traffic capture"},
	{name: "weft-example-echo", pkg: "./examples/echo", user: image.NonRoot, title: "Weft example: echo"},
	{name: "weft-example-slow", pkg: "./examples/slow", user: image.NonRoot, title: "Weft example: slow"},
	{name: "weft-example-flaky", pkg: "./examples/flaky", user: image.NonRoot, title: "Weft example: flaky"},
	{name: "weft-example-caller", pkg: "./examples/caller", user: image.NonRoot, title: "Weft example: caller"},
}

const (
	// sourceRegistry is where the manifests in config/ name Weft's images.
	sourceRegistry = "ghcr.io/weftmesh"
	caBundle       = "/etc/ssl/certs/ca-certificates.crt"
)

type options struct {
	out, version, registry, platforms, only, goCmd string
	push, release                                  bool
}

func main() {
	var o options
	flag.StringVar(&o.out, "out", "dist", "output directory: OUT/oci (the OCI layout), OUT/images.txt, OUT/install.yaml")
	flag.StringVar(&o.version, "version", os.Getenv("VERSION"), "image tag and version label (default $VERSION, else git describe --tags --always --dirty)")
	flag.StringVar(&o.registry, "registry", os.Getenv("REGISTRY"), "registry and path to name (and push) the images under (default $REGISTRY, else "+sourceRegistry+" without pushing)")
	flag.StringVar(&o.platforms, "platforms", "linux/amd64,linux/arm64", "comma-separated os/arch list")
	flag.StringVar(&o.only, "only", "", "comma-separated image names to build (default: all); with -release, every image config/default names must be among them")
	flag.BoolVar(&o.release, "release", false, "also write OUT/install.yaml: config/default rendered with every Weft image pinned by digest")
	flag.StringVar(&o.goCmd, "go", envOr("GO", "go"), "the go command")
	flag.Parse()
	o.push = o.registry != ""
	if o.registry == "" {
		o.registry = sourceRegistry
	}
	if err := run(context.Background(), o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options, stdout io.Writer) error {
	meta, err := metadata(o.version)
	if err != nil {
		return err
	}
	plats, err := parsePlatforms(o.platforms)
	if err != nil {
		return err
	}
	sel, err := selectTargets(o.only)
	if err != nil {
		return err
	}
	// The release's manifests are rendered first, so a -only that leaves out an image they
	// name fails before anything is built or written (-release -only is for tests that need
	// a few images fast: test/e2e/release_test.go).
	var rendered []byte
	if o.release {
		if rendered, err = renderDefault(ctx); err != nil {
			return err
		}
		will := map[string]string{}
		for _, t := range sel {
			will[t.name] = o.registry + "/" + t.name
		}
		if _, err := image.Pin(rendered, sourceRegistry, will); err != nil {
			return fmt.Errorf("-release with -only %s: %w", o.only, err)
		}
	}
	fmt.Fprintf(stdout, "images %s (revision %s, created %s) for %s\n", meta.Version, meta.Revision, meta.Created.Format(time.RFC3339), o.platforms)

	tmp, err := os.MkdirTemp("", "weft-images-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for _, p := range plats {
		start := time.Now()
		if err := goBuild(ctx, o.goCmd, p, filepath.Join(tmp, p.OS+"_"+p.Arch), sel); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "  go build %s: %d programs in %s\n", p, len(sel), time.Since(start).Round(100*time.Millisecond))
	}

	start := time.Now()
	bases, err := iptablesLayers(sel, plats, meta.Created, stdout)
	if err != nil {
		return err
	}
	var ca []byte
	named := make([]image.Named, 0, len(sel))
	pinned := map[string]string{}
	var list bytes.Buffer
	for _, t := range sel {
		spec := image.Spec{Name: t.name, Title: t.title, Binary: "/" + path.Base(t.pkg), User: t.user}
		if t.caCerts {
			if ca == nil {
				if ca, err = os.ReadFile(caBundle); err != nil {
					return fmt.Errorf("image %s wants the system CA bundle (Debian: apt-get install ca-certificates): %w", t.name, err)
				}
			}
			spec.CACerts = ca
		}
		bins := map[image.Platform][]byte{}
		for _, p := range plats {
			if t.needsIptables && bases[p] == nil {
				fmt.Fprintf(stdout, "  %s: no %s variant (needs that platform's iptables on the build host)\n", t.name, p)
				continue
			}
			b, err := os.ReadFile(filepath.Join(tmp, p.OS+"_"+p.Arch, path.Base(t.pkg)))
			if err != nil {
				return err
			}
			bins[p] = b
			for _, e := range t.extra {
				eb, err := os.ReadFile(filepath.Join(tmp, p.OS+"_"+p.Arch, path.Base(e)))
				if err != nil {
					return err
				}
				if spec.Extra == nil {
					spec.Extra = map[image.Platform]map[string][]byte{}
				}
				if spec.Extra[p] == nil {
					spec.Extra[p] = map[string][]byte{}
				}
				spec.Extra[p]["/"+path.Base(e)] = eb
			}
			if t.iptables && bases[p] != nil {
				if spec.Base == nil {
					spec.Base = map[image.Platform][]byte{}
				}
				spec.Base[p] = bases[p]
			}
		}
		if len(bins) == 0 {
			fmt.Fprintf(stdout, "  %s: skipped, no platform to build it for\n", t.name)
			continue
		}
		idx, err := image.Index(spec, meta, bins)
		if err != nil {
			return err
		}
		d, err := idx.Digest()
		if err != nil {
			return err
		}
		repo := o.registry + "/" + t.name
		ref := repo + ":" + meta.Version
		named = append(named, image.Named{Ref: ref, Index: idx})
		pinned[t.name] = repo + "@" + d.String()
		fmt.Fprintf(&list, "%s %s\n", ref, d)
		if err := report(stdout, ref, d, idx); err != nil {
			return err
		}
	}
	layoutDir := filepath.Join(o.out, "oci")
	if err := image.WriteLayout(layoutDir, named); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.out, "images.txt"), list.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "  assembled %d images in %s: %s, %s\n", len(named), time.Since(start).Round(100*time.Millisecond), layoutDir, filepath.Join(o.out, "images.txt"))

	if o.push {
		start := time.Now()
		for _, n := range named {
			if err := image.Push(ctx, n.Ref, n.Index); err != nil {
				return err
			}
		}
		fmt.Fprintf(stdout, "  pushed %d images to %s in %s\n", len(named), o.registry, time.Since(start).Round(100*time.Millisecond))
	}
	if o.release {
		return release(o, rendered, meta.Version, pinned, stdout)
	}
	return nil
}

// report prints each platform's size: the compressed layer plus config and manifest, what a
// node pulls.
func report(w io.Writer, ref string, d v1.Hash, idx v1.ImageIndex) error {
	im, err := idx.IndexManifest()
	if err != nil {
		return err
	}
	var sizes []string
	for _, desc := range im.Manifests {
		img, err := idx.Image(desc.Digest)
		if err != nil {
			return err
		}
		m, err := img.Manifest()
		if err != nil {
			return err
		}
		total := desc.Size + m.Config.Size
		for _, l := range m.Layers {
			total += l.Size
		}
		sizes = append(sizes, fmt.Sprintf("%s %.1f MiB", desc.Platform.Architecture, float64(total)/(1<<20)))
	}
	fmt.Fprintf(w, "  %s@%s (%s)\n", ref, d, strings.Join(sizes, ", "))
	return nil
}

// renderDefault renders config/default with kubectl kustomize.
func renderDefault(ctx context.Context) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "kubectl", "kustomize", "config/default")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	rendered, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("kubectl kustomize config/default (kubectl comes with hack/deps.sh mesh or any Kubernetes install): %w: %s", err, stderr.String())
	}
	return rendered, nil
}

// release pins every Weft image of the rendered config/default by the digest just built.
func release(o options, rendered []byte, version string, pinned map[string]string, stdout io.Writer) error {
	out, err := image.Pin(rendered, sourceRegistry, pinned)
	if err != nil {
		return err
	}
	if bad := image.Unpinned(out, o.registry); len(bad) > 0 {
		return fmt.Errorf("references left unpinned in the release: %s", strings.Join(bad, ", "))
	}
	header := fmt.Sprintf("# Weft %s: kubectl apply -f install.yaml (docs/install.md).\n# config/default rendered by make release; every Weft image is pinned by digest.\n", version)
	dst := filepath.Join(o.out, "install.yaml")
	if err := os.WriteFile(dst, append([]byte(header), out...), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "  wrote %s\n", dst)
	return nil
}

// goBuild builds every target's package for p into dir, one go command for all of them so
// the compiler works on several packages at once.
func goBuild(ctx context.Context, goCmd string, p image.Platform, dir string, sel []target) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	args := []string{"build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", dir + string(filepath.Separator)}
	seen := map[string]bool{}
	for _, t := range sel {
		for _, pkg := range append([]string{t.pkg}, t.extra...) {
			if !seen[pkg] {
				seen[pkg] = true
				args = append(args, pkg)
			}
		}
	}
	cmd := exec.CommandContext(ctx, goCmd, args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+p.OS, "GOARCH="+p.Arch, "GOFLAGS=-mod=readonly")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build for %s: %w", p, err)
	}
	return nil
}

func selectTargets(only string) ([]target, error) {
	want := map[string]bool{}
	for _, n := range strings.Split(only, ",") {
		if n = strings.TrimSpace(n); n != "" {
			want[n] = true
		}
	}
	filter := len(want) > 0
	var sel []target
	for _, t := range targets {
		if filter && !want[t.name] {
			continue
		}
		delete(want, t.name)
		if t.optional {
			if _, err := os.Stat(t.pkg); err != nil {
				continue
			}
		}
		sel = append(sel, t)
	}
	if len(want) > 0 {
		var names []string
		for n := range want {
			names = append(names, n)
		}
		return nil, fmt.Errorf("-only: no image named %s", strings.Join(names, ", "))
	}
	if len(sel) == 0 {
		return nil, errors.New("no images selected")
	}
	return sel, nil
}

func parsePlatforms(s string) ([]image.Platform, error) {
	var out []image.Platform
	for _, f := range strings.Split(s, ",") {
		p, err := image.ParsePlatform(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// metadata reads the version, the commit and its time from git (SOURCE_DATE_EPOCH wins for
// the time, as reproducible-builds.org defines it).
func metadata(version string) (image.Meta, error) {
	var err error
	if version == "" {
		if version, err = git("describe", "--tags", "--always", "--dirty"); err != nil {
			return image.Meta{}, err
		}
	}
	if _, err := name.NewTag(sourceRegistry + "/weft:" + version); err != nil {
		return image.Meta{}, fmt.Errorf("version %q is not a valid image tag: %w", version, err)
	}
	rev, err := git("rev-parse", "HEAD")
	if err != nil {
		return image.Meta{}, err
	}
	epoch := os.Getenv("SOURCE_DATE_EPOCH")
	if epoch == "" {
		if epoch, err = git("log", "-1", "--format=%ct", "HEAD"); err != nil {
			return image.Meta{}, err
		}
	}
	secs, err := strconv.ParseInt(epoch, 10, 64)
	if err != nil {
		return image.Meta{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970: %w", epoch, err)
	}
	return image.Meta{
		Source:   "https://github.com/weftmesh/weft",
		Revision: rev,
		Version:  version,
		Licenses: "Apache-2.0",
		Created:  time.Unix(secs, 0).UTC(),
	}, nil
}

func git(args ...string) (string, error) {
	out, err := exec.Command("git", args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, ee.Stderr)
		}
		return "", fmt.Errorf("git %s: %w", strings.Join(args, " "), err)
	}
	line, _, _ := bufio.NewReader(bytes.NewReader(out)).ReadLine()
	return strings.TrimSpace(string(line)), nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// iptablesLayers builds the iptables base layer (image.HostLayer) for the host's platform
// when a selected image wants it. Other platforms get none: their binaries are not here.
// A host without iptables builds the images without it, saying so.
func iptablesLayers(sel []target, plats []image.Platform, created time.Time, stdout io.Writer) (map[image.Platform][]byte, error) {
	want := false
	for _, t := range sel {
		want = want || t.iptables
	}
	out := map[image.Platform][]byte{}
	host := image.Platform{OS: runtime.GOOS, Arch: runtime.GOARCH}
	if !want || !slices.Contains(plats, host) {
		return out, nil
	}
	tarb, files, err := image.IptablesLayer(host, created)
	if errors.Is(err, image.ErrNoIptables) {
		fmt.Fprintf(stdout, "  %v: images built without iptables; weft-init in them fails until it is there\n", err)
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	version, _ := exec.Command("iptables-restore", "--version").Output()
	fmt.Fprintf(stdout, "  iptables layer for %s from this host (%s): %d files, %.1f MiB\n", host, strings.TrimSpace(string(version)), len(files), float64(len(tarb))/(1<<20))
	out[host] = tarb
	return out, nil
}
