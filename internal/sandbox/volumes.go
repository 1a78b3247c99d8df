package sandbox

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The volumes a container that runs from its image sees (rootfs.go). Each is a host
// directory under the pod's state dir (<state>/pods/<ns>_<pod>/volumes/<name>), filled when
// a container first mounts it and bind-mounted at its mountPath:
//   - emptyDir: an empty directory, mode 0777 as the kubelet makes it;
//   - configMap, secret: one file per key (or per items entry), defaultMode or 0644;
//   - projected: serviceAccountToken (a TokenRequest bound to the pod), configMap,
//     secret and downwardAPI (metadata fields) sources — what the ServiceAccount admission
//     plugin adds as kube-api-access-*, so in-cluster clients find their token and CA.
// Contents are written once: a token is not refreshed (tokens last an hour, a local run
// less), a changed ConfigMap is not propagated. Other sources are refused with a message.

// maxVolumeBytes bounds what one configMap/secret/projected volume writes to disk.
const maxVolumeBytes = 8 << 20

func (r *podRuntime) volumeMounts(c *corev1.Container) ([]mount, error) {
	var out []mount
	for _, vm := range c.VolumeMounts {
		var vol *corev1.Volume
		for i := range r.pod.Spec.Volumes {
			if r.pod.Spec.Volumes[i].Name == vm.Name {
				vol = &r.pod.Spec.Volumes[i]
			}
		}
		if vol == nil {
			return nil, fmt.Errorf("container %s mounts volume %q, which the pod does not define", c.Name, vm.Name)
		}
		dir, err := r.volumeDir(*vol)
		if err != nil {
			return nil, fmt.Errorf("volume %s of pod %s: %w", vol.Name, r.key(), err)
		}
		src := dir
		if vm.SubPath != "" {
			sub, err := entryName(vm.SubPath)
			if err != nil || sub == "." {
				return nil, fmt.Errorf("volume mount %s: subPath %q must stay inside the volume", vm.Name, vm.SubPath)
			}
			src = filepath.Join(dir, filepath.FromSlash(sub))
		}
		fi, err := os.Lstat(src)
		if err != nil {
			return nil, fmt.Errorf("volume mount %s: %w", vm.Name, err)
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			return nil, fmt.Errorf("volume mount %s: subPath %q is a symlink", vm.Name, vm.SubPath)
		}
		out = append(out, mount{source: src, target: vm.MountPath, readOnly: vm.ReadOnly, file: !fi.IsDir()})
	}
	return out, nil
}

