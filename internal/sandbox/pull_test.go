package sandbox

import (
	"bytes"
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// testImage is an image of the given layers (tar bytes, lowest first) with an entrypoint.
func testImage(t *testing.T, layers ...[]byte) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	for _, b := range layers {
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
			tarball.WithMediaType(types.OCILayer))
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config = v1.Config{Entrypoint: []string{"/prog"}, Cmd: []string{"--default"}, User: "1337:1337", Env: []string{"PATH=/", "FROM_IMAGE=1"}}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func push(t *testing.T, ref string, img v1.Image) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
}

// countingTransport counts blob GETs, to see the layer cache at work.
type countingTransport struct{ blobs atomic.Int32 }

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
		c.blobs.Add(1)
	}
	return http.DefaultTransport.RoundTrip(r)
}

// TestPullFromLocalRegistry pushes a two-layer image to the registry `weft dev` serves,
// pulls it, assembles a root, and pulls it again (the cache: no layer is fetched twice).
func TestPullFromLocalRegistry(t *testing.T) {
	reg, err := ServeRegistry("127.0.0.1:0", filepath.Join(t.TempDir(), "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	img := testImage(t,
		layerTar(t, tentry{name: "prog", body: "binary", mode: 0o755}, tentry{name: "etc/old", body: "o"}),
		layerTar(t, tentry{name: "etc/.wh.old"}, tentry{name: "etc/new", body: "n"}))
	ref := reg.Addr + "/weftmesh/test:v1"
	push(t, ref, img)

	ct := &countingTransport{}
	store := &ImageStore{Dir: t.TempDir(), Platform: v1.Platform{OS: "linux", Architecture: "amd64"},
		Options: []remote.Option{remote.WithTransport(ct)}}
	p, err := store.Pull(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if p.Digest != want || strings.Join(p.Config.Entrypoint, " ") != "/prog" || p.Config.User != "1337:1337" || len(p.Layers) != 2 {
		t.Fatalf("pulled %+v, want digest %s, entrypoint /prog, user 1337:1337, 2 layers", p, want)
	}
	rootDir := filepath.Join(t.TempDir(), "root")
	must(t, p.Unpacked(rootDir))
	if got := tree(t, rootDir); strings.Join(got, " ") != "etc/ etc/new prog" {
		t.Errorf("root = %v", got)
	}
	if n := ct.blobs.Load(); n < 2 {
		t.Fatalf("first pull fetched %d blobs, want the config and both layers", n)
	}
	before := ct.blobs.Load()
	// By digest this time: the same image, the layers already unpacked.
	if _, err := store.Pull(context.Background(), reg.Addr+"/weftmesh/test@"+want.String()); err != nil {
		t.Fatal(err)
	}
	if n := ct.blobs.Load() - before; n > 1 { // the config blob only
		t.Errorf("second pull fetched %d blobs; the layers should come from the cache", n)
	}
}

func TestPullLimits(t *testing.T) {
	reg, err := ServeRegistry("127.0.0.1:0", filepath.Join(t.TempDir(), "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	ref := reg.Addr + "/weftmesh/big:v1"
	push(t, ref, testImage(t, layerTar(t, tentry{name: "a", body: strings.Repeat("a", 4096)}),
		layerTar(t, tentry{name: "b", body: "b"}), layerTar(t, tentry{name: "c", body: "c"})))
	for _, c := range []struct {
		lim  PullLimits
		want string
	}{
		{PullLimits{MaxLayers: 2}, "has 3 layers; weft dev runs images of at most 2"},
		{PullLimits{MaxImageBytes: 100}, "compressed; weft dev pulls images of at most"},
		{PullLimits{MaxLayerBytes: 1000}, "unpacks to more than"},
	} {
		store := &ImageStore{Dir: t.TempDir(), Limits: c.lim}
		_, err := store.Pull(context.Background(), ref)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("limits %+v: err = %v, want %q", c.lim, err, c.want)
		}
		if err != nil && !strings.Contains(err.Error(), ref) {
			t.Errorf("error %q does not name the image", err)
		}
	}
	if _, err := (&ImageStore{Dir: t.TempDir()}).Pull(context.Background(), reg.Addr+"/weftmesh/missing:v1"); err == nil || !strings.Contains(err.Error(), "make images REGISTRY=") {
		t.Errorf("missing image: err = %v, want a hint to push it", err)
	}
}

// TestPullRefusesForgedBlob: a registry that answers a layer's digest with other bytes of
// the same length is caught before anything is unpacked.
func TestPullRefusesForgedBlob(t *testing.T) {
	img := testImage(t, layerTar(t, tentry{name: "prog", body: "genuine", mode: 0o755}))
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	forge := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+ld.String()) {
			rec := &bufferedWriter{h: http.Header{}}
			reg.ServeHTTP(rec, r)
			body := rec.buf.Bytes()
			if len(body) > 0 {
				body[len(body)/2] ^= 0xff
			}
			for k, v := range rec.h {
				w.Header()[k] = v
			}
			w.WriteHeader(rec.code)
			_, _ = w.Write(body)
			return
		}
		reg.ServeHTTP(w, r)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: forge}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	ref := ln.Addr().String() + "/weftmesh/forged:v1"
	push(t, ref, img)
	dir := t.TempDir()
	_, err = (&ImageStore{Dir: dir}).Pull(context.Background(), ref)
	if err == nil || !strings.Contains(err.Error(), "checksum") && !strings.Contains(err.Error(), "digest is not") {
		t.Fatalf("forged layer: err = %v, want a digest mismatch", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "layers")); len(entries) != 0 {
		t.Errorf("a forged layer reached the cache: %v", entries)
	}
}

type bufferedWriter struct {
	h    http.Header
	code int
	buf  bytes.Buffer
}

func (b *bufferedWriter) Header() http.Header { return b.h }
func (b *bufferedWriter) Write(p []byte) (int, error) {
	if b.code == 0 {
		b.code = http.StatusOK
	}
	return b.buf.Write(p)
}
func (b *bufferedWriter) WriteHeader(c int) { b.code = c }

// TestMirrorFallsBackToPrograms: with the local registry mirroring ghcr.io/weftmesh, an
// image the registry holds is pulled from it under its mirrored name; one it lacks, one of
// another repository and a name that only shares the prefix's characters map to programs.
func TestMirrorFallsBackToPrograms(t *testing.T) {
	reg, err := ServeRegistry("127.0.0.1:0", filepath.Join(t.TempDir(), "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	push(t, reg.Addr+"/weftmesh/weft-sidecar:dev", testImage(t, layerTar(t, tentry{name: "prog", body: "x"})))
	im := NewImages(t.TempDir())
	im.Store = &ImageStore{Dir: t.TempDir()}
	im.PullFrom = []string{reg.Addr}
	im.Mirrors = map[string]string{SourceRegistry: reg.Addr + "/weftmesh"}
	ctx := context.Background()
	for image, want := range map[string]string{
		"ghcr.io/weftmesh/weft-sidecar:dev":     reg.Addr + "/weftmesh/weft-sidecar:dev",
		"ghcr.io/weftmesh/weft-sidecar:v9":      "",
		"ghcr.io/weftmesh/weft-manager:dev":     "",
		"ghcr.io/weftmeshx/weft-sidecar:dev":    "",
		"weft.dev/examples/echo:latest":         "",
		"redis":                                 "",
		reg.Addr + "/weftmesh/anything:missing": reg.Addr + "/weftmesh/anything:missing", // its own registry: always pulled
	} {
		if got := im.pullRef(ctx, image); got != want {
			t.Errorf("pullRef(%s) = %q, want %q", image, got, want)
		}
	}
}
