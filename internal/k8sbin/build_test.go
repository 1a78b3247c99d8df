package k8sbin

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// An excerpt of k8s.io/kubernetes v1.36.3's go.mod: a replace block with staging and
// non-staging entries, a single-line staging replace, and a godebug line.
const kubernetesGoMod = `module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

require (
	k8s.io/api v0.0.0
	k8s.io/apimachinery v0.0.0
)

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/apimachinery => ./staging/src/k8s.io/apimachinery
	github.com/example/fork => github.com/example/fork v1.2.3
	k8s.io/api => ./staging/src/k8s.io/api
)

replace k8s.io/streaming => ./staging/src/k8s.io/streaming
replace github.com/other => ../other
`

func TestStagingModules(t *testing.T) {
	want := []string{"k8s.io/api", "k8s.io/apimachinery", "k8s.io/streaming"}
	if got := StagingModules(kubernetesGoMod); !reflect.DeepEqual(got, want) {
		t.Errorf("StagingModules = %q, want %q", got, want)
	}
}

// The rewrite must produce the shell script's go.mod byte for byte: a different go.mod drops
// go.sum and re-resolves the build's dependencies.
func TestK8sBuildGoMod(t *testing.T) {
	got, n, err := K8sBuildGoMod(kubernetesGoMod, "v1.36.3")
	if err != nil {
		t.Fatal(err)
	}
	want := "module weft.local/k8s-build\n\ngo 1.26.0\ngodebug default=go1.26\n\nrequire k8s.io/kubernetes v1.36.3\n\nreplace (\n" +
		"\tk8s.io/api => k8s.io/api v0.36.3\n" +
		"\tk8s.io/apimachinery => k8s.io/apimachinery v0.36.3\n" +
		"\tk8s.io/streaming => k8s.io/streaming v0.36.3\n" +
		")\n\n"
	if got != want || n != 3 {
		t.Errorf("K8sBuildGoMod = (%d)\n%s\nwant (3)\n%s", n, got, want)
	}
	if _, _, err := K8sBuildGoMod("module x\n\ngo 1.26.0\n", "v1.36.3"); err == nil {
		t.Error("a go.mod without staging replaces was accepted")
	}
}

func TestEtcdBuildGoMod(t *testing.T) {
	got, err := EtcdBuildGoMod("module go.etcd.io/etcd/server/v3\n\ngo 1.26.0\n\ntoolchain go1.26.1\n", "v3.6.16")
	if err != nil {
		t.Fatal(err)
	}
	want := "module weft.local/etcd-build\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 v3.6.16\n\nreplace (\n" +
		"\tgo.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 v3.6.16\n" +
		"\tgo.etcd.io/etcd/client/pkg/v3 => go.etcd.io/etcd/client/pkg/v3 v3.6.16\n" +
		"\tgo.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 v3.6.16\n" +
		"\tgo.etcd.io/etcd/pkg/v3 => go.etcd.io/etcd/pkg/v3 v3.6.16\n" +
		")\n\n"
	if got != want {
		t.Errorf("EtcdBuildGoMod =\n%s\nwant\n%s", got, want)
	}
}

func TestWriteGoModKeepsGoSumWhenUnchanged(t *testing.T) {
	dir := t.TempDir()
	sum := filepath.Join(dir, "go.sum")
	if wrote, err := writeGoMod(dir, "module a\n"); err != nil || !wrote {
		t.Fatalf("first write: wrote=%v err=%v", wrote, err)
	}
	if err := os.WriteFile(sum, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if wrote, err := writeGoMod(dir, "module a\n"); err != nil || wrote {
		t.Fatalf("same content: wrote=%v err=%v", wrote, err)
	}
	if _, err := os.Stat(sum); err != nil {
		t.Fatalf("go.sum dropped for an unchanged go.mod: %v", err)
	}
	if wrote, err := writeGoMod(dir, "module b\n"); err != nil || !wrote {
		t.Fatalf("changed content: wrote=%v err=%v", wrote, err)
	}
	if _, err := os.Stat(sum); !os.IsNotExist(err) {
		t.Errorf("go.sum kept for a changed go.mod: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "go.mod")); string(b) != "module b\n" {
		t.Errorf("go.mod = %q", b)
	}
}
