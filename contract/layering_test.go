package contract

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/weftmesh/weft"

// listedPackage is the part of `go list -json` the layering rules read.
type listedPackage struct {
	ImportPath   string
	Standard     bool
	Deps         []string
	TestImports  []string
	XTestImports []string
	Error        *struct{ Err string }
}

// goList runs `go list -json` on patterns from the module root.
func goList(t *testing.T, patterns ...string) []listedPackage {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go is not on PATH: %v", err)
	}
	cmd := exec.Command(goTool, append([]string{"list", "-e", "-json"}, patterns...)...)
	cmd.Dir = ".."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list %v: %v\n%s", patterns, err, stderr.String())
	}
	var pkgs []listedPackage
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p listedPackage
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("decoding go list output: %v", err)
		}
		if p.Error != nil {
			t.Fatalf("go list %s: %s", p.ImportPath, p.Error.Err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) == 0 {
		t.Fatalf("go list %v matched no packages", patterns)
	}
	return pkgs
}

// watchSources stats every Go file under roots. go test caches a passing result keyed on
// the files the test touched; `go list` runs in a child process, so without this an edit
// that adds a forbidden import would be answered from the cache.
func watchSources(t *testing.T, roots ...string) {
	t.Helper()
	for _, root := range roots {
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || strings.HasSuffix(path, ".go") || strings.HasSuffix(path, ".mod") {
				_, err = os.Stat(path)
			}
			return err
		})
		if err != nil {
			t.Fatalf("walking %s: %v", root, err)
		}
	}
}

// sidecarForbidden are the import prefixes the sidecar must never link: the control plane's
// internals and the Kubernetes client machinery (the sidecar talks only xDS).
var sidecarForbidden = []string{module + "/internal/", "k8s.io/client-go", "sigs.k8s.io/controller-runtime"}

// sidecarTestExceptions are test-only imports of the control plane that sidecar tests use
// as a real peer, by importing package → imported package.
var sidecarTestExceptions = map[string]string{
	// The async tests run the manager's embedded NATS JetStream server and its stream
	// set-up, the real peer of the publisher and consumer.
	module + "/sidecar/async": module + "/internal/queue",
}

// TestLayering is the in-`go test` guard of the import rules in docs/architecture.md (the
// golangci depguard rules say the same): the sidecar links nothing of the control plane nor
// a Kubernetes client, the API types import nothing of ours, and this package stays a leaf.
func TestLayering(t *testing.T) {
	watchSources(t, "../sidecar", "../cmd/sidecar", "../api", "../contract", "../testenv", "../go.mod")
	for _, p := range goList(t, "./sidecar/...", "./cmd/sidecar/...") {
		for _, dep := range p.Deps {
			for _, bad := range sidecarForbidden {
				if strings.HasPrefix(dep, bad) {
					t.Errorf("%s links %s (via its imports): sidecar code must not depend on %s*; move what it needs into package contract or a sidecar package", p.ImportPath, dep, bad)
				}
			}
		}
		for _, imp := range append(append([]string(nil), p.TestImports...), p.XTestImports...) {
			for _, bad := range sidecarForbidden {
				if strings.HasPrefix(imp, bad) && sidecarTestExceptions[p.ImportPath] != imp {
					t.Errorf("tests of %s import %s: sidecar tests must not depend on %s* (list a real-peer exception in sidecarTestExceptions if it is one)", p.ImportPath, imp, bad)
				}
			}
		}
	}
	// All xDS decoding lives in sidecar/config; the data plane imports it, never the other
	// way round. The redis ring (pure placement) is the one data-plane piece it may use, to
	// refuse a pool that cannot be placed.
	for _, p := range goList(t, "./sidecar/config") {
		for _, dep := range p.Deps {
			switch {
			case !strings.HasPrefix(dep, module+"/"), dep == module+"/contract",
				strings.HasPrefix(dep, module+"/sidecar/redisproxy/ring"), strings.HasPrefix(dep, module+"/sidecar/redisproxy/hashkit"):
			default:
				t.Errorf("%s links %s: the decoder must not depend on the data plane; the data plane takes decoded config types", p.ImportPath, dep)
			}
		}
	}
	for _, p := range goList(t, "./api/...") {
		for _, dep := range p.Deps {
			if strings.HasPrefix(dep, module+"/") && !strings.HasPrefix(dep, module+"/api/") {
				t.Errorf("%s links %s: the API types must import nothing else of ours", p.ImportPath, dep)
			}
		}
	}
	std := map[string]bool{}
	for _, p := range goList(t, "std") {
		std[p.ImportPath] = true
	}
	for _, p := range goList(t, "./contract", "./testenv") {
		for _, dep := range p.Deps {
			switch {
			case std[dep], strings.HasPrefix(dep, "vendor/"):
			case p.ImportPath == module+"/contract" && strings.HasPrefix(dep, "google.golang.org/protobuf/"):
			default:
				t.Errorf("%s links %s: it must stay a leaf (standard library%s only)", p.ImportPath, dep,
					map[bool]string{true: " and protobuf", false: ""}[p.ImportPath == module+"/contract"])
			}
		}
	}
}
