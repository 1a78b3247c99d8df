package sandbox

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestExpand(t *testing.T) {
	vals := map[string]string{"A": "1", "LABELS": "app=x,v=1"}
	for in, want := range map[string]string{
		"plain":              "plain",
		"--labels=$(LABELS)": "--labels=app=x,v=1",
		"$(A)$(A)":           "11",
		"$(MISSING)":         "$(MISSING)", // undefined stays, as in Kubernetes
		"$$(A)":              "$(A)",       // $$ escapes
		"cost $5":            "cost $5",
		"$(unclosed":         "$(unclosed",
		"end$":               "end$",
	} {
		if got := expand(in, vals); got != want {
			t.Errorf("expand(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestContainerEnv(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "reviews-1", Namespace: "default", UID: "u1",
		Labels: map[string]string{"app": "reviews"}}, Spec: corev1.PodSpec{NodeName: "weft-dev"}}
	field := func(p string) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: p}}
	}
	c := &corev1.Container{Name: "app", Env: []corev1.EnvVar{
		{Name: "VERSION", Value: "v1"},
		{Name: "MY_IP", ValueFrom: field("status.podIP")},
		{Name: "NODE", ValueFrom: field("spec.nodeName")},
		{Name: "APP", ValueFrom: field("metadata.labels['app']")},
		{Name: "URL", Value: "http://$(MY_IP):8080/$(VERSION)"},
		{Name: "POD_NAME", Value: "override"},
		{Name: "KUBERNETES_SERVICE_PORT", Value: "6443"},
		{Name: "API", Value: "$(KUBERNETES_SERVICE_HOST)"},
	}}
	got, err := containerEnv(pod, c, "10.244.0.7", "10.244.0.1", masterServiceEnv(netip.MustParseAddrPort("10.96.0.1:443")))
	if err != nil {
		t.Fatal(err)
	}
	// The kubelet's variables for the kubernetes Service come before the container's, which
	// override them (KUBERNETES_SERVICE_PORT) and may refer to them.
	want := []string{"POD_NAME=override", "POD_NAMESPACE=default", "POD_IP=10.244.0.7",
		"KUBERNETES_SERVICE_HOST=10.96.0.1", "KUBERNETES_SERVICE_PORT=6443", "KUBERNETES_SERVICE_PORT_HTTPS=443",
		"KUBERNETES_PORT=tcp://10.96.0.1:443", "KUBERNETES_PORT_443_TCP=tcp://10.96.0.1:443", "KUBERNETES_PORT_443_TCP_PROTO=tcp",
		"KUBERNETES_PORT_443_TCP_PORT=443", "KUBERNETES_PORT_443_TCP_ADDR=10.96.0.1",
		"VERSION=v1", "MY_IP=10.244.0.7", "NODE=weft-dev", "APP=reviews", "URL=http://10.244.0.7:8080/v1", "API=10.96.0.1"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("env (-want +got):\n%s", d)
	}

	c.Env = []corev1.EnvVar{{Name: "S", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{Key: "k"}}}}
	if _, err := containerEnv(pod, c, "", "", nil); err == nil || !strings.Contains(err.Error(), "env S of container app") {
		t.Errorf("secretKeyRef: err = %v, want a refusal naming the variable and container", err)
	}
}

func TestImages(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "echo"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	mapFile := filepath.Join(dir, "images.txt")
	if err := os.WriteFile(mapFile, []byte("# extra\nregistry.local:5000/team/api echo\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	im := NewImages(dir)
	if err := im.LoadFile(mapFile); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ image, want, errHas string }{
		{"weft.dev/examples/echo:latest", filepath.Join(dir, "echo"), ""},
		{"weft.dev/examples/echo@sha256:abcd", filepath.Join(dir, "echo"), ""},
		{"registry.local:5000/team/api:v2", filepath.Join(dir, "echo"), ""},
		{"weft.dev/examples/slow", "", "not an executable file"},
		{"nginx:1.27", "", "--image-map"},
	} {
		got, err := im.Resolve(tc.image)
		switch {
		case tc.errHas != "" && (err == nil || !strings.Contains(err.Error(), tc.errHas)):
			t.Errorf("Resolve(%s) err = %v, want one mentioning %q", tc.image, err, tc.errHas)
		case tc.errHas == "" && (err != nil || got != tc.want):
			t.Errorf("Resolve(%s) = %q, %v; want %q", tc.image, got, err, tc.want)
		}
	}
}

func TestMasterServiceEnvNoneWithoutAnAddress(t *testing.T) {
	if got := masterServiceEnv(netip.AddrPort{}); got != nil {
		t.Errorf("no API service: env %v, want none", got)
	}
}
