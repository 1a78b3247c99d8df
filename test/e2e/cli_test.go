//go:build e2e

package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// weft runs bin/weft against the local mesh (it finds the manager's debug endpoint on the
// host's loopback, as the local mesh runs the manager as a host process) and returns its
// combined output and exit code.
func weft(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(root, "bin", "weft"), args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatalf("weft %v: %v", args, err)
	return "", -1
}

// The CLI against the running mesh: every demo sidecar SYNCED, a sidecar's clusters and
// routes, secrets never printed, a route described with its subsets, check passing, bad
// input refused with a clear message and exit 1, and the same binary as a kubectl plugin.
func TestWeftCLI(t *testing.T) {
	callerPod := firstPod(t, "app=caller")

	eventually(t, 60*time.Second, "weft proxy-status shows the caller's sidecar SYNCED", func() error {
		out, code := weft(t, "proxy-status")
		if code != 0 {
			return fmt.Errorf("exit %d: %s", code, out)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) < 2 || !strings.Contains(lines[0], "CDS") || !strings.Contains(lines[0], "LDS") {
			return fmt.Errorf("no table with a CDS and an LDS column:\n%s", out)
		}
		for _, l := range lines[1:] {
			if strings.HasPrefix(l, callerPod+".default") || strings.HasPrefix(l, callerPod+" ") {
				if strings.Contains(l, "REJECTED") || strings.Contains(l, "STALE") || !strings.Contains(l, "SYNCED") {
					return fmt.Errorf("caller row not synced: %s", l)
				}
				return nil
			}
		}
		return fmt.Errorf("no row for %s:\n%s", callerPod, out)
	})

	out, code := weft(t, "proxy-config", callerPod, "clusters")
	if code != 0 || !strings.Contains(out, "reviews") {
		t.Errorf("proxy-config %s clusters: exit %d, want a reviews cluster:\n%s", callerPod, code, out)
	}
	out, code = weft(t, "proxy-config", callerPod, "routes")
	if code != 0 || !strings.Contains(out, "reviews") {
		t.Errorf("proxy-config %s routes: exit %d, want reviews' virtual host:\n%s", callerPod, code, out)
	}
	dump, code := weft(t, "config-dump", callerPod)
	if code != 0 || !strings.Contains(dump, "[redacted]") {
		t.Errorf("config-dump %s: exit %d, want secrets shown as [redacted] (the queue token)", callerPod, code)
	}
	for _, secret := range []string{"change-me-clients", "change-me-servers"} {
		if strings.Contains(dump, secret) {
			t.Errorf("config-dump %s prints the Redis password %q", callerPod, secret)
		}
	}

	out, code = weft(t, "describe", "mr/reviews")
	if code != 0 || !strings.Contains(out, "v1") || !strings.Contains(out, "v2") {
		t.Errorf("describe mr/reviews: exit %d, want its subsets v1 and v2:\n%s", code, out)
	}
	out, code = weft(t, "check")
	if code != 0 || !strings.Contains(out, "✔") || strings.Contains(out, "✘") {
		t.Errorf("check: exit %d, want every check passing:\n%s", code, out)
	}

	for _, bad := range [][]string{
		{"proxy-config", "no-such-pod", "clusters"},
		{"describe", "mr/no-such-route"},
		{"describe", "widget/x"},
		{"proxy-config", callerPod, "nonsense"},
	} {
		out, code := weft(t, bad...)
		if code != 1 || !strings.HasPrefix(strings.TrimSpace(out), "weft: ") {
			t.Errorf("weft %v: exit %d, want 1 with a \"weft: ...\" message:\n%s", bad, code, out)
		}
	}

	// Installed as kubectl-weft on PATH, the binary is a kubectl plugin.
	dir := t.TempDir()
	if err := os.Symlink(filepath.Join(root, "bin", "weft"), filepath.Join(dir, "kubectl-weft")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("kubectl", "weft", "proxy-status")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "PATH="+dir+":"+os.Getenv("PATH"))
	b, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(b), callerPod) {
		t.Errorf("kubectl weft proxy-status: %v\n%s", err, b)
	}
}

// firstPod names the first running pod with the label selector in default.
func firstPod(t *testing.T, selector string) string {
	t.Helper()
	var name string
	eventually(t, 120*time.Second, "a running pod "+selector, func() error {
		out, err := kubectl("get", "pods", "-n", "default", "-l", selector, "--field-selector=status.phase=Running",
			"-o", "jsonpath={.items[0].metadata.name}")
		if err != nil || strings.TrimSpace(out) == "" {
			return fmt.Errorf("none yet: %w %s", err, out)
		}
		name = strings.TrimSpace(out)
		return nil
	})
	return name
}
