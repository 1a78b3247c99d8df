package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftmesh/weft/internal/capture"
	"github.com/weftmesh/weft/internal/image"
	"github.com/weftmesh/weft/internal/workload"
	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
	"github.com/weftmesh/weft/testenv"
)

// TestWeftInitImageInstallsRules builds the weft-init image as hack/images does — weft-init
// on the iptables layer copied from this host (image.IptablesLayer) — pushes it to weft
// dev's registry and runs the capture init container the injector renders
// (workload.CaptureInitContainer) through the node agent in a real network namespace. Inside
// its root there is nothing of the host's: iptables-restore, its libraries and modules come
// from the image. The pod's nat table must then hold the capture rules.
func TestWeftInitImageInstallsRules(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root: the pod runs in its own network and mount namespaces")
	}
	for _, prog := range []string{"ip", "nsenter", "mount", "iptables-save"} {
		if _, err := exec.LookPath(prog); err != nil {
			testenv.Missing(t, fmt.Sprintf("needs %s: %v", prog, err))
		}
	}
	base := t.TempDir()
	host := image.Platform{OS: "linux", Arch: runtime.GOARCH}
	created := time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)
	ipt, _, err := image.IptablesLayer(host, created)
	if errors.Is(err, image.ErrNoIptables) {
		testenv.Missing(t, err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "weft-init")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, "../../cmd/weft-init")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building weft-init: %v\n%s", err, out)
	}
	prog, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	img, err := image.Image(image.Spec{Name: "weft-init", Title: "test", Binary: "/weft-init", User: image.User{Name: "root"},
		Base: map[image.Platform][]byte{host: ipt}},
		image.Meta{Version: "test", Created: created}, host, prog)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := ServeRegistry("127.0.0.1:0", filepath.Join(base, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	ref := reg.Addr + "/weftmesh/weft-init:test"
	push(t, ref, img)

	ns := "images-wi-" + strconv.Itoa(os.Getpid()%100000)
	_ = exec.Command("ip", "netns", "del", ns).Run()
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "captured", UID: "u2"},
		Spec: corev1.PodSpec{
			RestartPolicy:  corev1.RestartPolicyNever,
			InitContainers: []corev1.Container{workload.CaptureInitContainer(ref, capture.Default())},
		},
	}
	images := NewImages(filepath.Join(base, "nobin"))
	images.Store = &ImageStore{Dir: filepath.Join(base, "images")}
	images.PullFrom = []string{reg.Addr}
	a := &Agent{opts: AgentOptions{StateDir: base}, images: images, log: logr.Discard(), hostIP: "10.0.0.1"}
	ctx, cancel := context.WithCancel(context.Background())
	r := &podRuntime{a: a, pod: pod, net: &PodNet{Netns: ns, IP: netip.MustParseAddr("10.251.0.3")}, started: time.Now(),
		changed: make(chan struct{}, 1), finished: make(chan struct{}), ctx: ctx, cancel: cancel}
	r.start()
	defer r.stop(5 * time.Second)
	logPath := filepath.Join(base, "pods", "default_captured", workload.CaptureInitContainerName+".log")
	var exit *corev1.ContainerStateTerminated
	var waiting string
	poll.Until(t, 60*time.Second, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		exit, waiting = r.containers[0].lastExit, r.containers[0].message
		return exit != nil || strings.Contains(waiting, "Err")
	}, "weft-init never ran")
	if exit == nil || exit.ExitCode != 0 {
		t.Fatalf("weft-init: exit %+v, waiting %q; log:\n%s", exit, waiting, tail(logPath, 3000))
	}
	out, err := exec.Command("ip", "netns", "exec", ns, "iptables-save", "-t", "nat").CombinedOutput()
	if err != nil {
		t.Fatalf("iptables-save in %s: %v %s", ns, err, out)
	}
	for _, want := range []string{"-A OUTPUT -p tcp -j WEFT_OUTPUT", "-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
		"-m owner --uid-owner 1337 -j RETURN", "-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the pod's nat table lacks %q:\n%s", want, out)
		}
	}
	// weft-init ran the image's iptables: its log shows the table it read back.
	if l := tail(logPath, 3000); !strings.Contains(l, "WEFT_OUTPUT") {
		t.Errorf("weft-init's log does not show the installed table:\n%s", l)
	}
}
