package sandbox

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// What the node agent needs for traffic capture (docs/capture.md): run-to-completion init
// containers (weft-init) in the pod's network namespace before its native sidecars, a second
// program in the sidecar image, and containers run as their securityContext's user, so the
// sidecar's traffic is the UID 1337 the capture rules exempt.

// imagePrograms are programs an image holds besides its main one, picked by the base name of
// the container's command[0] and found next to it in the bin dir. The sidecar image carries
// weft-init, the capture init container's program.
var imagePrograms = map[string][]string{
	"ghcr.io/weftmesh/weft-sidecar": {"weft-init"},
}

// program is the executable a container runs: the image's program, or another program of
// the image its command names.
func (im *Images) program(c *corev1.Container) (string, error) {
	if len(c.Command) > 0 {
		name := filepath.Base(c.Command[0])
		if slices.Contains(imagePrograms[Repository(c.Image)], name) {
			prog := filepath.Join(im.BinDir, name)
			if st, err := os.Stat(prog); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
				return "", fmt.Errorf("container %s runs %s of image %s: %s is not an executable file; build it (go build -o %s ./cmd/%s)", c.Name, name, c.Image, prog, prog, name)
			}
			return prog, nil
		}
	}
	return im.Resolve(c.Image)
}

// userPrefix is what goes between `ip netns exec <ns>` and the program so that it runs as
// the container's runAsUser and runAsGroup (the container's securityContext over the pod's).
// ip netns exec must itself run as root, so the switch is setpriv's (util-linux). Unset or
// root runs as root with the agent's capabilities, which covers an init container's
// NET_ADMIN. Without runAsGroup the group is 0, as for an image whose user has no entry.
func userPrefix(pod *corev1.Pod, c *corev1.Container) ([]string, error) {
	var uid, gid *int64
	if psc := pod.Spec.SecurityContext; psc != nil {
		uid, gid = psc.RunAsUser, psc.RunAsGroup
	}
	if sc := c.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			uid = sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			gid = sc.RunAsGroup
		}
	}
	u, g := int64(0), int64(0)
	if uid != nil {
		u = *uid
	}
	if gid != nil {
		g = *gid
	}
	if u == 0 && g == 0 {
		return nil, nil
	}
	if u < 0 || g < 0 {
		return nil, fmt.Errorf("container %s: runAsUser %d / runAsGroup %d must not be negative", c.Name, u, g)
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		return nil, fmt.Errorf("container %s runs as %d:%d and weft dev switches users with setpriv (util-linux), which is not installed: %w", c.Name, u, g, err)
	}
	return []string{"setpriv", "--reuid=" + strconv.FormatInt(u, 10), "--regid=" + strconv.FormatInt(g, 10), "--clear-groups", "--"}, nil
}

// runToCompletion runs a regular init container until it exits 0, restarting it with the
// kubelet's back-off while it fails (restartPolicy Never: once). It reports whether the pod
// may go on to its next container.
func (r *podRuntime) runToCompletion(cs *containerState) bool {
	backoff := newRestartBackoff(containerRestartInitial)
	for {
		started := time.Now()
		err := r.run(cs)
		if r.ctx.Err() != nil {
			return false
		}
		r.mu.Lock()
		if err == nil && cs.lastExit != nil && cs.lastExit.ExitCode == 0 {
			cs.terminated, cs.ready = cs.lastExit, true
			r.mu.Unlock()
			r.notify()
			return true
		}
		delay := backoff.after(time.Since(started))
		if err != nil {
			cs.waiting, cs.message = waitingReason(err), err.Error()
		} else {
			cs.waiting, cs.message = "CrashLoopBackOff", fmt.Sprintf("back-off %s restarting failed init container %s (exit %d; its log is %s)", delay, cs.spec.Name, cs.lastExit.ExitCode, filepath.Join(r.logDir, cs.spec.Name+".log"))
		}
		r.mu.Unlock()
		r.notify()
		if r.pod.Spec.RestartPolicy == corev1.RestartPolicyNever {
			return false
		}
		select {
		case <-r.ctx.Done():
			return false
		case <-time.After(delay):
		}
	}
}
