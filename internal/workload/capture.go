package workload

import (
	"errors"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/weftmesh/weft/internal/capture"
)

// Capture init container (docs/capture.md). The sidecar image holds a second program,
// weft-init (cmd/weft-init), on its PATH together with iptables-restore and iptables-save
// (legacy or nft; ip6tables-* too for IPv6): the init container runs that image with
// Command CaptureInitCommand.
const (
	// CaptureInitContainerName is the init container that installs the capture rules.
	CaptureInitContainerName = "weft-init"
	// CaptureInitCommand is its program in the sidecar image.
	CaptureInitCommand = "weft-init"
)

// InterceptionFor is how a pod with these annotations reaches its sidecar, and with
// iptables the capture settings: the pod's weft.dev/interception annotation, else def (empty:
// proxy-env, the behaviour before capture existed). The traffic.weft.dev/* annotations are
// validated in either mode so a typo is refused the day it is written, not the day the
// cluster switches to iptables.
func InterceptionFor(annotations map[string]string, def capture.Interception) (capture.Interception, capture.Config, error) {
	if def == "" {
		def = capture.InterceptionProxyEnv
	}
	mode, modeErr := capture.InterceptionOf(annotations, def)
	cfg, cfgErr := capture.FromAnnotations(annotations)
	if modeErr != nil || cfgErr != nil {
		return "", capture.Config{}, errors.Join(modeErr, cfgErr)
	}
	return mode, cfg, nil
}

// CaptureInitContainer runs weft-init from image with cfg's settings. It is the only
// container of the pod with NET_ADMIN and NET_RAW, and it runs as root because iptables
// needs both; it exits before the sidecar or the app start. The root filesystem stays
// writable because iptables-legacy takes its lock in /run (Istio's istio-init does the same).
func CaptureInitContainer(image string, cfg capture.Config) corev1.Container {
	return corev1.Container{
		Name:    CaptureInitContainerName,
		Image:   image,
		Command: []string{CaptureInitCommand},
		Args:    cfg.Args(),
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                ptr.To[int64](0),
			RunAsGroup:               ptr.To[int64](0),
			RunAsNonRoot:             ptr.To(false),
			Privileged:               ptr.To(false),
			AllowPrivilegeEscalation: ptr.To(false),
			ReadOnlyRootFilesystem:   ptr.To(false),
			Capabilities: &corev1.Capabilities{
				Add:  []corev1.Capability{"NET_ADMIN", "NET_RAW"},
				Drop: []corev1.Capability{"ALL"},
			},
		},
	}
}

// InsertCaptureInit puts init into inits where it runs before the sidecar: just before a
// native sidecar named sidecarName, else last, so the pod's own init containers still run
// before capture starts (with the sidecar as a regular container there is nothing yet to
// carry their traffic).
func InsertCaptureInit(inits []corev1.Container, init corev1.Container, sidecarName string) []corev1.Container {
	i := slices.IndexFunc(inits, func(c corev1.Container) bool { return c.Name == sidecarName })
	if i < 0 {
		i = len(inits)
	}
	return slices.Insert(inits, i, init)
}
