package k8sbin

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestNewPaths(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want Paths
	}{
		{"defaults under home", nil, Paths{
			EnvtestRoot: "/home/u/.local/share/kubebuilder-envtest",
			Store:       "/home/u/.local/share/kubebuilder-envtest/k8s/1.36.3-linux-amd64",
			Cache:       "/home/u/.cache/weft",
			KCMDir:      "/home/u/.cache/weft/kcm/1.36.3-linux-amd64",
			MeshDir:     "/home/u/.cache/weft/mesh/1.36.3-linux-amd64",
		}},
		{"XDG directories", map[string]string{"XDG_DATA_HOME": "/d", "XDG_CACHE_HOME": "/c"}, Paths{
			EnvtestRoot: "/d/kubebuilder-envtest",
			Store:       "/d/kubebuilder-envtest/k8s/1.36.3-linux-amd64",
			Cache:       "/c/weft",
			KCMDir:      "/c/weft/kcm/1.36.3-linux-amd64",
			MeshDir:     "/c/weft/mesh/1.36.3-linux-amd64",
		}},
		// The shell's ${XDG_DATA_HOME:-...} used the default for an empty variable too.
		{"empty XDG variables", map[string]string{"XDG_DATA_HOME": "", "XDG_CACHE_HOME": ""}, Paths{
			EnvtestRoot: "/home/u/.local/share/kubebuilder-envtest",
			Store:       "/home/u/.local/share/kubebuilder-envtest/k8s/1.36.3-linux-amd64",
			Cache:       "/home/u/.cache/weft",
			KCMDir:      "/home/u/.cache/weft/kcm/1.36.3-linux-amd64",
			MeshDir:     "/home/u/.cache/weft/mesh/1.36.3-linux-amd64",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := NewPaths(env(tc.env), "/home/u", "v1.36.3", "linux", "amd64"); got != tc.want {
				t.Errorf("NewPaths = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestVersions(t *testing.T) {
	if got := StagingVersion("v1.36.3"); got != "v0.36.3" {
		t.Errorf("StagingVersion(v1.36.3) = %q, want v0.36.3", got)
	}
	if got := minor("v1.36.3"); got != "1.36" {
		t.Errorf("minor(v1.36.3) = %q, want 1.36", got)
	}
}

// The stamps must read exactly as the shell script wrote them, or every machine with a cache
// built by it would rebuild (40 minutes on 2 cores).
func TestStampMatchesShellScript(t *testing.T) {
	o, err := OptionsFromEnv(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	for bin, want := range map[string]string{
		Etcd:                  "etcd=v3.6.16 recipe=1",
		KubeAPIServer:         "kubernetes=v1.36.3 staging=v0.36.3 recipe=1",
		KubeControllerManager: "kubernetes=v1.36.3 staging=v0.36.3 recipe=1",
	} {
		if got := o.Stamp(bin); got != want {
			t.Errorf("Stamp(%s) = %q, want %q", bin, got, want)
		}
	}
}

func TestUsable(t *testing.T) {
	o, _ := OptionsFromEnv(env(nil))
	for _, tc := range []struct {
		name  string
		mode  os.FileMode // 0: no binary
		stamp *string     // nil: no stamp file
		want  bool
	}{
		{"missing binary", 0, nil, false},
		{"not executable", 0o644, nil, false},
		{"not ours (no stamp)", 0o755, nil, true},
		{"current stamp with newline", 0o755, ptr(o.Stamp(KubeAPIServer) + "\n"), true},
		{"current stamp without newline", 0o755, ptr(o.Stamp(KubeAPIServer)), true},
		{"stale stamp", 0o755, ptr("kubernetes=v1.35.0 staging=v0.35.0 recipe=1\n"), false},
		{"stale recipe", 0o755, ptr("kubernetes=v1.36.3 staging=v0.36.3 recipe=0\n"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.mode != 0 {
				if err := os.WriteFile(filepath.Join(dir, KubeAPIServer), []byte("#!/bin/sh\n"), tc.mode); err != nil {
					t.Fatal(err)
				}
			}
			if tc.stamp != nil {
				if err := os.WriteFile(stampFile(dir, KubeAPIServer), []byte(*tc.stamp), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if got := o.Usable(dir, KubeAPIServer); got != tc.want {
				t.Errorf("Usable = %v, want %v", got, tc.want)
			}
		})
	}
}

func ptr(s string) *string { return &s }

func TestOptionsFromEnv(t *testing.T) {
	o, err := OptionsFromEnv(env(map[string]string{
		"WEFT_K8S_VERSION": "v1.35.1", "WEFT_ENVTEST_NO_DOWNLOAD": "1", "WEFT_ENVTEST_REBUILD": "1",
		"WEFT_ENVTEST_DOWNLOAD_TIMEOUT": "7", "KUBEBUILDER_ASSETS": "/a",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if o.K8sVersion != "v1.35.1" || o.EtcdVersion != DefaultEtcdVersion || !o.NoDownload || !o.Rebuild ||
		o.DownloadTimeout != 7*time.Second || o.Assets != "/a" {
		t.Errorf("OptionsFromEnv = %+v", o)
	}
	if _, err := OptionsFromEnv(env(map[string]string{"WEFT_ENVTEST_DOWNLOAD_TIMEOUT": "soon"})); err == nil {
		t.Error("a non-numeric WEFT_ENVTEST_DOWNLOAD_TIMEOUT was accepted")
	}
}

// OverlayDir must name the directory as `printf '%s' "$src" | sha256sum | cut -c1-12` did.
func TestOverlayDir(t *testing.T) {
	if got, want := OverlayDir("/c/weft", "/tmp/x"), "/c/weft/envtest-overlay/2e56aa36f538"; got != want {
		t.Errorf("OverlayDir = %q, want %q", got, want)
	}
}

func TestK8sLdflags(t *testing.T) {
	// The shell script's k8s_ldflags output for the same inputs.
	want := "-s -w -X k8s.io/component-base/version.gitVersion=v1.36.3 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=36 -X k8s.io/component-base/version.gitTreeState=archive -X k8s.io/component-base/version.buildDate=2026-01-02T03:04:05Z -X k8s.io/client-go/pkg/version.gitVersion=v1.36.3 -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=36 -X k8s.io/client-go/pkg/version.gitTreeState=archive -X k8s.io/client-go/pkg/version.buildDate=2026-01-02T03:04:05Z"
	if got := K8sLdflags("v1.36.3", "2026-01-02T03:04:05Z"); got != want {
		t.Errorf("K8sLdflags =\n%s\nwant\n%s", got, want)
	}
}

func TestLastLineAndWithKCMOverlay(t *testing.T) {
	if got := lastLine("a\nb\n"); got != "b" {
		t.Errorf("lastLine = %q, want b", got)
	}
	// An overlay for a directory without kube-controller-manager links src's files (not its
	// dot files) and the cache's kube-controller-manager.
	cache, src := t.TempDir(), t.TempDir()
	o, _ := OptionsFromEnv(env(nil))
	r := &resolver{o: o, p: Paths{Store: filepath.Join(cache, "store"), Cache: cache, KCMDir: filepath.Join(cache, "kcm")}, log: os.Stderr}
	for _, d := range []string{src, r.p.KCMDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{filepath.Join(src, KubeAPIServer), filepath.Join(src, Etcd), filepath.Join(r.p.KCMDir, KubeControllerManager)} {
		if err := os.WriteFile(f, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(src, ".hidden"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ov, err := r.withKCM(t.Context(), src)
	if err != nil {
		t.Fatal(err)
	}
	if ov != OverlayDir(cache, src) {
		t.Errorf("overlay = %s, want %s", ov, OverlayDir(cache, src))
	}
	for b, target := range map[string]string{
		KubeAPIServer:         filepath.Join(src, KubeAPIServer),
		Etcd:                  filepath.Join(src, Etcd),
		KubeControllerManager: filepath.Join(r.p.KCMDir, KubeControllerManager),
	} {
		if got, err := os.Readlink(filepath.Join(ov, b)); err != nil || got != target {
			t.Errorf("%s -> %q (%v), want %q", b, got, err, target)
		}
	}
	if _, err := os.Lstat(filepath.Join(ov, ".hidden")); err == nil {
		t.Error("the overlay links a dot file")
	}
	if !o.hasAll(ov) {
		t.Error("the overlay does not hold all three binaries")
	}
}
