package k8sbin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// killGrace is how long a timed-out download gets between SIGTERM and SIGKILL (timeout -k 5).
const killGrace = 5 * time.Second

// download runs setup-envtest under the download timeout and reports the directory it
// provided, if that holds a current kube-apiserver and etcd.
func (r *resolver) download(ctx context.Context) (string, bool) {
	o := r.o
	r.logf("trying setup-envtest@%s use %s.x (timeout %ds)", o.SetupEnvtestVersion, minor(o.K8sVersion), int(o.DownloadTimeout.Seconds()))
	logPath := filepath.Join(r.p.Cache, "setup-envtest.log")
	logf, err := os.Create(logPath)
	if err != nil {
		r.logf("setup-envtest unavailable: %v", err)
		return "", false
	}
	defer func() { _ = logf.Close() }()
	tctx, cancel := context.WithTimeout(ctx, o.DownloadTimeout)
	defer cancel()
	cmd := exec.CommandContext(tctx, "go", "run", "sigs.k8s.io/controller-runtime/tools/setup-envtest@"+o.SetupEnvtestVersion,
		"use", minor(o.K8sVersion)+".x", "-p", "path", "--bin-dir", r.p.EnvtestRoot)
	cmd.Dir = r.p.Cache
	cmd.Env = append(os.Environ(), "GOFLAGS=")
	cmd.Stderr = logf
	// go run starts setup-envtest as a child: signal the whole process group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
	cmd.WaitDelay = killGrace
	out, err := cmd.Output()
	d := lastLine(string(out))
	timedOut := tctx.Err() != nil && ctx.Err() == nil
	if err == nil && d != "" && o.hasCore(d) {
		if rd, err := realDir(d); err == nil {
			r.logf("setup-envtest provided %s", rd)
			return rd, true
		}
	}
	var why string
	switch {
	case timedOut:
		why = fmt.Sprintf("timed out after %ds", int(o.DownloadTimeout.Seconds()))
	case err == nil:
		why = fmt.Sprintf("it answered '%s', which lacks a current kube-apiserver/etcd", d)
	default:
		why = firstLogLine(logPath)
	}
	r.logf("setup-envtest unavailable: %s", why)
	r.logf("falling back to building from Go modules (full output: %s)", logPath)
	return "", false
}

// lastLine is `tail -n1`.
func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// firstLogLine is the first line of a go run log that is not "go: downloading", cut to 160
// bytes: usually the reason the download failed.
func firstLogLine(path string) string {
	b, _ := os.ReadFile(path)
	for _, l := range strings.Split(string(b), "\n") {
		if l == "" || strings.HasPrefix(l, "go: downloading") {
			continue
		}
		if len(l) > 160 {
			l = l[:160]
		}
		return l
	}
	return ""
}

// modInfo is the part of `go mod download -json` this package reads.
type modInfo struct{ Dir, GoMod, Error string }

func (r *resolver) modDownload(ctx context.Context, modver string) (modInfo, error) {
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", modver)
	cmd.Dir = r.p.Cache
	cmd.Env = append(os.Environ(), "GOFLAGS=")
	cmd.Stderr = r.log
	out, err := cmd.Output() // the JSON is printed even when the download fails
	var m modInfo
	if jerr := json.Unmarshal(out, &m); jerr != nil || m.GoMod == "" {
		cause := errors.Join(err, jerr)
		if m.Error != "" || cause == nil {
			cause = errors.Join(cause, errors.New(m.Error+" (no go.mod in the answer)"))
		}
		return m, fmt.Errorf("could not fetch %s via the module proxy: %w", modver, cause)
	}
	return m, nil
}

// StagingModules lists the modules a k8s.io/kubernetes go.mod replaces with ./staging/
// directories (every `k8s.io/X => ./staging/src/k8s.io/X`), sorted and without duplicates.
func StagingModules(gomod string) []string {
	seen := map[string]bool{}
	inBlock := false
	for _, line := range strings.Split(gomod, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && f[0] == "replace" && f[1] == "(":
			inBlock = true
		case inBlock && len(f) > 0 && strings.HasPrefix(f[0], ")"):
			inBlock = false
		case inBlock && len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "./staging/"):
			seen[f[0]] = true
		case len(f) >= 4 && f[0] == "replace" && f[1] != "(" && f[2] == "=>" && strings.HasPrefix(f[3], "./staging/"):
			seen[f[1]] = true
		}
	}
	mods := make([]string, 0, len(seen))
	for m := range seen {
		mods = append(mods, m)
	}
	sort.Strings(mods)
	return mods
}

