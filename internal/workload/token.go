package workload

import (
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/weftmesh/weft/contract"
)

// AddXDSCredentials gives the sidecar container named sidecar what it authenticates to the
// control plane with (docs/zero-trust.md): one projected volume, mounted read-only at
// contract.TokenDir, holding
//   - a ServiceAccount token for audience contract.TokenAudience, bound to the pod and
//     rotated by the kubelet (expirationSeconds contract.TokenExpirationSeconds), and
//   - the control plane's CA bundle, written by the downward API from the pod annotation
//     contract.AnnotationXDSCA (the CA is public, and an annotation needs no ConfigMap in
//     every namespace).
//
// A pod without a serviceAccountName is given "default", which the ServiceAccount admission
// plugin would set anyway: the API server refuses a serviceAccountToken projection on a pod
// that names none (and the local mesh's API server runs without that plugin).
//
// With ca empty (a manager run with --xds-insecure) nothing is added: the sidecar then
// finds no CA bundle and speaks plaintext without a token. Calling it twice changes nothing.
func AddXDSCredentials(meta *metav1.ObjectMeta, spec *corev1.PodSpec, sidecar string, ca []byte) {
	if len(ca) == 0 {
		return
	}
	if meta.Annotations == nil {
		meta.Annotations = map[string]string{}
	}
	meta.Annotations[contract.AnnotationXDSCA] = string(ca)
	if spec.ServiceAccountName == "" {
		spec.ServiceAccountName = "default"
	}
	if !slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == contract.TokenVolumeName }) {
		spec.Volumes = append(spec.Volumes, XDSCredentialsVolume())
	}
	for _, cs := range []([]corev1.Container){spec.InitContainers, spec.Containers} {
		for i := range cs {
			c := &cs[i]
			if c.Name != sidecar || slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == contract.TokenVolumeName }) {
				continue
			}
			c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: contract.TokenVolumeName, MountPath: contract.TokenDir, ReadOnly: true})
		}
	}
}

// XDSCredentialsVolume is the projected volume AddXDSCredentials mounts.
func XDSCredentialsVolume() corev1.Volume {
	return corev1.Volume{Name: contract.TokenVolumeName, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{
				Audience: contract.TokenAudience, ExpirationSeconds: ptr.To[int64](contract.TokenExpirationSeconds), Path: contract.TokenFile}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{
				Path: contract.CAFile, FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.annotations['" + contract.AnnotationXDSCA + "']"}}}}},
		},
		// Readable by the sidecar's non-root user (the kubelet sets the token file's owner
		// to the container's user when the pod has no fsGroup, as in Kubernetes ≥ 1.22).
		DefaultMode: ptr.To[int32](0o440),
	}}}
}
