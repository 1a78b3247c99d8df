// Package k8sbin finds or builds the control-plane binaries that envtest and the local mesh
// need — kube-apiserver, etcd and kube-controller-manager — and returns one directory that
// holds all three. It takes pinned module versions and the environment (KUBEBUILDER_ASSETS,
// XDG directories) and produces a directory path; everything it says goes to a log writer.
//
// Resolution order (hack/envtest/README.md):
//  1. $KUBEBUILDER_ASSETS, if it holds kube-apiserver and etcd;
//  2. setup-envtest's store: <envtest root>/k8s/<version>-<os>-<arch>;
//  3. setup-envtest's download under a hard timeout, unless NoDownload;
//  4. a build from the Go modules at the pinned versions into the store of step 2.
//
// kube-controller-manager is never in setup-envtest's archive: when the chosen directory lacks
// it, it is built (into the store, or for other directories into the cache) and an overlay
// directory of symlinks is returned. Binaries this package built carry a stamp file naming
// what they were built from; a stamp that does not match the pins makes the next run rebuild.
package k8sbin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Pinned versions; bump here (the stamps make the next run rebuild).
const (
	// DefaultK8sVersion is the k8s.io/kubernetes module tag.
	DefaultK8sVersion = "v1.36.3"
	// DefaultEtcdVersion is the go.etcd.io/etcd/server/v3 version (newest v3.6:
	// go list -m -versions go.etcd.io/etcd/server/v3).
	DefaultEtcdVersion = "v3.6.16"
	// DefaultSetupEnvtestVersion is sigs.k8s.io/controller-runtime/tools/setup-envtest's.
	DefaultSetupEnvtestVersion = "v0.25.1"
	// DefaultDownloadTimeout bounds setup-envtest's download: without internet access it
	// would otherwise hang on the first request.
	DefaultDownloadTimeout = 60 * time.Second
	// Recipe is bumped when the build recipe changes in a way that needs a rebuild.
	Recipe = 1
)

// The three binaries, in the order they are built and verified.
const (
	KubeAPIServer         = "kube-apiserver"
	Etcd                  = "etcd"
	KubeControllerManager = "kube-controller-manager"
)

// Binaries lists every binary the returned directory holds.
var Binaries = []string{KubeAPIServer, Etcd, KubeControllerManager}

// Options say which versions to use and how hard to try.
type Options struct {
	K8sVersion, EtcdVersion, SetupEnvtestVersion string
	// CoreDNSVersion is github.com/coredns/coredns's (mesh.go); empty means the default.
	CoreDNSVersion string
	// Rebuild skips steps 1-3 and rebuilds all three binaries.
	Rebuild bool
	// NoDownload skips step 3 (setup-envtest's download).
	NoDownload      bool
	DownloadTimeout time.Duration
	// Assets is $KUBEBUILDER_ASSETS (step 1); empty skips the step.
	Assets string
	// Log receives progress; nil discards it.
	Log io.Writer
}

// OptionsFromEnv reads the options from WEFT_K8S_VERSION, WEFT_ETCD_VERSION,
// WEFT_SETUP_ENVTEST_VERSION, WEFT_COREDNS_VERSION, WEFT_ENVTEST_REBUILD=1, WEFT_ENVTEST_NO_DOWNLOAD=1,
// WEFT_ENVTEST_DOWNLOAD_TIMEOUT (seconds) and KUBEBUILDER_ASSETS.
func OptionsFromEnv(getenv func(string) string) (Options, error) {
	o := Options{
		K8sVersion:          or(getenv("WEFT_K8S_VERSION"), DefaultK8sVersion),
		EtcdVersion:         or(getenv("WEFT_ETCD_VERSION"), DefaultEtcdVersion),
		SetupEnvtestVersion: or(getenv("WEFT_SETUP_ENVTEST_VERSION"), DefaultSetupEnvtestVersion),
		CoreDNSVersion:      or(getenv("WEFT_COREDNS_VERSION"), DefaultCoreDNSVersion),
		Rebuild:             getenv("WEFT_ENVTEST_REBUILD") == "1",
		NoDownload:          getenv("WEFT_ENVTEST_NO_DOWNLOAD") == "1",
		DownloadTimeout:     DefaultDownloadTimeout,
		Assets:              getenv("KUBEBUILDER_ASSETS"),
	}
	if s := getenv("WEFT_ENVTEST_DOWNLOAD_TIMEOUT"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return o, fmt.Errorf("WEFT_ENVTEST_DOWNLOAD_TIMEOUT=%q: want a positive number of seconds", s)
		}
		o.DownloadTimeout = time.Duration(n) * time.Second
	}
	return o, nil
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Paths are the directories the resolver reads and writes.
type Paths struct {
	// EnvtestRoot is setup-envtest's --bin-dir: ${XDG_DATA_HOME:-~/.local/share}/kubebuilder-envtest.
	EnvtestRoot string
	// Store is setup-envtest's directory for the pinned version, where builds go too.
	Store string
	// Cache holds the build modules, logs, the lock and overlays: ${XDG_CACHE_HOME:-~/.cache}/weft.
	Cache string
	// KCMDir holds a kube-controller-manager built for a directory other than Store. It is
	// not in the store: a store directory holding only it would make setup-envtest treat
	// the version as installed and hand back a directory without kube-apiserver.
	KCMDir string
	// MeshDir holds the local mesh's node binaries, kube-proxy and coredns (mesh.go): not
	// envtest's, so not in the store either.
	MeshDir string
}

