package sandbox

import (
	"context"
	"fmt"
	"github.com/weftmesh/weft/testenv"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
)

// TestCapturePodStartsInOrder runs a pod shaped like a captured function pod through the node
// agent's pod runtime, in a real network namespace: weft-init (a program of the sidecar
// image, run to completion, failing once to show the restart), then the native sidecar as
// UID/GID 1337, then the app. Each program is a script that records who ran it, where, and
// what had run before it.
func TestCapturePodStartsInOrder(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root: the pod runs in its own network namespace")
	}
	for _, prog := range []string{"ip", "setpriv"} {
		if _, err := exec.LookPath(prog); err != nil {
			testenv.Missing(t, fmt.Sprintf("needs %s: %v", prog, err))
		}
	}
	ns := "iptables-sb-" + strconv.Itoa(os.Getpid()%100000)
	_ = exec.Command("ip", "netns", "del", ns).Run()
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })

	// The bin dir and the record dir must be reachable by UID 1337.
	base := t.TempDir()
	bin, rec := filepath.Join(base, "bin"), filepath.Join(base, "rec")
	for _, d := range []string{bin, rec} {
		if err := os.MkdirAll(d, 0o777); err != nil {
			t.Fatal(err)
		}
		_ = os.Chmod(d, 0o777)
	}
	for _, d := range []string{base, filepath.Dir(base)} {
		_ = os.Chmod(d, 0o755)
	}
	script := func(name, body string) {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\nR="+rec+"\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	who := `"$(id -u):$(id -g) $(ip netns identify $$)"`
	script("weft-init", `[ -e $R/init-failed ] || { touch $R/init-failed; echo "first run fails" >&2; exit 3; }
echo `+who+` "$*" > $R/init
`)
	script("sidecar", `[ -e $R/init ] || exit 9
echo `+who+` > $R/sidecar
exec sleep 60
`)
	script("app", `[ -e $R/sidecar ] || exit 9
echo `+who+` > $R/app
exec sleep 60
`)

	image := "ghcr.io/weftmesh/weft-sidecar:test"
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "captured"},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{
				{Name: "weft-init", Image: image, Command: []string{"weft-init"}, Args: []string{"--outbound-port=15001"},
					SecurityContext: &corev1.SecurityContext{RunAsUser: ptr.To[int64](0)}},
				{Name: "weft-sidecar", Image: image, RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways),
					SecurityContext: &corev1.SecurityContext{RunAsUser: ptr.To[int64](1337), RunAsGroup: ptr.To[int64](1337)}},
			},
			Containers: []corev1.Container{{Name: "app", Image: "test/app"}},
		},
	}
	images := NewImages(bin)
	images.Map["test/app"] = "app"
	a := &Agent{opts: AgentOptions{StateDir: base}, images: images, log: logr.Discard(), hostIP: "10.0.0.1"}
	ctx, cancel := context.WithCancel(context.Background())
	r := &podRuntime{a: a, pod: pod, net: &PodNet{Netns: ns, IP: netip.MustParseAddr("10.251.0.2")}, started: time.Now(),
		changed: make(chan struct{}, 1), finished: make(chan struct{}), ctx: ctx, cancel: cancel}
	r.start()
	t.Cleanup(func() { r.stop(5 * time.Second) })

	// While weft-init fails the pod is not initialized and nothing else runs.
	poll.Until(t, 10*time.Second, func() bool {
		st := r.status(corev1.PodStatus{})
		w := st.InitContainerStatuses[0].State.Waiting
		return w != nil && w.Reason == "CrashLoopBackOff"
	}, "weft-init's first failure never showed as CrashLoopBackOff")
	if st := r.status(corev1.PodStatus{}); condition(st, corev1.PodInitialized) != corev1.ConditionFalse || st.ContainerStatuses[0].State.Running != nil {
		t.Fatalf("pod initialized or app running while weft-init fails: %+v", st)
	}

	poll.Until(t, 20*time.Second, func() bool { _, err := os.Stat(filepath.Join(rec, "app")); return err == nil },
		"the app never started; logs in %s", filepath.Join(base, "pods"))
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(rec, name))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	for name, want := range map[string]string{
		"init":    "0:0 " + ns + " --outbound-port=15001",
		"sidecar": "1337:1337 " + ns,
		"app":     "0:0 " + ns,
	} {
		if got := read(name); got != want {
			t.Errorf("%s ran as %q, want %q", name, got, want)
		}
	}
	st := r.status(corev1.PodStatus{})
	init := st.InitContainerStatuses[0]
	if term := init.State.Terminated; term == nil || term.ExitCode != 0 || !init.Ready || init.RestartCount != 1 {
		t.Errorf("weft-init status %+v, want terminated with exit 0, ready, one restart", init)
	}
	if len(st.InitContainerStatuses) != 2 || st.InitContainerStatuses[1].State.Running == nil || len(st.ContainerStatuses) != 1 {
		t.Errorf("statuses: init %+v containers %+v, want the sidecar among the init containers, running", st.InitContainerStatuses, st.ContainerStatuses)
	}
	if condition(st, corev1.PodInitialized) != corev1.ConditionTrue {
		t.Errorf("Initialized = %s once weft-init completed and the sidecar runs", condition(st, corev1.PodInitialized))
	}
}

func TestUserPrefix(t *testing.T) {
	pod := &corev1.Pod{Spec: corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](1000)}}}
	for _, tc := range []struct {
		sc   *corev1.SecurityContext
		want string
	}{
		{nil, "setpriv --reuid=1000 --regid=0 --clear-groups --"},
		{&corev1.SecurityContext{RunAsUser: ptr.To[int64](0)}, ""},
		{&corev1.SecurityContext{RunAsUser: ptr.To[int64](1337), RunAsGroup: ptr.To[int64](1337)}, "setpriv --reuid=1337 --regid=1337 --clear-groups --"},
	} {
		got, err := userPrefix(pod, &corev1.Container{Name: "c", SecurityContext: tc.sc})
		if err != nil || strings.Join(got, " ") != tc.want {
			t.Errorf("userPrefix(%+v) = %q, %v; want %q", tc.sc, got, err, tc.want)
		}
	}
	if got, _ := userPrefix(&corev1.Pod{}, &corev1.Container{}); got != nil {
		t.Errorf("no securityContext: %q, want to run as root", got)
	}
}

func condition(st corev1.PodStatus, ct corev1.PodConditionType) corev1.ConditionStatus {
	for _, c := range st.Conditions {
		if c.Type == ct {
			return c.Status
		}
	}
	return ""
}
