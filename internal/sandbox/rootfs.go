package sandbox

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"
)

// How a container runs from its image (docs/local-mesh.md, "Images"): the agent pulls the
// image (pull.go), assembles the container's root from its layers under the pod's state dir
// (<state>/pods/<ns>_<pod>/roots/<container>), and starts
//
//	ip netns exec <pod netns> sh -c '<mounts>; exec nsenter --root=R --wd=R/W [-S uid -G gid] -- argv'
//
// `ip netns exec` puts the process in the pod's network namespace and in a fresh mount
// namespace (ip-netns(8): mounts made there never reach the host, and vanish with the
// process); the host's sh mounts /proc, /dev/{null,zero,random,urandom}, the pod's
// resolv.conf and its volumes into the root, makes the root read-only when the container
// asks (readOnlyRootFilesystem), then nsenter (util-linux) chroots, changes directory,
// drops to the container's user (clearing supplementary groups) and execs the entrypoint,
// found through the image's PATH inside the root. Root without NET_ADMIN-dropping keeps
// the agent's capabilities, which weft-init needs.

// rootDevices are the host devices bound into every container root.
var rootDevices = []string{"null", "zero", "random", "urandom"}

// pullRef is the reference to pull for image, or "" when it maps to a program: image
// itself when its registry is one the agent pulls from, its mirrored name when a mirror
// holds it (a HEAD request, bounded by 5 s: an absent image falls back to the map).
func (im *Images) pullRef(ctx context.Context, image string) string {
	if im.Store == nil {
		return ""
	}
	r, err := name.ParseReference(image)
	if err != nil {
		return ""
	}
	if slices.Contains(im.PullFrom, r.Context().RegistryStr()) {
		return image
	}
	for prefix, mirror := range im.Mirrors {
		rest, ok := strings.CutPrefix(image, prefix+"/")
		if !ok {
			continue
		}
		mr, err := name.ParseReference(mirror + "/" + rest)
		if err != nil {
			return ""
		}
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = remote.Head(mr, append([]remote.Option{remote.WithContext(hctx)}, im.Store.Options...)...)
		cancel()
		if err == nil {
			return mr.String()
		}
	}
	return ""
}

// command builds the process of container c: from its image when the agent pulls it,
// else the program the image map names (images.go).
func (r *podRuntime) command(c *corev1.Container) (*exec.Cmd, error) {
	if ref := r.a.images.pullRef(r.ctx, c.Image); ref != "" {
		return r.imageCommand(c, ref)
	}
	prog, err := r.a.images.program(c)
	if err != nil {
		return nil, errImage{err}
	}
	user, err := userPrefix(r.pod, c)
	if err != nil {
		return nil, err
	}
	env, err := r.env(c)
	if err != nil {
		return nil, err
	}
	vals := envMap(env)
	var args []string
	if len(c.Command) > 1 {
		args = append(args, c.Command[1:]...) // command[0] is the image's program here
	}
	args = append(args, c.Args...)
	for i := range args {
		args[i] = expand(args[i], vals)
	}
	cmd := exec.Command("ip", slices.Concat([]string{"netns", "exec", r.net.Netns}, r.mountPrefix(c), user, []string{prog}, args)...)
	cmd.Env = env
	cmd.Dir = r.logDir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd, nil
}