// linesWithPrefix returns gomod's lines that start with prefix.
func linesWithPrefix(gomod, prefix string) []string {
	var out []string
	for _, l := range strings.Split(gomod, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return out
}

// K8sBuildGoMod is the go.mod of the throwaway module that builds k8s.io/kubernetes commands:
// it requires the tag and points every staging module at its published v0 tag (the staging
// directories are not in the module zip). kgomod is k8s.io/kubernetes's own go.mod.
func K8sBuildGoMod(kgomod, k8sVersion string) (string, int, error) {
	staging := StagingModules(kgomod)
	if len(staging) == 0 {
		return "", 0, errors.New("no staging replaces found in k8s.io/kubernetes's go.mod")
	}
	goline := linesWithPrefix(kgomod, "go ")
	if len(goline) == 0 {
		return "", 0, errors.New("no go line in k8s.io/kubernetes's go.mod")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "module weft.local/k8s-build\n\n%s\n%s\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n",
		goline[0], strings.Join(linesWithPrefix(kgomod, "godebug "), "\n"), k8sVersion)
	sv := StagingVersion(k8sVersion)
	for _, m := range staging {
		fmt.Fprintf(&b, "\t%s => %s %s\n", m, m, sv)
	}
	b.WriteString(")\n\n")
	return b.String(), len(staging), nil
}

// etcdModules are the etcd modules pinned next to go.etcd.io/etcd/server/v3.
var etcdModules = []string{"go.etcd.io/etcd/api/v3", "go.etcd.io/etcd/client/pkg/v3", "go.etcd.io/etcd/client/v3", "go.etcd.io/etcd/pkg/v3"}

// EtcdBuildGoMod is the go.mod of the throwaway module that builds etcd; sgomod is
// go.etcd.io/etcd/server/v3's go.mod.
func EtcdBuildGoMod(sgomod, etcdVersion string) (string, error) {
	goline := linesWithPrefix(sgomod, "go ")
	if len(goline) == 0 {
		return "", errors.New("no go line in go.etcd.io/etcd/server/v3's go.mod")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "module weft.local/etcd-build\n\n%s\n\nrequire go.etcd.io/etcd/server/v3 %s\n\nreplace (\n", goline[0], etcdVersion)
	for _, m := range etcdModules {
		fmt.Fprintf(&b, "\t%s => %s %s\n", m, m, etcdVersion)
	}
	b.WriteString(")\n\n")
	return b.String(), nil
}

// writeGoMod (re)writes dir/go.mod only when it changed; a changed go.mod also drops go.sum
// (-mod=mod refills it). It reports whether it wrote.
func writeGoMod(dir, content string) (bool, error) {
	path := filepath.Join(dir, "go.mod")
	if old, err := os.ReadFile(path); err == nil && string(old) == content {
		return false, nil
	}
	tmp, err := os.CreateTemp(dir, ".go.mod.")
	if err != nil {
		return false, err
	}
	_, werr := tmp.WriteString(content)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		_ = os.Remove(tmp.Name())
		return false, err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return false, err
	}
	if err := os.Remove(filepath.Join(dir, "go.sum")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return true, err
	}
	return true, nil
}

func (r *resolver) k8sModule(ctx context.Context) (string, error) {
	dir := filepath.Join(r.p.Cache, "k8s-build")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	m, err := r.modDownload(ctx, "k8s.io/kubernetes@"+r.o.K8sVersion)
	if err != nil {
		return "", err
	}
	kgomod, err := os.ReadFile(m.GoMod)
	if err != nil {
		return "", fmt.Errorf("reading k8s.io/kubernetes's go.mod: %w", err)
	}
	content, n, err := K8sBuildGoMod(string(kgomod), r.o.K8sVersion)
	if err != nil {
		return "", fmt.Errorf("%s: %w", m.GoMod, err)
	}
	if wrote, err := writeGoMod(dir, content); err != nil {
		return "", fmt.Errorf("writing %s/go.mod: %w", dir, err)
	} else if wrote {
		r.logf("writing %s/go.mod (%d staging modules -> %s)", dir, n, StagingVersion(r.o.K8sVersion))
	}
	return dir, nil
}

func (r *resolver) etcdModule(ctx context.Context) (string, modInfo, error) {
	dir := filepath.Join(r.p.Cache, "etcd-build")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", modInfo{}, err
	}
	m, err := r.modDownload(ctx, "go.etcd.io/etcd/server/v3@"+r.o.EtcdVersion)
	if err != nil {
		return "", m, err
	}
	sgomod, err := os.ReadFile(m.GoMod)
	if err != nil {
		return "", m, fmt.Errorf("reading etcd server's go.mod: %w", err)
	}
	content, err := EtcdBuildGoMod(string(sgomod), r.o.EtcdVersion)
	if err != nil {
		return "", m, fmt.Errorf("%s: %w", m.GoMod, err)
	}
	if wrote, err := writeGoMod(dir, content); err != nil {
		return "", m, fmt.Errorf("writing %s/go.mod: %w", dir, err)
	} else if wrote {
		r.logf("writing %s/go.mod (etcd modules -> %s)", dir, r.o.EtcdVersion)
	}
	return dir, m, nil
}

