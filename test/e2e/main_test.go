//go:build e2e

// Package e2e tests Weft end to end on the local mesh (internal/sandbox, as `weft dev` runs
// it): real kube-apiserver and kube-controller-manager, the manager binary, pods running as
// processes with injected sidecars. Run them with hack/e2e.sh (root, the bin/ binaries and
// KUBEBUILDER_ASSETS are needed); `go test ./...` skips them (build tag e2e).
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftmesh/weft/internal/sandbox"
)

// staleNetns, staleRule, stalePID and staleNetnsPID are the leftovers of a "crashed" run
// TestMain plants.
const staleNetns = "weft-e2estale"

// staleRule is a fault a killed test left in the host's iptables (a REJECT of the discard
// port, harmless), marked as the local mesh's as the tests' faults are.
var staleRule = append([]string{"INPUT"}, sandbox.HostRule("-p", "tcp", "--dport", "9", "-j", "REJECT", "--reject-with", "tcp-reset")...)

var stalePID, staleNetnsPID int

var (
	// managerSwitch stops and starts the mesh's host manager (TestInstallManifest runs the
	// manager from dist/install.yaml as a pod meanwhile).
	managerSwitch = &sandbox.ManagerSwitch{}
	root          string
	kubeconfig    string
	cs            kubernetes.Interface
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	if root, err = filepath.Abs(filepath.Join("..", "..")); err != nil {
		panic(err)
	}
	if th, err = loadThresholds(thresholdsFile); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		fmt.Fprintln(os.Stderr, "e2e: KUBEBUILDER_ASSETS is not set; run hack/e2e.sh")
		return 1
	}
	state := os.Getenv("WEFT_E2E_STATE")
	if state == "" {
		state = filepath.Join(os.TempDir(), "weft-e2e")
	}
	// What a crashed run leaves behind: a process carrying the state dir's marker, a pod
	// network namespace with a process in it that does not (as redis-server, which writes
	// its title over its environment) and a fault in the host's iptables. The start below
	// must remove them all (checked in TestStartCleansUpAfterACrash).
	if err := os.MkdirAll(state, 0o755); err != nil {
		panic(err)
	}
	stale := exec.Command("sleep", "600")
	stale.Env = append(os.Environ(), sandbox.EnvMarker+"="+state)
	if err := stale.Start(); err != nil {
		panic(err)
	}
	go func() { _ = stale.Wait() }()
	stalePID = stale.Process.Pid
	if out, err := exec.Command("ip", "netns", "add", staleNetns).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: creating a stale netns: %v: %s\n", err, out)
		return 1
	}
	inNetns := exec.Command("ip", "netns", "exec", staleNetns, "sleep", "600") // ip execs sleep: same pid
	if err := inNetns.Start(); err != nil {
		panic(err)
	}
	go func() { _ = inNetns.Wait() }()
	staleNetnsPID = inNetns.Process.Pid
	if out, err := exec.Command("iptables", append([]string{"-w", "-I"}, staleRule...)...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: planting a stale iptables rule: %v: %s\n", err, out)
		return 1
	}
	// A ready file an earlier run left (one killed by a timeout) would be taken for this
	// run's: the tests would start against a control plane that is going away.
	_ = os.Remove(sandbox.ReadyFile(state))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- sandbox.Run(ctx, sandbox.Options{StateDir: state, BinDir: filepath.Join(root, "bin"), AssetsDir: assets,
			CRDDir: filepath.Join(root, "config", "crd", "bases"), Out: os.Stderr,
			Registry: "127.0.0.1:0", // images_test.go pushes images there
			Manager:  managerSwitch})
	}()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				fmt.Fprintln(os.Stderr, "e2e: local mesh stopped with:", err)
			}
		case <-time.After(3 * time.Minute):
			fmt.Fprintln(os.Stderr, "e2e: local mesh did not stop within 3 minutes")
		}
	}()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		if _, err := os.Stat(sandbox.ReadyFile(state)); err == nil {
			break
		}
		select {
		case err := <-done:
			fmt.Fprintln(os.Stderr, "e2e: local mesh failed to start:", err)
			done <- err
			return 1
		case <-time.After(time.Second):
		}
		if time.Now().After(deadline) {
			fmt.Fprintln(os.Stderr, "e2e: local mesh not ready after 5 minutes")
			return 1
		}
	}
	kubeconfig = sandbox.Kubeconfig(state)
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	cs = kubernetes.NewForConfigOrDie(cfg)
	for _, args := range [][]string{
		{"apply", "-f", "examples/demo/00-namespace.yaml"},
		{"apply", "-k", "config/samples"},
		{"apply", "-f", "examples/demo/"},
	} {
		if out, err := kubectl(args...); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
			return 1
		}
	}
	return m.Run()
}

func kubectl(args ...string) (string, error) {
	cmd := exec.Command("kubectl", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// eventually retries f every second until it returns nil or timeout passes; generous
// timeouts keep it reliable on a loaded machine, and the last error says what was missing.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %s: %v", what, timeout, err)
		}
		time.Sleep(time.Second)
	}
}