// imageCommand pulls c's image, assembles its root once per pod (a restart reuses it, as
// a container's writable layer would not survive — good enough for a local mesh), and
// returns the command that runs its entrypoint inside.
func (r *podRuntime) imageCommand(c *corev1.Container, ref string) (*exec.Cmd, error) {
	img, err := r.a.images.Store.Pull(r.ctx, ref)
	if err != nil {
		return nil, errImage{err}
	}
	rootDir := filepath.Join(r.logDir, "roots", c.Name)
	if _, err := os.Stat(rootDir); err != nil {
		tmp := rootDir + ".tmp"
		_ = os.RemoveAll(tmp)
		if err := img.Unpacked(tmp); err != nil {
			_ = os.RemoveAll(tmp)
			return nil, errImage{err}
		}
		if err := os.Rename(tmp, rootDir); err != nil {
			return nil, err
		}
	}
	env, err := containerEnv(r.pod, c, r.net.IP.String(), r.a.hostIP, masterServiceEnv(r.a.opts.APIService))
	if err != nil {
		return nil, err
	}
	env = imageEnv(img.Config.Env, env)
	env = append(env, EnvMarker+"="+r.a.opts.StateDir)
	argv := containerArgv(img.Config, c, envMap(env))
	if len(argv) == 0 {
		return nil, fmt.Errorf("container %s: image %s has no entrypoint or cmd and the container no command", c.Name, c.Image)
	}
	uid, gid, err := containerUser(r.pod, c, img.Config, rootDir)
	if err != nil {
		return nil, err
	}
	mounts, err := r.volumeMounts(c)
	if err != nil {
		return nil, err
	}
	wd := c.WorkingDir
	if wd == "" {
		wd = img.Config.WorkingDir
	}
	// The host's tools by absolute path: `ip netns exec` and sh look names up in the
	// environment's PATH, which is the image's from here on.
	var tools hostTools
	for _, t := range []struct {
		name string
		dst  *string
	}{{"sh", &tools.sh}, {"mount", &tools.mount}, {"nsenter", &tools.nsenter}} {
		if *t.dst, err = exec.LookPath(t.name); err != nil {
			return nil, fmt.Errorf("container %s runs from its image and weft dev needs %s (util-linux) for that: %w", c.Name, t.name, err)
		}
	}
	script, err := rootScript(tools, rootDir, wd, mounts, readOnlyRoot(c), uid, gid)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", c.Name, err)
	}
	cmd := exec.Command("ip", slices.Concat([]string{"netns", "exec", r.net.Netns, tools.sh, "-c", script, "weft-container"}, argv)...)
	cmd.Env = env
	cmd.Dir = r.logDir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd, nil
}

// containerArgv is the kubelet's rule: command replaces the image's entrypoint (and drops
// its cmd), args replace its cmd; $(VAR) references expand from the container's env.
func containerArgv(cfg v1.Config, c *corev1.Container, vals map[string]string) []string {
	var argv []string
	switch {
	case len(c.Command) > 0:
		argv = append(argv, c.Command...)
		argv = append(argv, c.Args...)
	case len(c.Args) > 0:
		argv = append(argv, cfg.Entrypoint...)
		argv = append(argv, c.Args...)
	default:
		argv = append(argv, cfg.Entrypoint...)
		argv = append(argv, cfg.Cmd...)
	}
	for i := range argv {
		argv[i] = expand(argv[i], vals)
	}
	return argv
}

// defaultPath is containerd's PATH for an image that sets none.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// imageEnv puts the image's env first and the container's over it, as the kubelet does.
func imageEnv(image, container []string) []string {
	set := map[string]int{}
	var out []string
	add := func(kv string) {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := set[k]; ok {
			out[i] = kv
			return
		}
		set[k] = len(out)
		out = append(out, kv)
	}
	for _, kv := range image {
		add(kv)
	}
	for _, kv := range container {
		add(kv)
	}
	if _, ok := set["PATH"]; !ok {
		out = append(out, defaultPath)
	}
	return out
}

// containerUser is the uid and gid the container runs as: its securityContext over the
// pod's over the image's USER (numeric, or a name looked up in the root's /etc/passwd and
// /etc/group). runAsNonRoot refuses uid 0, as the kubelet does.
func containerUser(pod *corev1.Pod, c *corev1.Container, cfg v1.Config, rootDir string) (int64, int64, error) {
	var uid, gid *int64
	nonRoot := false
	if psc := pod.Spec.SecurityContext; psc != nil {
		uid, gid = psc.RunAsUser, psc.RunAsGroup
		nonRoot = psc.RunAsNonRoot != nil && *psc.RunAsNonRoot
	}
	if sc := c.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			uid = sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			gid = sc.RunAsGroup
		}
		if sc.RunAsNonRoot != nil {
			nonRoot = *sc.RunAsNonRoot
		}
	}
	iu, ig, err := imageUser(cfg.User, rootDir)
	if err != nil {
		return 0, 0, fmt.Errorf("container %s: %w", c.Name, err)
	}
	u, g := iu, ig
	if uid != nil {
		u = *uid
	}
	if gid != nil {
		g = *gid
	}
	if u < 0 || g < 0 {
		return 0, 0, fmt.Errorf("container %s: runAsUser %d / runAsGroup %d must not be negative", c.Name, u, g)
	}
	if nonRoot && u == 0 {
		return 0, 0, fmt.Errorf("container %s has runAsNonRoot and its image %s will run as root (uid 0); set runAsUser", c.Name, c.Image)
	}
	return u, g, nil
}