// goBuild builds pkg in moddir to outdir/out atomically (a temporary name, then rename) and
// stamps it.
func (r *resolver) goBuild(ctx context.Context, outdir, moddir, out, pkg, ldflags string) error {
	if err := os.MkdirAll(outdir, 0o755); err != nil {
		return err
	}
	tmp := filepath.Join(outdir, fmt.Sprintf(".%s.tmp.%d", out, os.Getpid()))
	logPath := filepath.Join(r.p.Cache, "build-"+out+".log")
	t0 := time.Now()
	r.logf("building %s from %s (tens of minutes with a cold Go build cache on 2 cores; log: %s)", out, pkg, logPath)
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "nice", "-n", "10", "go", "build", "-trimpath", "-ldflags", ldflags, "-o", tmp, pkg)
	cmd.Dir = moddir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "CGO_ENABLED=0", "GOWORK=off")
	cmd.Stdout, cmd.Stderr = logf, logf
	err = cmd.Run()
	_ = logf.Close()
	if err != nil {
		_ = os.Remove(tmp)
		if b, rerr := os.ReadFile(logPath); rerr == nil {
			lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
			fmt.Fprintln(r.log, strings.Join(lines[max(0, len(lines)-30):], "\n"))
		}
		return fmt.Errorf("go build of %s failed (full log: %s): %w", out, logPath, err)
	}
	if err := os.Rename(tmp, filepath.Join(outdir, out)); err != nil {
		return err
	}
	if err := os.WriteFile(stampFile(outdir, out), []byte(r.o.Stamp(out)+"\n"), 0o644); err != nil {
		return fmt.Errorf("stamping %s: %w", out, err)
	}
	r.logf("built %s in %ds", filepath.Join(outdir, out), int(time.Since(t0).Seconds()))
	return nil
}

// K8sLdflags are the linker flags that make a module build report its version as a release
// build does; date is the tag's time from the module cache's .info file, if known.
func K8sLdflags(k8sVersion, date string) string {
	semver := strings.TrimPrefix(k8sVersion, "v")
	major, rest, _ := strings.Cut(semver, ".")
	minorPart, _, _ := strings.Cut(rest, ".")
	l := "-s -w"
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		l += fmt.Sprintf(" -X %s.gitVersion=%s -X %s.gitMajor=%s -X %s.gitMinor=%s", pkg, k8sVersion, pkg, major, pkg, minorPart)
		l += fmt.Sprintf(" -X %s.gitTreeState=archive", pkg)
		if date != "" {
			l += fmt.Sprintf(" -X %s.buildDate=%s", pkg, date)
		}
	}
	return l
}

func (r *resolver) buildK8s(ctx context.Context, outdir, bin string) error {
	moddir, err := r.k8sModule(ctx)
	if err != nil {
		return err
	}
	var date string
	if gomodcache, err := runOutput(ctx, "", nil, "go", "env", "GOMODCACHE"); err == nil {
		info := filepath.Join(strings.TrimSpace(gomodcache), "cache", "download", "k8s.io", "kubernetes", "@v", r.o.K8sVersion+".info")
		var v struct{ Time string }
		if b, err := os.ReadFile(info); err == nil && json.Unmarshal(b, &v) == nil {
			date = v.Time
		}
	}
	return r.goBuild(ctx, outdir, moddir, bin, "k8s.io/kubernetes/cmd/"+bin, K8sLdflags(r.o.K8sVersion, date))
}

// buildEtcd builds etcd. In v3.6 the server module has `package main` at its root (a wrapper
// around etcdmain.Main); older layouts had the main only in the root go.etcd.io/etcd/v3
// module, in which case a wrapper is written into the build module.
func (r *resolver) buildEtcd(ctx context.Context, outdir string) error {
	moddir, m, err := r.etcdModule(ctx)
	if err != nil {
		return err
	}
	pkg := "go.etcd.io/etcd/server/v3"
	if !hasPackageMain(filepath.Join(m.Dir, "main.go")) {
		if err := os.MkdirAll(filepath.Join(moddir, "etcd"), 0o755); err != nil {
			return err
		}
		src := "package main\n\nimport (\n\t\"os\"\n\n\t\"go.etcd.io/etcd/server/v3/etcdmain\"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n"
		if err := os.WriteFile(filepath.Join(moddir, "etcd", "main.go"), []byte(src), 0o644); err != nil {
			return err
		}
		pkg = "weft.local/etcd-build/etcd"
	}
	return r.goBuild(ctx, outdir, moddir, Etcd, pkg, "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=module-"+r.o.EtcdVersion)
}

func hasPackageMain(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer func() { _ = f.Close() }()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if strings.HasPrefix(s.Text(), "package main") {
			return true
		}
	}
	return false
}

// runOutput runs name args in dir with extra environment and returns stdout and stderr.
func runOutput(ctx context.Context, dir string, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}
