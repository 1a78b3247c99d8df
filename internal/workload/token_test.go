package workload

import (
	"testing"

	corev1 "k8s.io/api/core/v1"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
)

const testCA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

// checkXDSCredentials asserts what a sidecar needs to authenticate to the control plane:
// the projected token (audience weft, one hour, bound by the kubelet to the pod), the CA
// bundle from the pod annotation, both mounted read-only at contract.TokenDir in the
// sidecar and in no other container.
func checkXDSCredentials(t *testing.T, tmpl *corev1.PodTemplateSpec) {
	t.Helper()
	if got := tmpl.Annotations[contract.AnnotationXDSCA]; got != testCA {
		t.Errorf("annotation %s = %q, want the CA bundle", contract.AnnotationXDSCA, got)
	}
	if tmpl.Spec.ServiceAccountName == "" {
		t.Error("no serviceAccountName: the API server refuses a serviceAccountToken projection without one")
	}
	var vol *corev1.Volume
	for i := range tmpl.Spec.Volumes {
		if tmpl.Spec.Volumes[i].Name == contract.TokenVolumeName {
			if vol != nil {
				t.Fatal("the token volume is there twice")
			}
			vol = &tmpl.Spec.Volumes[i]
		}
	}
	if vol == nil || vol.Projected == nil || len(vol.Projected.Sources) != 2 {
		t.Fatalf("no projected token volume: %+v", tmpl.Spec.Volumes)
	}
	tok, ca := vol.Projected.Sources[0].ServiceAccountToken, vol.Projected.Sources[1].DownwardAPI
	if tok == nil || tok.Audience != contract.TokenAudience || tok.ExpirationSeconds == nil || *tok.ExpirationSeconds != 3600 || tok.Path != contract.TokenFile {
		t.Errorf("token projection = %+v", tok)
	}
	if ca == nil || len(ca.Items) != 1 || ca.Items[0].Path != contract.CAFile ||
		ca.Items[0].FieldRef.FieldPath != "metadata.annotations['"+contract.AnnotationXDSCA+"']" {
		t.Errorf("CA projection = %+v", ca)
	}
	mounted := 0
	for _, c := range append(append([]corev1.Container(nil), tmpl.Spec.InitContainers...), tmpl.Spec.Containers...) {
		for _, m := range c.VolumeMounts {
			if m.Name != contract.TokenVolumeName {
				continue
			}
			if c.Name != SidecarContainerName {
				t.Errorf("container %s mounts the sidecar's token", c.Name)
			}
			if m.MountPath != contract.TokenDir || !m.ReadOnly {
				t.Errorf("mount = %+v", m)
			}
			mounted++
		}
	}
	if mounted != 1 {
		t.Errorf("the token volume is mounted %d times, want once (the sidecar)", mounted)
	}
}

func TestFunctionSidecarGetsXDSCredentials(t *testing.T) {
	var fn meshv1alpha1.MeshFunction
	readYAML(t, "testdata/function-minimal.in.yaml", &fn)
	o := testOptions
	o.XDSCA = []byte(testCA)
	dep, err := FunctionDeployment(&fn, 1, o)
	if err != nil {
		t.Fatal(err)
	}
	checkXDSCredentials(t, &dep.Spec.Template)

	// A new CA changes the template hash, so the pods roll onto it.
	o.XDSCA = []byte(testCA + "\n")
	dep2, err := FunctionDeployment(&fn, 1, o)
	if err != nil {
		t.Fatal(err)
	}
	if dep.Spec.Template.Annotations[AnnotationTemplateHash] == dep2.Spec.Template.Annotations[AnnotationTemplateHash] {
		t.Error("the template hash ignores the CA bundle")
	}

	// Without a CA (--xds-insecure) nothing is added: the goldens hold that shape.
	dep3, err := FunctionDeployment(&fn, 1, testOptions)
	if err != nil {
		t.Fatal(err)
	}
	if len(dep3.Spec.Template.Spec.Volumes) != 0 || dep3.Spec.Template.Annotations[contract.AnnotationXDSCA] != "" {
		t.Errorf("insecure rendering has credentials: %+v", dep3.Spec.Template.Spec.Volumes)
	}
}

func TestRedisProxySidecarGetsXDSCredentials(t *testing.T) {
	rp := meshv1alpha1.RedisProxy{}
	rp.Namespace, rp.Name = "default", "cache"
	one := int32(1)
	rp.Spec.Replicas = &one
	o := testOptions
	o.XDSCA = []byte(testCA)
	dep := RedisProxyDeployment(&rp, o)
	checkXDSCredentials(t, &dep.Spec.Template)
	// Idempotent: a second pass adds nothing.
	AddXDSCredentials(&dep.Spec.Template.ObjectMeta, &dep.Spec.Template.Spec, SidecarContainerName, o.XDSCA)
	checkXDSCredentials(t, &dep.Spec.Template)
}
