package image

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

var (
	amd64 = Platform{OS: "linux", Arch: "amd64"}
	arm64 = Platform{OS: "linux", Arch: "arm64"}
)

func testSpec() Spec {
	return Spec{Name: "weft-sidecar", Title: "Weft sidecar", Binary: "/sidecar", User: Proxy}
}

func testMeta() Meta {
	return Meta{Source: "https://github.com/weftmesh/weft", Revision: "0123abc", Version: "v0.1.0",
		Licenses: "Apache-2.0", Created: time.Date(2026, 12, 4, 10, 29, 58, 0, time.UTC)}
}

func testBins() map[Platform][]byte {
	return map[Platform][]byte{amd64: []byte("\x7fELF amd64 program"), arm64: []byte("\x7fELF arm64 program")}
}

func digest(t *testing.T, s Spec, m Meta, bins map[Platform][]byte) v1.Hash {
	t.Helper()
	idx, err := Index(s, m, bins)
	if err != nil {
		t.Fatal(err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestIndexReproducible: the same inputs give the same index digest (built twice, from
// fresh copies, so nothing is shared but the values), and every input the image depends on
// changes it.
func TestIndexReproducible(t *testing.T) {
	base := digest(t, testSpec(), testMeta(), testBins())
	if again := digest(t, testSpec(), testMeta(), testBins()); again != base {
		t.Fatalf("two builds of the same inputs: %s then %s", base, again)
	}
	cases := []struct {
		name string
		edit func(s *Spec, m *Meta, bins map[Platform][]byte)
	}{
		{"one byte of one binary", func(_ *Spec, _ *Meta, b map[Platform][]byte) { b[arm64] = []byte("\x7fELF arm64 programX") }},
		{"version", func(_ *Spec, m *Meta, _ map[Platform][]byte) { m.Version = "v0.1.1" }},
		{"revision", func(_ *Spec, m *Meta, _ map[Platform][]byte) { m.Revision = "0123abd" }},
		{"created", func(_ *Spec, m *Meta, _ map[Platform][]byte) { m.Created = m.Created.Add(time.Second) }},
		{"user", func(s *Spec, _ *Meta, _ map[Platform][]byte) { s.User = NonRoot }},
		{"entrypoint", func(s *Spec, _ *Meta, _ map[Platform][]byte) { s.Binary = "/proxy" }},
		{"title", func(s *Spec, _ *Meta, _ map[Platform][]byte) { s.Title = "other" }},
		{"CA bundle", func(s *Spec, _ *Meta, _ map[Platform][]byte) { s.CACerts = []byte("-----BEGIN CERTIFICATE-----\n") }},
		{"a platform fewer", func(_ *Spec, _ *Meta, b map[Platform][]byte) { delete(b, arm64) }},
	}
	seen := map[v1.Hash]string{base: "base"}
	for _, c := range cases {
		s, m, b := testSpec(), testMeta(), testBins()
		c.edit(&s, &m, b)
		d := digest(t, s, m, b)
		if prev, dup := seen[d]; dup {
			t.Errorf("changing the %s gives digest %s, the same as %s", c.name, d, prev)
		}
		seen[d] = c.name
	}
}

// TestIndexContents reads back what a runtime reads: the index's platforms, each image's
// config, and the layer's files with their owners, modes and times.
func TestIndexContents(t *testing.T) {
	m := testMeta()
	s := testSpec()
	s.CACerts = []byte("pem bundle")
	idx, err := Index(s, m, testBins())
	if err != nil {
		t.Fatal(err)
	}
	if mt, _ := idx.MediaType(); mt != types.OCIImageIndex {
		t.Errorf("index media type %s, want %s", mt, types.OCIImageIndex)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if got := im.Annotations["org.opencontainers.image.version"]; got != "v0.1.0" {
		t.Errorf("index version annotation %q", got)
	}
	if len(im.Manifests) != 2 || im.Manifests[0].Platform.Architecture != "amd64" || im.Manifests[1].Platform.Architecture != "arm64" {
		t.Fatalf("index manifests %+v: want linux/amd64 then linux/arm64", im.Manifests)
	}
	for _, desc := range im.Manifests {
		arch := desc.Platform.Architecture
		img, err := idx.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if mt, _ := img.MediaType(); mt != types.OCIManifestSchema1 {
			t.Errorf("%s: manifest media type %s", arch, mt)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		c := cf.Config
		if cf.OS != "linux" || cf.Architecture != arch {
			t.Errorf("config platform %s/%s, want linux/%s", cf.OS, cf.Architecture, arch)
		}
		if !cf.Created.Time.Equal(m.Created) {
			t.Errorf("%s: created %s, want %s", arch, cf.Created.Time, m.Created)
		}
		if strings.Join(c.Entrypoint, " ") != "/sidecar" || c.User != "1337:1337" || c.WorkingDir != "/" || len(c.Cmd) != 0 {
			t.Errorf("%s: entrypoint %q cmd %q user %q workdir %q", arch, c.Entrypoint, c.Cmd, c.User, c.WorkingDir)
		}
		want := map[string]string{
			"org.opencontainers.image.source":   "https://github.com/weftmesh/weft",
			"org.opencontainers.image.revision": "0123abc",
			"org.opencontainers.image.version":  "v0.1.0",
			"org.opencontainers.image.created":  "2026-12-04T10:29:58Z",
			"org.opencontainers.image.title":    "Weft sidecar",
			"org.opencontainers.image.licenses": "Apache-2.0",
		}
		for k, v := range want {
			if c.Labels[k] != v {
				t.Errorf("%s: label %s=%q, want %q", arch, k, c.Labels[k], v)
			}
		}
		if !contains(c.Env, "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt") {
			t.Errorf("%s: env %q lacks SSL_CERT_FILE", arch, c.Env)
		}
		files := layerFiles(t, img)
		wantModes := map[string]int64{
			"etc/": 0o755, "etc/passwd": 0o644, "etc/group": 0o644, "etc/ssl/certs/ca-certificates.crt": 0o644,
			"tmp/": 0o1777, "sidecar": 0o755,
		}
		for name, mode := range wantModes {
			h, ok := files[name]
			if !ok {
				t.Errorf("%s: layer lacks %s (has %v)", arch, name, keys(files))
				continue
			}
			if h.Mode != mode || h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(m.Created) {
				t.Errorf("%s: %s mode %o uid %d gid %d mtime %s; want mode %o, root, %s", arch, name, h.Mode, h.Uid, h.Gid, h.ModTime, mode, m.Created)
			}
		}
		if got := string(files["sidecar"].data); got != "\x7fELF "+arch+" program" {
			t.Errorf("%s: the image holds the %q binary", arch, got)
		}
		if p := string(files["etc/passwd"].data); !strings.Contains(p, "\nweft-proxy:x:1337:1337:") {
			t.Errorf("%s: /etc/passwd lacks the proxy user:\n%s", arch, p)
		}
		if g := string(files["etc/group"].data); !strings.Contains(g, "\nweft-proxy:x:1337:") {
			t.Errorf("%s: /etc/group lacks the proxy group:\n%s", arch, g)
		}
	}
}

// TestIndexNonRootWithoutCA: the default user is distroless's nonroot, and no CA bundle or
// SSL_CERT_FILE unless asked for.
func TestIndexNonRootWithoutCA(t *testing.T) {
	s := Spec{Name: "weft-example-echo", Title: "echo", Binary: "/echo", User: NonRoot}
	img, err := Image(s, testMeta(), amd64, []byte("prog"))
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Config.User != "65532:65532" {
		t.Errorf("user %q, want 65532:65532", cf.Config.User)
	}
	if contains(cf.Config.Env, "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt") {
		t.Errorf("env %q names a CA bundle the image does not have", cf.Config.Env)
	}
	files := layerFiles(t, img)
	if _, ok := files["etc/ssl/certs/ca-certificates.crt"]; ok {
		t.Error("the image holds a CA bundle it was not given")
	}
	if p := string(files["etc/passwd"].data); !strings.Contains(p, "\nnonroot:x:65532:65532:") {
		t.Errorf("/etc/passwd lacks nonroot:\n%s", p)
	}
}

func TestImageRefusesBadInput(t *testing.T) {
	for _, c := range []struct {
		name string
		spec Spec
		bin  []byte
	}{
		{"relative binary path", Spec{Name: "x", Binary: "sidecar", User: Proxy}, []byte("p")},
		{"unclean binary path", Spec{Name: "x", Binary: "/bin/../sidecar", User: Proxy}, []byte("p")},
		{"root as binary path", Spec{Name: "x", Binary: "/", User: Proxy}, []byte("p")},
		{"empty binary", Spec{Name: "x", Binary: "/sidecar", User: Proxy}, nil},
	} {
		if _, err := Image(c.spec, testMeta(), amd64, c.bin); err == nil {
			t.Errorf("%s: built an image", c.name)
		}
	}
	if _, err := Index(testSpec(), testMeta(), nil); err == nil {
		t.Error("built an index with no platforms")
	}
	for _, p := range []string{"linux", "linux/", "/amd64", "linux/arm/v7"} {
		if _, err := ParsePlatform(p); err == nil {
			t.Errorf("ParsePlatform(%q) accepted it", p)
		}
	}
}

// TestImageBinaryInSubdirectory: a binary below / gets its parent directories as entries, so
// runtimes that do not create missing parents still unpack it.
func TestImageBinaryInSubdirectory(t *testing.T) {
	s := Spec{Name: "x", Binary: "/usr/local/bin/x", User: NonRoot}
	img, err := Image(s, testMeta(), amd64, []byte("prog"))
	if err != nil {
		t.Fatal(err)
	}
	files := layerFiles(t, img)
	for _, d := range []string{"usr/", "usr/local/", "usr/local/bin/", "usr/local/bin/x"} {
		if _, ok := files[d]; !ok {
			t.Errorf("layer lacks %s (has %v)", d, keys(files))
		}
	}
}

type file struct {
	*tar.Header
	data []byte
}

func layerFiles(t *testing.T, img v1.Image) map[string]file {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	if mt, _ := layers[0].MediaType(); mt != types.OCILayer {
		t.Errorf("layer media type %s, want %s", mt, types.OCILayer)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	out := map[string]file{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if _, err := io.Copy(&buf, tr); err != nil {
			t.Fatal(err)
		}
		if _, dup := out[h.Name]; dup {
			t.Errorf("layer holds %s twice", h.Name)
		}
		out[h.Name] = file{Header: h, data: buf.Bytes()}
	}
	return out
}

func keys(m map[string]file) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