// NewPaths computes the paths for K8s version k8sVersion (v1.36.3) on goos/goarch, as
// setup-envtest lays out its store.
func NewPaths(getenv func(string) string, home, k8sVersion, goos, goarch string) Paths {
	data := or(getenv("XDG_DATA_HOME"), filepath.Join(home, ".local", "share"))
	cache := filepath.Join(or(getenv("XDG_CACHE_HOME"), filepath.Join(home, ".cache")), "weft")
	plat := strings.TrimPrefix(k8sVersion, "v") + "-" + goos + "-" + goarch
	root := filepath.Join(data, "kubebuilder-envtest")
	return Paths{
		EnvtestRoot: root,
		Store:       filepath.Join(root, "k8s", plat),
		Cache:       cache,
		KCMDir:      filepath.Join(cache, "kcm", plat),
		MeshDir:     filepath.Join(cache, "mesh", plat),
	}
}

// StagingVersion maps a Kubernetes tag to its staging modules' tag: v1.36.3 → v0.36.3.
func StagingVersion(k8sVersion string) string {
	_, rest, _ := strings.Cut(strings.TrimPrefix(k8sVersion, "v"), ".")
	return "v0." + rest
}

// minor maps v1.36.3 to 1.36.
func minor(k8sVersion string) string {
	v := strings.TrimPrefix(k8sVersion, "v")
	if i := strings.LastIndexByte(v, '.'); i >= 0 {
		return v[:i]
	}
	return v
}

// Stamp is what a binary this package built was built from.
func (o Options) Stamp(bin string) string {
	switch bin {
	case Etcd:
		return fmt.Sprintf("etcd=%s recipe=%d", o.EtcdVersion, Recipe)
	case CoreDNS:
		return fmt.Sprintf("coredns=%s plugins=%s recipe=%d", or(o.CoreDNSVersion, DefaultCoreDNSVersion), strings.Join(CoreDNSPlugins, ","), Recipe)
	}
	return fmt.Sprintf("kubernetes=%s staging=%s recipe=%d", o.K8sVersion, StagingVersion(o.K8sVersion), Recipe)
}

// stampFile is where the stamp of dir/bin lives.
func stampFile(dir, bin string) string { return filepath.Join(dir, ".weft-stamp-"+bin) }

// Usable reports whether dir/bin can be used: it is executable, and either was not built by
// us (setup-envtest put it there: no stamp) or was built from the current pins.
func (o Options) Usable(dir, bin string) bool {
	if unix.Access(filepath.Join(dir, bin), unix.X_OK) != nil {
		return false
	}
	b, err := os.ReadFile(stampFile(dir, bin))
	if errors.Is(err, os.ErrNotExist) {
		return true
	}
	// The shell version compared $(cat stamp), which drops trailing newlines.
	return err == nil && strings.TrimRight(string(b), "\n") == o.Stamp(bin)
}

func (o Options) hasCore(dir string) bool {
	return o.Usable(dir, KubeAPIServer) && o.Usable(dir, Etcd)
}

func (o Options) hasAll(dir string) bool {
	return o.hasCore(dir) && o.Usable(dir, KubeControllerManager)
}

// resolver carries one run's state.
type resolver struct {
	o     Options
	p     Paths
	log   io.Writer
	goos  string
	start time.Time
}

func (r *resolver) logf(format string, args ...any) {
	fmt.Fprintf(r.log, "envtest-assets: "+format+"\n", args...)
}

// Resolve finds or builds the three binaries, checks that each runs (--version), and returns
// their directory. One run at a time per machine holds a lock in the cache directory (builds
// take tens of minutes; parallel make jobs may call this).
func Resolve(ctx context.Context, o Options) (string, error) {
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("finding the home directory for the envtest cache: %w", err)
	}
	r := &resolver{o: o, p: NewPaths(os.Getenv, home, o.K8sVersion, runtime.GOOS, runtime.GOARCH),
		log: o.Log, goos: runtime.GOOS, start: time.Now()}
	if r.log == nil {
		r.log = io.Discard
	}
	// Not the store: an existing (empty) store directory fools setup-envtest.
	if err := os.MkdirAll(r.p.Cache, 0o755); err != nil {
		return "", fmt.Errorf("creating the envtest cache: %w", err)
	}
	unlock, err := r.lock()
	if err != nil {
		return "", err
	}
	defer unlock()

	dir, err := r.resolve(ctx)
	if err != nil {
		return "", err
	}
	for _, b := range Binaries {
		p := filepath.Join(dir, b)
		if unix.Access(p, unix.X_OK) != nil {
			return "", fmt.Errorf("%s is missing or not executable", p)
		}
		out, err := runOutput(ctx, "", nil, p, "--version")
		if err != nil {
			r.logf("%s", out)
			return "", fmt.Errorf("%s --version failed: %w", p, err)
		}
		first, _, _ := strings.Cut(out, "\n")
		r.logf("%s: %s", b, first)
	}
	r.logf("ready in %ds", int(time.Since(r.start).Seconds()))
	return dir, nil
}

