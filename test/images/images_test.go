// Package images tests hack/images as `make images` and `make release` run it: real Go
// cross-builds, a real OCI layout on disk, a real registry (go-containerregistry's
// pkg/registry on 127.0.0.1) and a real kube-apiserver (envtest) for the release manifests.
package images

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

var (
	// root is the repository (hack/images runs git and kubectl kustomize there).
	root string
	// tool is hack/images, built once.
	tool string
)

func TestMain(m *testing.M) {
	_, file, _, _ := runtime.Caller(0)
	root = filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
	dir, err := os.MkdirTemp("", "weft-images-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tool = filepath.Join(dir, "images")
	build := exec.Command("go", "build", "-o", tool, "./hack/images")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building hack/images: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildImages runs hack/images with args writing to out; env adds to a clean environment
// (no VERSION, REGISTRY or SOURCE_DATE_EPOCH from the caller's shell).
func buildImages(t *testing.T, out string, env []string, args ...string) string {
	t.Helper()
	// The build may outlast the test's deadline on a cold cache (the manager's dependency
	// tree): stop it, and the go build under it, before the test binary is killed.
	ctx := context.Background()
	if dl, ok := t.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-30*time.Second))
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, tool, append([]string{"-out", out}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.Dir = root
	cmd.Env = append(cleanEnv(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("hack/images %s: %v\n%s\n%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	t.Logf("hack/images %s:\n%s", strings.Join(args, " "), stdout.String())
	return stdout.String()
}

func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "VERSION", "REGISTRY", "SOURCE_DATE_EPOCH", "GOOS", "GOARCH":
			continue
		}
		env = append(env, kv)
	}
	return env
}

// images reads OUT/images.txt: reference → digest.
func images(t *testing.T, out string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(out, "images.txt"))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		ref, d, ok := strings.Cut(line, " ")
		if !ok || !strings.HasPrefix(d, "sha256:") || len(d) != len("sha256:")+64 {
			t.Fatalf("images.txt line %q: want <ref> sha256:<64 hex>", line)
		}
		m[ref] = d
	}
	return m
}

// treeSums hashes every file under dir by its path relative to dir.
func treeSums(t *testing.T, dir string) map[string]string {
	t.Helper()
	sums := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		s := sha256.Sum256(b)
		sums[rel] = hex.EncodeToString(s[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return sums
}

// TestBuildTwiceSameDigests builds one small image for both platforms twice into two
// directories: the digests and every file of the two OCI layouts must be identical. Then
// the creation time and the version each change the digest.
func TestBuildTwiceSameDigests(t *testing.T) {
	tmp := t.TempDir()
	env := []string{"SOURCE_DATE_EPOCH=1796380198"}
	// weft-init has two layers, the lower one copied from this host's iptables (the build
	// host's platform only): it must be as reproducible as the one-layer images.
	args := []string{"-only", "weft-example-echo,weft-init", "-version", "v0.0.0-repro"}
	a, b := filepath.Join(tmp, "a"), filepath.Join(tmp, "b")
	buildImages(t, a, env, args...)
	buildImages(t, b, env, args...)

	ia, ib := images(t, a), images(t, b)
	ref := "ghcr.io/weftmesh/weft-example-echo:v0.0.0-repro"
	if ia[ref] == "" || ia[ref] != ib[ref] {
		t.Fatalf("two builds of %s: %q then %q", ref, ia[ref], ib[ref])
	}
	if wi := "ghcr.io/weftmesh/weft-init:v0.0.0-repro"; ia[wi] == "" || ia[wi] != ib[wi] {
		t.Fatalf("two builds of %s: %q then %q", wi, ia[wi], ib[wi])
	}
	sa, sb := treeSums(t, filepath.Join(a, "oci")), treeSums(t, filepath.Join(b, "oci"))
	if len(sa) < 2+2*3 { // oci-layout, index.json; per platform a manifest, a config and a layer
		t.Fatalf("the layout holds %d files: %v", len(sa), sa)
	}
	for p, s := range sa {
		if sb[p] != s {
			t.Errorf("%s differs between the two builds (%s vs %s)", p, s, sb[p])
		}
	}
	if len(sb) != len(sa) {
		t.Errorf("the layouts hold %d and %d files", len(sa), len(sb))
	}

	later := filepath.Join(tmp, "later")
	buildImages(t, later, []string{"SOURCE_DATE_EPOCH=1796380199"}, args...)
	if d := images(t, later)[ref]; d == ia[ref] {
		t.Errorf("a creation time one second later gave the same digest %s", d)
	}
	other := filepath.Join(tmp, "other")
	buildImages(t, other, env, "-only", "weft-example-echo", "-version", "v0.0.1-repro")
	if d := images(t, other)["ghcr.io/weftmesh/weft-example-echo:v0.0.1-repro"]; d == "" || d == ia[ref] {
		t.Errorf("another version gave digest %q (first: %s)", d, ia[ref])
	}
}

// TestRefusesBadArguments: a tag a registry would refuse, an unknown image and a malformed
// platform stop the build before anything is written.
func TestRefusesBadArguments(t *testing.T) {
	for _, args := range [][]string{
		{"-only", "weft-example-echo", "-version", "v1/../x"},
		{"-only", "weft-no-such-image", "-version", "v1"},
		{"-only", "weft-example-echo", "-version", "v1", "-platforms", "linux"},
		{"-only", "weft-example-echo", "-version", "v1", "-release"},
	} {
		out := filepath.Join(t.TempDir(), "out")
		cmd := exec.Command(tool, append([]string{"-out", out}, args...)...)
		cmd.Dir = root
		cmd.Env = cleanEnv()
		if b, err := cmd.CombinedOutput(); err == nil {
			t.Errorf("hack/images %s succeeded:\n%s", strings.Join(args, " "), b)
		}
		if _, err := os.Stat(out); err == nil {
			t.Errorf("hack/images %s wrote %s although it failed", strings.Join(args, " "), out)
		}
	}
}
