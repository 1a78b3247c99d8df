package sandbox

import (
	"archive/tar"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/weftmesh/weft/sidecar/sidecartest/poll"
	"github.com/weftmesh/weft/testenv"
)

// TestImageContainerRuns pushes an image (a probe program, /etc/passwd naming its user) to
// the registry weft dev serves, and runs a pod of it through the node agent's pod runtime
// in a real network namespace: the container runs from the image's root (the host's files
// are not there), as the image's named user with no supplementary groups, in the image's
// working dir, with the image's entrypoint and the container's args, the image's env under
// the pod's, the pod's resolv.conf, /dev/null, an emptyDir volume, a read-only root, in the
// pod's network namespace.
func TestImageContainerRuns(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Missing(t, "needs root: the pod runs in its own network and mount namespaces")
	}
	for _, prog := range []string{"ip", "nsenter", "mount"} {
		if _, err := exec.LookPath(prog); err != nil {
			testenv.Missing(t, fmt.Sprintf("needs %s: %v", prog, err))
		}
	}
	base := t.TempDir()
	probe := filepath.Join(base, "probe")
	build := exec.Command("go", "build", "-o", probe, "./testdata/imageprobe")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the probe: %v\n%s", err, out)
	}
	bin, err := os.ReadFile(probe)
	if err != nil {
		t.Fatal(err)
	}
	img := testImage(t, layerTar(t,
		tentry{name: "bin/", typ: tar.TypeDir, mode: 0o755},
		tentry{name: "bin/probe", body: string(bin), mode: 0o755},
		tentry{name: "etc/passwd", body: "root:x:0:0::/:/x\nprobeuser:x:4242:4243::/:/x\n"},
		tentry{name: "etc/group", body: "root:x:0:\nprobegroup:x:4243:\n"},
		tentry{name: "work/", typ: tar.TypeDir, mode: 0o755}))
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.Config = v1.Config{Entrypoint: []string{"/bin/probe"}, Cmd: []string{"--from-cmd"}, User: "probeuser",
		WorkingDir: "/work", Env: []string{"PATH=/bin", "FROM_IMAGE=image", "POD_VAR=image"}}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := ServeRegistry("127.0.0.1:0", filepath.Join(base, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	ref := reg.Addr + "/weftmesh/probe:v1"
	push(t, ref, img)

	ns := "images-sb-" + strconv.Itoa(os.Getpid()%100000)
	_ = exec.Command("ip", "netns", "del", ns).Run()
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	// Not weft-*: a local mesh started meanwhile would remove it. So removeNetnsEtc (which
	// keeps to weft-* names) does not apply; the directory goes here.
	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "del", ns).Run()
		_ = os.RemoveAll(filepath.Join(netnsEtc, ns))
	})
	if err := writeNetnsResolvConf(ns, "nameserver 10.96.0.10\nsearch probe.svc.cluster.local\n"); err != nil {
		t.Fatal(err)
	}

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "probe", UID: "u1"},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Volumes:       []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
			Containers: []corev1.Container{{Name: "probe", Image: ref, Args: []string{"--from-args", "$(POD_NAME)"},
				Env:             []corev1.EnvVar{{Name: "POD_VAR", Value: "pod"}},
				VolumeMounts:    []corev1.VolumeMount{{Name: "data", MountPath: "/data"}},
				SecurityContext: &corev1.SecurityContext{ReadOnlyRootFilesystem: ptr.To(true), RunAsNonRoot: ptr.To(true)}}},
		},
	}
	images := NewImages(filepath.Join(base, "nobin"))
	images.Store = &ImageStore{Dir: filepath.Join(base, "images")}
	images.PullFrom = []string{reg.Addr}
	a := &Agent{opts: AgentOptions{StateDir: base}, images: images, log: logr.Discard(), hostIP: "10.0.0.1"}
	ctx, cancel := context.WithCancel(context.Background())
	r := &podRuntime{a: a, pod: pod, net: &PodNet{Netns: ns, IP: netip.MustParseAddr("10.251.0.2")}, started: time.Now(),
		changed: make(chan struct{}, 1), finished: make(chan struct{}), ctx: ctx, cancel: cancel}
	r.start()
	t.Cleanup(func() { r.stop(5 * time.Second) }) // before the netns goes (cleanups run last first)
	podDir := filepath.Join(base, "pods", "default_probe")
	result := filepath.Join(podDir, "volumes", "data", "result.json")
	var exit *corev1.ContainerStateTerminated
	poll.Until(t, 20*time.Second, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		exit = r.containers[0].lastExit
		return exit != nil
	}, "the probe never finished")
	if exit.ExitCode != 0 {
		t.Fatalf("probe exited %d; log:\n%s", exit.ExitCode, tail(filepath.Join(podDir, "probe.log"), 2000))
	}
	b, err := os.ReadFile(result)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		UID, GID, Groups int
		Cwd              string
		Args             []string
		FromImage        string `json:"FROM_IMAGE"`
		PodVar           string `json:"POD_VAR"`
		Path             string `json:"PATH"`
		Resolv           string
		NetnsIno         uint64 `json:"netns_ino"`
		RootWrite        string `json:"root_write"`
		DevNullWrite     string `json:"devnull_write"`
		HostVisible      bool   `json:"host_visible"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	var nsst syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+ns, &nsst); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what     string
		ok       bool
		got, exp any
	}{
		{"user", got.UID == 4242 && got.GID == 4243 && got.Groups == 0, []int{got.UID, got.GID, got.Groups}, "4242 4243, no groups"},
		{"working dir", got.Cwd == "/work", got.Cwd, "/work"},
		{"args (entrypoint + container args, cmd dropped, $(POD_NAME) expanded)", strings.Join(got.Args, " ") == "--from-args probe", got.Args, "--from-args probe"},
		{"env", got.FromImage == "image" && got.PodVar == "pod" && got.Path == "/bin", []string{got.FromImage, got.PodVar, got.Path}, "image pod /bin"},
		{"resolv.conf", strings.Contains(got.Resolv, "search probe.svc.cluster.local"), got.Resolv, "the pod's"},
		{"network namespace", got.NetnsIno == nsst.Ino, got.NetnsIno, nsst.Ino},
		{"read-only root", strings.Contains(got.RootWrite, "read-only"), got.RootWrite, "a read-only file system error"},
		{"/dev/null", got.DevNullWrite == "", got.DevNullWrite, "writable"},
		{"host files hidden", !got.HostVisible, got.HostVisible, false},
	} {
		if !c.ok {
			t.Errorf("%s: got %v, want %v", c.what, c.got, c.exp)
		}
	}
	r.stop(5 * time.Second)
	r.removeRoots()
	if _, err := os.Stat(filepath.Join(podDir, "roots")); !os.IsNotExist(err) {
		t.Errorf("container roots left after the pod stopped: %v", err)
	}
	if _, err := os.Stat("/dev/null"); err != nil {
		t.Fatalf("/dev/null is gone from the host: %v", err)
	}
}

// TestSafeTargetRefusesSymlinks: an image that plants a symlink where a mount goes (/proc
// -> /etc, or a parent of a volume's mountPath) makes the container fail to start rather
// than have mount(8) follow the link on the host.
func TestSafeTargetRefusesSymlinks(t *testing.T) {
	root := t.TempDir()
	must(t, os.Symlink("/etc", filepath.Join(root, "proc")))
	must(t, os.MkdirAll(filepath.Join(root, "var"), 0o755))
	must(t, os.Symlink("../../../../tmp", filepath.Join(root, "var", "lib")))
	must(t, os.WriteFile(filepath.Join(root, "file"), nil, 0o644))
	for p, want := range map[string]string{
		"/proc":              "symlink",
		"/var/lib/weft/nats": "symlink",
		"/file/sub":          "not a directory",
		"/a/../../etc":       "climbs",
		"relative":           "absolute",
	} {
		if _, err := safeTarget(root, p, false); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("safeTarget(%q) = %v, want an error saying %q", p, err, want)
		}
	}
	got, err := safeTarget(root, "/var/run/x", true)
	if err != nil || got != filepath.Join(root, "var/run/x") {
		t.Errorf("safeTarget(/var/run/x) = %q, %v", got, err)
	}
	if fi, err := os.Lstat(got); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("file target not created: %v %v", fi, err)
	}
}

func TestContainerArgv(t *testing.T) {
	cfg := v1.Config{Entrypoint: []string{"/ep"}, Cmd: []string{"--cmd"}}
	vals := map[string]string{"X": "x"}
	for _, c := range []struct {
		command, args []string
		want          string
	}{
		{nil, nil, "/ep --cmd"},
		{nil, []string{"--a=$(X)"}, "/ep --a=x"},
		{[]string{"/other"}, nil, "/other"},
		{[]string{"/other", "$(X)"}, []string{"--b", "$$(X)"}, "/other x --b $(X)"},
	} {
		got := containerArgv(cfg, &corev1.Container{Command: c.command, Args: c.args}, vals)
		if strings.Join(got, " ") != c.want {
			t.Errorf("command %q args %q: argv %q, want %q", c.command, c.args, got, c.want)
		}
	}
	env := imageEnv([]string{"PATH=/", "A=image", "B=image"}, []string{"A=pod", "C=pod"})
	if strings.Join(env, " ") != "PATH=/ A=pod B=image C=pod" {
		t.Errorf("imageEnv = %q", env)
	}
	if env := imageEnv(nil, []string{"A=1"}); env[len(env)-1] != defaultPath {
		t.Errorf("no PATH in the image: %q, want %s added", env, defaultPath)
	}
}