// lock takes the machine-wide lock, waiting (and saying so) while another run holds it. The
// lock file is the one hack/envtest-assets.sh used, so old and new runs exclude each other.
func (r *resolver) lock() (func(), error) {
	path := filepath.Join(r.p.Cache, "envtest-assets.lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		r.logf("another envtest-assets run holds %s; waiting", path)
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			_ = f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
	}
	return func() { _ = f.Close() }, nil
}

func (r *resolver) resolve(ctx context.Context) (string, error) {
	o, p := r.o, r.p
	if o.Rebuild {
		r.logf("rebuild forced: building all three into %s", p.Store)
		for _, b := range Binaries {
			if err := r.ensure(ctx, p.Store, b); err != nil {
				return "", err
			}
		}
		return p.Store, nil
	}

	// 1. $KUBEBUILDER_ASSETS
	if o.Assets != "" {
		if d, err := realDir(o.Assets); err == nil && o.hasCore(d) {
			r.logf("using $KUBEBUILDER_ASSETS=%s", d)
			if o.hasAll(d) {
				return d, nil
			}
			return r.withKCM(ctx, d)
		}
		r.logf("$KUBEBUILDER_ASSETS=%s lacks kube-apiserver/etcd; ignoring it", o.Assets)
	}

	// 2. setup-envtest's store, all three present (and current, if we built them)
	if o.hasAll(p.Store) {
		r.logf("using cached %s", p.Store)
		return p.Store, nil
	}

	// 3. setup-envtest's download (needs the internet; fails fast and quietly without it)
	if !o.NoDownload && !o.hasCore(p.Store) {
		d, ok := r.download(ctx)
		if ok {
			if o.hasAll(d) {
				return d, nil
			}
			return r.withKCM(ctx, d)
		}
	}

	// 4. build whatever is missing into the store
	for _, b := range Binaries {
		if err := r.ensure(ctx, p.Store, b); err != nil {
			return "", err
		}
	}
	return p.Store, nil
}

// realDir is `cd dir && pwd -P`: the absolute directory with symlinks resolved.
func realDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	d, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", err
	}
	if fi, err := os.Stat(d); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("%s is not a directory", dir)
	}
	return d, nil
}

// ensure builds bin into dir unless a usable one is there (or a rebuild is forced).
func (r *resolver) ensure(ctx context.Context, dir, bin string) error {
	if !r.o.Rebuild && r.o.Usable(dir, bin) {
		return nil
	}
	switch bin {
	case Etcd:
		return r.buildEtcd(ctx, dir)
	case CoreDNS:
		return r.buildCoreDNS(ctx, dir)
	}
	return r.buildK8s(ctx, dir, bin)
}

// withKCM takes a directory with kube-apiserver and etcd but no kube-controller-manager and
// returns one with all three. For the store itself (setup-envtest downloaded the pinned
// version) it builds it into the store; otherwise into KCMDir, returning an overlay
// directory of symlinks to src's files plus that kube-controller-manager.
func (r *resolver) withKCM(ctx context.Context, src string) (string, error) {
	if store, err := realDir(r.p.Store); err == nil && src == store {
		if err := r.ensure(ctx, r.p.Store, KubeControllerManager); err != nil {
			return "", err
		}
		return r.p.Store, nil
	}
	if err := r.ensure(ctx, r.p.KCMDir, KubeControllerManager); err != nil {
		return "", err
	}
	ov := OverlayDir(r.p.Cache, src)
	if err := os.RemoveAll(ov); err != nil {
		return "", fmt.Errorf("clearing overlay %s: %w", ov, err)
	}
	if err := os.MkdirAll(ov, 0o755); err != nil {
		return "", fmt.Errorf("creating overlay %s: %w", ov, err)
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", src, err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") { // the shell's "$src"/* skipped dot files
			continue
		}
		if err := os.Symlink(filepath.Join(src, e.Name()), filepath.Join(ov, e.Name())); err != nil {
			return "", fmt.Errorf("building overlay %s: %w", ov, err)
		}
	}
	kcm := filepath.Join(ov, KubeControllerManager)
	_ = os.Remove(kcm) // src may have a kube-controller-manager we could not use
	if err := os.Symlink(filepath.Join(r.p.KCMDir, KubeControllerManager), kcm); err != nil {
		return "", fmt.Errorf("building overlay %s: %w", ov, err)
	}
	r.logf("%s has no kube-controller-manager; overlay %s = %s + %s/kube-controller-manager", src, ov, src, r.p.KCMDir)
	return ov, nil
}

// OverlayDir is the overlay directory for src: cache/envtest-overlay/<12 hex digits of
// sha256(src)>, the same name the shell version used.
func OverlayDir(cache, src string) string {
	sum := sha256.Sum256([]byte(src))
	return filepath.Join(cache, "envtest-overlay", hex.EncodeToString(sum[:])[:12])
}
