package k8sbin

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// kube-proxy is a k8s.io/kubernetes command: its stamp is kube-controller-manager's, so a
// bump of the Kubernetes pin rebuilds it with the control plane. CoreDNS's names its own
// version and the plugin list compiled in.
func TestMeshStamps(t *testing.T) {
	o, err := OptionsFromEnv(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := o.Stamp(KubeProxy), "kubernetes=v1.36.3 staging=v0.36.3 recipe=1"; got != want {
		t.Errorf("Stamp(kube-proxy) = %q, want %q", got, want)
	}
	want := "coredns=v1.15.0 plugins=bind,cache,errors,forward,health,kubernetes,loadbalance,log,loop,ready,reload recipe=1"
	if got := o.Stamp(CoreDNS); got != want {
		t.Errorf("Stamp(coredns) = %q, want %q", got, want)
	}
	// Options built by hand (no CoreDNSVersion) stamp the default, as ResolveMesh builds it.
	if got := (Options{K8sVersion: "v1.36.3"}).Stamp(CoreDNS); got != want {
		t.Errorf("Stamp(coredns) without a version = %q, want %q", got, want)
	}
	o2, _ := OptionsFromEnv(env(map[string]string{"WEFT_COREDNS_VERSION": "v1.14.2", "WEFT_K8S_VERSION": "v1.35.0"}))
	if o2.CoreDNSVersion != "v1.14.2" || !strings.HasPrefix(o2.Stamp(CoreDNS), "coredns=v1.14.2 ") {
		t.Errorf("WEFT_COREDNS_VERSION not honoured: %+v, stamp %q", o2, o2.Stamp(CoreDNS))
	}
	if o2.Stamp(KubeProxy) == o.Stamp(KubeProxy) {
		t.Error("a different Kubernetes pin gives kube-proxy the same stamp")
	}
	if !sort.StringsAreSorted(CoreDNSPlugins) {
		t.Errorf("CoreDNSPlugins is not sorted (the stamp would change with the order): %v", CoreDNSPlugins)
	}
}

// A cached binary is reused only under the current pins: another CoreDNS version, another
// plugin list or another Kubernetes version makes the next run rebuild it.
func TestMeshUsable(t *testing.T) {
	o, _ := OptionsFromEnv(env(nil))
	for _, tc := range []struct {
		name, bin, stamp string
		want             bool
	}{
		{"current coredns", CoreDNS, o.Stamp(CoreDNS) + "\n", true},
		{"older coredns", CoreDNS, strings.Replace(o.Stamp(CoreDNS), "v1.15.0", "v1.14.0", 1), false},
		{"coredns without the kubernetes plugin", CoreDNS, strings.Replace(o.Stamp(CoreDNS), "kubernetes,", "", 1), false},
		{"coredns stamped as a k8s binary", CoreDNS, o.Stamp(KubeProxy), false},
		{"current kube-proxy", KubeProxy, o.Stamp(KubeProxy), true},
		{"kube-proxy of another release", KubeProxy, "kubernetes=v1.35.0 staging=v0.35.0 recipe=1", false},
		{"empty stamp", KubeProxy, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, tc.bin), []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(stampFile(dir, tc.bin), []byte(tc.stamp), 0o644); err != nil {
				t.Fatal(err)
			}
			if got := o.Usable(dir, tc.bin); got != tc.want {
				t.Errorf("Usable = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestCoreDNSBuildGoMod(t *testing.T) {
	got, err := CoreDNSBuildGoMod("module github.com/coredns/coredns\n\n// a comment\ngo 1.26.0\n\nrequire (\n\tgithub.com/miekg/dns v1.1.68\n)\n", "v1.15.0")
	if err != nil {
		t.Fatal(err)
	}
	want := "module weft.local/coredns-build\n\ngo 1.26.0\n\nrequire github.com/coredns/coredns v1.15.0\n"
	if got != want {
		t.Errorf("CoreDNSBuildGoMod =\n%s\nwant\n%s", got, want)
	}
	if _, err := CoreDNSBuildGoMod("module github.com/coredns/coredns\n", "v1.15.0"); err == nil {
		t.Error("a go.mod without a go line was accepted")
	}
}

// The generated main must be valid Go importing coremain and exactly the listed plugins.
func TestCoreDNSMain(t *testing.T) {
	src := CoreDNSMain(CoreDNSPlugins)
	f, err := parser.ParseFile(token.NewFileSet(), "main.go", src, parser.ImportsOnly)
	if err != nil {
		t.Fatalf("generated main does not parse: %v\n%s", err, src)
	}
	if f.Name.Name != "main" {
		t.Errorf("package %s, want main", f.Name.Name)
	}
	var got []string
	for _, imp := range f.Imports {
		p, _ := strconv.Unquote(imp.Path.Value)
		if p == "github.com/coredns/coredns/coremain" {
			continue
		}
		if imp.Name == nil || imp.Name.Name != "_" {
			t.Errorf("plugin %s is not a blank import", p)
		}
		got = append(got, strings.TrimPrefix(p, "github.com/coredns/coredns/plugin/"))
	}
	if !reflect.DeepEqual(got, CoreDNSPlugins) {
		t.Errorf("plugins imported = %v, want %v", got, CoreDNSPlugins)
	}
	if !strings.Contains(src, "func main() { coremain.Run() }") {
		t.Errorf("main does not run coremain:\n%s", src)
	}
}

// With both binaries cached under the current pins ResolveMesh builds nothing: it runs each
// with its version flag and returns the cache's paths.
func TestResolveMeshUsesTheCache(t *testing.T) {
	cache := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", cache)
	o, _ := OptionsFromEnv(env(nil))
	p := NewPaths(os.Getenv, "/nonexistent", o.K8sVersion, "linux", "amd64")
	if err := os.MkdirAll(p.MeshDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Each fake answers only its own version flag, so a wrong flag fails the run.
	for bin, flag := range map[string]string{KubeProxy: "--version", CoreDNS: "-version"} {
		script := "#!/bin/sh\n[ \"$1\" = " + flag + " ] && echo " + bin + "-fake && exit 0\nexit 3\n"
		if err := os.WriteFile(filepath.Join(p.MeshDir, bin), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(stampFile(p.MeshDir, bin), []byte(o.Stamp(bin)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var log strings.Builder
	o.Log = &log
	m, err := ResolveMesh(t.Context(), o)
	if err != nil {
		t.Fatalf("ResolveMesh: %v\n%s", err, log.String())
	}
	if m.KubeProxy != filepath.Join(p.MeshDir, KubeProxy) || m.CoreDNS != filepath.Join(p.MeshDir, CoreDNS) {
		t.Errorf("ResolveMesh = %+v, want both in %s", m, p.MeshDir)
	}
	if strings.Contains(log.String(), "building") || !strings.Contains(log.String(), "coredns: coredns-fake") {
		t.Errorf("log:\n%s", log.String())
	}

	// A binary that does not run is an error naming it.
	if err := os.WriteFile(filepath.Join(p.MeshDir, CoreDNS), []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := ResolveMesh(t.Context(), o); err == nil || !strings.Contains(err.Error(), CoreDNS) {
		t.Errorf("a broken coredns: err = %v", err)
	}

	// A stale stamp makes it rebuild: with a CoreDNS version the module proxy does not
	// serve, the build fails, and the error says what could not be built.
	o.CoreDNSVersion = "v0.0.0-weft-does-not-exist"
	if _, err := ResolveMesh(t.Context(), o); err == nil || !strings.Contains(err.Error(), "building coredns") {
		t.Errorf("a stale coredns with an unknown version: err = %v", err)
	}
}