// imageUser reads an image's USER: "", "uid", "uid:gid", "name" or "name:group".
func imageUser(user, rootDir string) (int64, int64, error) {
	if user == "" {
		return 0, 0, nil
	}
	us, gs, hasGroup := strings.Cut(user, ":")
	uid, err := strconv.ParseInt(us, 10, 64)
	gid := int64(0)
	if err != nil {
		f, err := lookupID(filepath.Join(rootDir, "etc", "passwd"), us)
		if err != nil {
			return 0, 0, fmt.Errorf("image user %q: %w", user, err)
		}
		uid, gid = f[0], f[1]
	} else if !hasGroup {
		if f, err := lookupIDByUID(filepath.Join(rootDir, "etc", "passwd"), uid); err == nil {
			gid = f
		}
	}
	if hasGroup {
		if g, err := strconv.ParseInt(gs, 10, 64); err == nil {
			gid = g
		} else {
			f, err := lookupID(filepath.Join(rootDir, "etc", "group"), gs)
			if err != nil {
				return 0, 0, fmt.Errorf("image user %q: %w", user, err)
			}
			gid = f[0]
		}
	}
	return uid, gid, nil
}

// lookupID finds name in a passwd or group file of the root and returns its numeric fields
// (uid and gid for passwd, gid for group).
func lookupID(file, name string) ([2]int64, error) {
	var out [2]int64
	err := scanColon(file, func(f []string) bool {
		if f[0] != name || len(f) < 3 {
			return false
		}
		out[0], _ = strconv.ParseInt(f[2], 10, 64)
		if len(f) > 3 {
			out[1], _ = strconv.ParseInt(f[3], 10, 64)
		}
		return true
	})
	return out, err
}

func lookupIDByUID(file string, uid int64) (int64, error) {
	var gid int64
	err := scanColon(file, func(f []string) bool {
		if len(f) < 4 || f[2] != strconv.FormatInt(uid, 10) {
			return false
		}
		gid, _ = strconv.ParseInt(f[3], 10, 64)
		return true
	})
	return gid, err
}

// scanColon reads a colon-separated file of the image (at most 1 MiB of it) until match
// says it found the line.
func scanColon(file string, match func([]string) bool) error {
	fi, err := os.Lstat(file)
	if err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("the image has no regular file %s", filepath.Base(file))
	}
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(&limitedFile{f: f, left: 1 << 20})
	for sc.Scan() {
		if match(strings.Split(sc.Text(), ":")) {
			return nil
		}
	}
	return errors.New("no such name in the image's " + filepath.Base(file))
}

type limitedFile struct {
	f    *os.File
	left int64
}

func (l *limitedFile) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, errors.New("file longer than 1 MiB")
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.f.Read(p)
	l.left -= int64(n)
	return n, err
}

func readOnlyRoot(c *corev1.Container) bool {
	return c.SecurityContext != nil && c.SecurityContext.ReadOnlyRootFilesystem != nil && *c.SecurityContext.ReadOnlyRootFilesystem
}

// hostTools are the host programs that set a container's root up, by absolute path.
type hostTools struct{ sh, mount, nsenter string }

// mount is a bind mount of a host path into the container's root.
type mount struct {
	source   string // host path
	target   string // absolute path inside the container
	readOnly bool
	file     bool // source is a file, not a directory
}

