package sandbox

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// DefaultImages maps image repositories (tag and digest ignored) to programs under the bin
// dir. The local mesh has no container runtime: a container "runs" its image's program as a
// process in the Pod's network namespace, with the container's args and env.
var DefaultImages = map[string]string{
	"ghcr.io/weftmesh/weft-sidecar": "sidecar",
	"ghcr.io/weftmesh/weft-manager": "manager",
	"weft.dev/examples/echo":        "echo",
	"weft.dev/examples/slow":        "slow",
	"weft.dev/examples/flaky":       "flaky",
	"weft.dev/examples/caller":      "caller",
	"weft.dev/examples/grpcecho":    "grpcecho",
	"weft.dev/examples/wsecho":      "wsecho",
	"weft.dev/examples/otlpsink":    "otlpsink",
	// Redis servers for RedisProxy pools come from Debian's redis-server package.
	"redis":                   "/usr/bin/redis-server",
	"docker.io/library/redis": "/usr/bin/redis-server",
}

// Images resolves images to local programs.
type Images struct {
	BinDir string
	Map    map[string]string // repository → program (absolute, or relative to BinDir)
	// Store pulls the images of registries in PullFrom (host:port, as in the reference);
	// containers of those images run from the image (rootfs.go), the rest from Map.
	Store    *ImageStore
	PullFrom []string
	// Mirrors map a repository prefix to one in a registry of PullFrom, as a container
	// runtime's registry mirror does (e.g. ghcr.io/weftmesh → 127.0.0.1:5000/weftmesh):
	// an image under the prefix is pulled from the mirror when the mirror has it, else it
	// maps to a program as before. So the manifests in config/ run unchanged.
	Mirrors map[string]string
}

// NewImages starts from DefaultImages.
func NewImages(binDir string) *Images {
	m := make(map[string]string, len(DefaultImages))
	for k, v := range DefaultImages {
		m[k] = v
	}
	return &Images{BinDir: binDir, Map: m}
}

// LoadFile adds mappings from a file of "repository program" lines (# comments allowed).
func (im *Images) LoadFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("reading image map %s: %w", path, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 2 {
			return fmt.Errorf("image map %s line %d: want \"repository program\", got %q", path, n, sc.Text())
		}
		im.Map[fields[0]] = fields[1]
	}
	return sc.Err()
}

// Repository strips the tag and digest from an image reference.
func Repository(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		image = image[:i]
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		image = image[:i]
	}
	return image
}

// Resolve returns the program for image, or an error that says how to map it.
func (im *Images) Resolve(image string) (string, error) {
	repo := Repository(image)
	prog, ok := im.Map[repo]
	if !ok {
		return "", fmt.Errorf("image %s has no local program in weft dev; map it with --image-map (a file of \"%s /path/to/program\" lines)", image, repo)
	}
	if !filepath.IsAbs(prog) {
		prog = filepath.Join(im.BinDir, prog)
	}
	if st, err := os.Stat(prog); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("image %s maps to %s, which is not an executable file; build it (make build, or go build -o %s ./...)", image, prog, prog)
	}
	return prog, nil
}