// volumeDir returns the host directory of volume v, creating and filling it the first time.
func (r *podRuntime) volumeDir(v corev1.Volume) (string, error) {
	if supportedProjection(&v) {
		// prepareVolumes (projected.go) wrote it before any container started and keeps
		// its token fresh.
		return r.projectedDir(v.Name), nil
	}
	dir := filepath.Join(r.logDir, "volumes", v.Name)
	if _, err := os.Stat(dir); err == nil {
		return dir, nil
	}
	tmp := dir + ".tmp"
	_ = os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(r.ctx, 30*time.Second)
	defer cancel()
	w := &volumeWriter{dir: tmp}
	var err error
	switch {
	case v.EmptyDir != nil:
		err = os.Chmod(tmp, 0o777)
	case v.ConfigMap != nil:
		err = r.writeConfigMap(ctx, w, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional, mode(v.ConfigMap.DefaultMode))
	case v.Secret != nil:
		err = r.writeSecret(ctx, w, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional, mode(v.Secret.DefaultMode))
	case v.Projected != nil:
		err = r.writeProjected(ctx, w, v.Projected)
	default:
		err = fmt.Errorf("weft dev mounts emptyDir, configMap, secret and projected volumes only")
	}
	if err != nil {
		_ = os.RemoveAll(tmp)
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	return dir, nil
}

func mode(m *int32) os.FileMode {
	if m == nil {
		return 0o644
	}
	return os.FileMode(*m) & os.ModePerm
}

// volumeWriter writes files of one volume, inside its directory, within maxVolumeBytes.
type volumeWriter struct {
	dir   string
	total int
}

func (w *volumeWriter) write(rel string, data []byte, m os.FileMode) error {
	name, err := entryName(rel)
	if err != nil || name == "." || path.IsAbs(rel) {
		return fmt.Errorf("path %q must be relative and stay inside the volume", rel)
	}
	if w.total += len(data); w.total > maxVolumeBytes {
		return fmt.Errorf("more than %d MiB of files", maxVolumeBytes>>20)
	}
	root, err := os.OpenRoot(w.dir)
	if err != nil {
		return err
	}
	defer root.Close()
	if d := path.Dir(name); d != "." {
		if err := root.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := root.WriteFile(name, data, m); err != nil {
		return err
	}
	return root.Chmod(name, m)
}

// writeKeys writes data's keys, or only items (key → path, mode) when given.
func writeKeys(w *volumeWriter, data map[string][]byte, items []corev1.KeyToPath, def os.FileMode, what string) error {
	if len(items) == 0 {
		for k, v := range data {
			if err := w.write(k, v, def); err != nil {
				return err
			}
		}
		return nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			return fmt.Errorf("%s has no key %q", what, it.Key)
		}
		m := def
		if it.Mode != nil {
			m = mode(it.Mode)
		}
		if err := w.write(it.Path, v, m); err != nil {
			return err
		}
	}
	return nil
}

func (r *podRuntime) writeConfigMap(ctx context.Context, w *volumeWriter, name string, items []corev1.KeyToPath, optional *bool, def os.FileMode) error {
	cm, err := r.a.cs.CoreV1().ConfigMaps(r.pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if optional != nil && *optional {
			return nil
		}
		return fmt.Errorf("configMap %s: %w", name, err)
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return writeKeys(w, data, items, def, "configMap "+name)
}

func (r *podRuntime) writeSecret(ctx context.Context, w *volumeWriter, name string, items []corev1.KeyToPath, optional *bool, def os.FileMode) error {
	s, err := r.a.cs.CoreV1().Secrets(r.pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if optional != nil && *optional {
			return nil
		}
		return fmt.Errorf("secret %s: %w", name, err)
	}
	return writeKeys(w, s.Data, items, def, "secret "+name)
}

func (r *podRuntime) writeProjected(ctx context.Context, w *volumeWriter, p *corev1.ProjectedVolumeSource) error {
	def := mode(p.DefaultMode)
	for _, src := range p.Sources {
		var err error
		switch {
		case src.ServiceAccountToken != nil:
			err = r.writeToken(ctx, w, src.ServiceAccountToken, def)
		case src.ConfigMap != nil:
			err = r.writeConfigMap(ctx, w, src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional, def)
		case src.Secret != nil:
			err = r.writeSecret(ctx, w, src.Secret.Name, src.Secret.Items, src.Secret.Optional, def)
		case src.DownwardAPI != nil:
			for _, it := range src.DownwardAPI.Items {
				if it.FieldRef == nil {
					return fmt.Errorf("downwardAPI item %s: weft dev supports fieldRef only", it.Path)
				}
				v, ferr := fieldValue(r.pod, it.FieldRef.FieldPath, r.net.IP.String(), r.a.hostIP)
				if ferr != nil {
					return ferr
				}
				if err = w.write(it.Path, []byte(v), def); err != nil {
					return err
				}
			}
		default:
			err = fmt.Errorf("weft dev projects serviceAccountToken, configMap, secret and downwardAPI sources only")
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// writeToken asks the API server for a token of the pod's ServiceAccount bound to the pod,
// as the kubelet does for a projected serviceAccountToken.
func (r *podRuntime) writeToken(ctx context.Context, w *volumeWriter, t *corev1.ServiceAccountTokenProjection, def os.FileMode) error {
	sa := r.pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: t.ExpirationSeconds,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: r.pod.Name, UID: r.pod.UID},
	}}
	if t.Audience != "" {
		req.Spec.Audiences = []string{t.Audience}
	}
	tr, err := r.a.cs.CoreV1().ServiceAccounts(r.pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("a token for ServiceAccount %s/%s: %w", r.pod.Namespace, sa, err)
	}
	return w.write(strings.TrimPrefix(t.Path, "/"), []byte(tr.Status.Token), def)
}
