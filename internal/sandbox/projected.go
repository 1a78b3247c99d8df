package sandbox

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Projected volumes, as the kubelet writes them: weft dev supports the sources a meshed pod's
// sidecar needs (docs/zero-trust.md) — serviceAccountToken (a bound token from the
// TokenRequest API, rewritten at 80 % of its lifetime as the kubelet does) and downwardAPI
// fields (metadata.name, namespace, uid, labels['k'], annotations['k']). A projected volume
// with any other source (the ServiceAccount admission plugin's kube-api-access volume has a
// configMap) is not materialized, as no volume was before.
//
// Each volume is a directory under the pod's state directory; a container that mounts it
// gets it bind-mounted, read-only, at its mountPath inside the mount namespace
// `ip netns exec` gives the process, so pods never see each other's tokens.

// defaultTokenSeconds is the kubelet's default expirationSeconds of a projected token.
const defaultTokenSeconds = 3600

// supportedProjection reports whether weft dev can write every source of v.
func supportedProjection(v *corev1.Volume) bool {
	p := v.Projected
	if p == nil || len(p.Sources) == 0 {
		return false
	}
	for _, s := range p.Sources {
		switch {
		case s.ServiceAccountToken != nil:
		case s.DownwardAPI != nil:
			for _, it := range s.DownwardAPI.Items {
				if it.FieldRef == nil {
					return false
				}
			}
		default:
			return false
		}
	}
	return true
}

// projectedDir is where projected volume name of the pod is written.
func (r *podRuntime) projectedDir(name string) string {
	return filepath.Join(r.a.opts.StateDir, "pods", r.pod.Namespace+"_"+r.pod.Name, "volumes", name)
}

// prepareVolumes writes the pod's supported projected volumes before any container starts
// and keeps their tokens fresh until the pod stops.
func (r *podRuntime) prepareVolumes(ctx context.Context) error {
	for i := range r.pod.Spec.Volumes {
		v := &r.pod.Spec.Volumes[i]
		if !supportedProjection(v) {
			continue
		}
		dir := r.projectedDir(v.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		refresh, err := r.writeProjection(ctx, dir, v.Projected)
		if err != nil {
			// The ServiceAccount may not exist yet (a namespace created a moment ago):
			// keep trying, as the kubelet does, while the containers start without it.
			r.a.log.Error(err, "writing a projected volume; retrying", "pod", r.key(), "volume", v.Name)
			refresh = time.Second
		}
		if refresh > 0 {
			r.wg.Add(1)
			go r.refreshProjection(dir, v, refresh)
		}
	}
	return nil
}

// writeProjection writes every source of p into dir and returns when its tokens want
// rewriting (0: no token).
func (r *podRuntime) writeProjection(ctx context.Context, dir string, p *corev1.ProjectedVolumeSource) (time.Duration, error) {
	var refresh time.Duration
	for _, s := range p.Sources {
		switch {
		case s.ServiceAccountToken != nil:
			tok, ttl, err := r.requestToken(ctx, s.ServiceAccountToken)
			if err != nil {
				return 0, err
			}
			if err := writeAtomic(filepath.Join(dir, s.ServiceAccountToken.Path), []byte(tok)); err != nil {
				return 0, err
			}
			if d := ttl * 8 / 10; refresh == 0 || d < refresh {
				refresh = d
			}
		case s.DownwardAPI != nil:
			for _, it := range s.DownwardAPI.Items {
				val, err := fieldValue(r.pod, it.FieldRef.FieldPath, r.net.IP.String(), r.a.hostIP)
				if err != nil {
					return 0, err
				}
				if err := writeAtomic(filepath.Join(dir, it.Path), []byte(val)); err != nil {
					return 0, err
				}
			}
		}
	}
	return refresh, nil
}

// requestToken asks the API server for a token of the pod's ServiceAccount bound to the
// pod, as the kubelet does for a serviceAccountToken projection.
func (r *podRuntime) requestToken(ctx context.Context, p *corev1.ServiceAccountTokenProjection) (string, time.Duration, error) {
	sa := r.pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	secs := int64(defaultTokenSeconds)
	if p.ExpirationSeconds != nil {
		secs = *p.ExpirationSeconds
	}
	spec := authnv1.TokenRequestSpec{ExpirationSeconds: &secs,
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: r.pod.Name, UID: r.pod.UID}}
	if p.Audience != "" {
		spec.Audiences = []string{p.Audience}
	}
	tr, err := r.a.cs.CoreV1().ServiceAccounts(r.pod.Namespace).CreateToken(ctx, sa, &authnv1.TokenRequest{Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		return "", 0, fmt.Errorf("requesting a token of ServiceAccount %s/%s: %w", r.pod.Namespace, sa, err)
	}
	ttl := time.Until(tr.Status.ExpirationTimestamp.Time)
	if ttl <= 0 {
		ttl = time.Duration(secs) * time.Second
	}
	return tr.Status.Token, ttl, nil
}

// refreshProjection rewrites a volume's tokens at 80 % of their lifetime until the pod
// stops; a failed request is retried after 10 s while the old token still holds.
func (r *podRuntime) refreshProjection(dir string, v *corev1.Volume, every time.Duration) {
	defer r.wg.Done()
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-time.After(every):
		}
		next, err := r.writeProjection(r.ctx, dir, v.Projected)
		if err != nil {
			r.a.log.Error(err, "refreshing a projected token", "pod", r.key(), "volume", v.Name)
			every = min(2*every, 10*time.Second)
			continue
		}
		every = next
	}
}

// mountPrefix is the command that bind-mounts the container's supported volumes at their
// mountPaths (inside the process's own mount namespace) and then runs the rest of the
// command line; nil when the container mounts none.
func (r *podRuntime) mountPrefix(c *corev1.Container) []string {
	var script []string
	var args []string
	for _, m := range c.VolumeMounts {
		i := -1
		for j := range r.pod.Spec.Volumes {
			if r.pod.Spec.Volumes[j].Name == m.Name && supportedProjection(&r.pod.Spec.Volumes[j]) {
				i = j
			}
		}
		if i < 0 {
			continue
		}
		n := len(args)
		args = append(args, r.projectedDir(m.Name), m.MountPath)
		script = append(script, fmt.Sprintf(`mkdir -p "$%d" && mount --bind "$%d" "$%d" && mount -o remount,bind,ro "$%d"`, n+2, n+1, n+2, n+2))
	}
	if len(script) == 0 {
		return nil
	}
	// sh -ec 'mounts; shift N; exec "$@"' sh src1 dst1 ... prog args...
	s := strings.Join(script, " && ") + fmt.Sprintf(` && shift %d && exec "$@"`, len(args))
	return append([]string{"sh", "-ec", s, "sh"}, args...)
}

// writeAtomic replaces path's content in one rename, as the kubelet's atomic writer does,
// so a reader never sees half a token.
func writeAtomic(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