// rootScript is the sh program that prepares the mount namespace and execs nsenter. Every
// mount target inside the root is created here (in Go) first and checked to pass through
// no symlink: mount(8) follows symlinks on the host, so a link the image planted
// (/proc -> /etc) would otherwise redirect a mount onto a host path.
func rootScript(tools hostTools, rootDir, workDir string, mounts []mount, readOnly bool, uid, gid int64) (string, error) {
	all := []mount{{source: "proc", target: "/proc"}}
	for _, d := range rootDevices {
		all = append(all, mount{source: "/dev/" + d, target: "/dev/" + d, file: true})
	}
	// Whatever resolv.conf `ip netns exec` shows the process (the pod's, from
	// /etc/netns/<netns>/, or the host's when the pod has none).
	all = append(all, mount{source: "/etc/resolv.conf", target: "/etc/resolv.conf", readOnly: true, file: true})
	all = append(all, mounts...)
	var b strings.Builder
	b.WriteString("set -e\n")
	q := shellQuote
	mnt := q(tools.mount)
	if readOnly {
		// A bind of the root onto itself, so it can be remounted read-only below while the
		// mounts on top of it keep their own flags.
		fmt.Fprintf(&b, "%s --bind %s %s\n", mnt, q(rootDir), q(rootDir))
	}
	for _, m := range all {
		target, err := safeTarget(rootDir, m.target, m.file)
		if err != nil {
			return "", err
		}
		if m.source == "proc" {
			fmt.Fprintf(&b, "%s -t proc proc %s\n", mnt, q(target))
			continue
		}
		fmt.Fprintf(&b, "%s --bind %s %s\n", mnt, q(m.source), q(target))
		if m.readOnly {
			fmt.Fprintf(&b, "%s -o remount,bind,ro %s\n", mnt, q(target))
		}
	}
	if readOnly {
		fmt.Fprintf(&b, "%s -o remount,bind,ro %s\n", mnt, q(rootDir))
	}
	if workDir == "" {
		workDir = "/"
	}
	wd, err := safeTarget(rootDir, workDir, false)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(&b, "exec %s --root=%s --wd=%s", q(tools.nsenter), q(rootDir), q(wd))
	if uid != 0 || gid != 0 {
		fmt.Fprintf(&b, " -S %d -G %d", uid, gid)
	}
	b.WriteString(` -- "$@"` + "\n")
	return b.String(), nil
}

// safeTarget creates p (a directory, or an empty file when file) inside rootDir, with its
// parents, refusing any path element that is a symlink or climbs out, and returns its host
// path.
func safeTarget(rootDir, p string, file bool) (string, error) {
	if !path.IsAbs(p) {
		return "", fmt.Errorf("mount path %q must be absolute", p)
	}
	for _, el := range strings.Split(p, "/") {
		if el == ".." {
			return "", fmt.Errorf("mount path %q climbs out of the root", p)
		}
	}
	clean := path.Clean(p)
	cur := rootDir
	els := strings.Split(strings.TrimPrefix(clean, "/"), "/")
	if clean == "/" {
		return rootDir, nil
	}
	for i, el := range els {
		cur = filepath.Join(cur, el)
		last := i == len(els)-1
		fi, err := os.Lstat(cur)
		switch {
		case err == nil && fi.Mode()&os.ModeSymlink != 0:
			return "", fmt.Errorf("mount path %q passes through a symlink of the image (%s); weft dev does not follow it", p, strings.TrimPrefix(cur, rootDir))
		case err == nil && last && file && !fi.Mode().IsRegular() && fi.Mode()&os.ModeCharDevice == 0:
			return "", fmt.Errorf("mount path %q: the image has a directory there, not a file", p)
		case err == nil && !(last && file) && !fi.IsDir():
			return "", fmt.Errorf("mount path %q: the image has a file at %s, not a directory", p, strings.TrimPrefix(cur, rootDir))
		case err == nil:
		case !errors.Is(err, os.ErrNotExist):
			return "", err
		case last && file:
			f, err := os.OpenFile(cur, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
			if err != nil {
				return "", err
			}
			f.Close()
		default:
			if err := os.Mkdir(cur, 0o755); err != nil {
				return "", err
			}
		}
	}
	return cur, nil
}

// shellQuote quotes s for sh: single quotes, with each ' written as '\”.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// removeRoots deletes the pod's container roots once its processes are gone. Mounts live
// in each container's own mount namespace and die with it; should one still show under the
// roots (a process that escaped its group), nothing is removed rather than deleting through
// a bind mount into a volume or /dev.
func (r *podRuntime) removeRoots() {
	if r.logDir == "" {
		return
	}
	roots := filepath.Join(r.logDir, "roots")
	if _, err := os.Stat(roots); err != nil {
		return
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(b), " "+roots+"/") {
		r.a.log.Info("container roots still have mounts; left in place", "pod", r.key(), "dir", roots)
		return
	}
	_ = os.RemoveAll(roots)
}
