package images

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestRegistryRoundTrip pushes the sidecar image from hack/images to a registry on
// 127.0.0.1 (REGISTRY=...), pulls it back, and compares digests with the OCI layout and
// images.txt. It then unpacks the linux/amd64 image's layer into a directory and runs the
// entrypoint from there — chrooted into it as the image's user when the test runs as root —
// to show the image alone is enough to run the program.
func TestRegistryRoundTrip(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0)))}
	go srv.Serve(ln)
	defer srv.Close()
	repo := ln.Addr().String() + "/weftmesh"

	out := filepath.Join(t.TempDir(), "out")
	buildImages(t, out, nil, "-only", "weft-sidecar", "-version", "v0.0.0-registry",
		"-platforms", "linux/amd64,linux/arm64", "-registry", repo)
	ref := repo + "/weft-sidecar:v0.0.0-registry"
	want := images(t, out)[ref]
	if want == "" {
		t.Fatalf("images.txt lacks %s: %v", ref, images(t, out))
	}

	// The layout on disk holds the same index.
	lp, err := layout.FromPath(filepath.Join(out, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	top, err := lp.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	tm, err := top.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(tm.Manifests) != 1 || tm.Manifests[0].Digest.String() != want ||
		tm.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != ref {
		t.Fatalf("layout index.json %+v: want one entry %s named %s", tm.Manifests, want, ref)
	}

	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := remote.Index(r)
	if err != nil {
		t.Fatalf("pulling %s: %v", ref, err)
	}
	got, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if got.String() != want {
		t.Fatalf("pulled %s, built %s", got, want)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var amd64 *v1.Descriptor
	var plats []string
	for i, d := range im.Manifests {
		plats = append(plats, d.Platform.OS+"/"+d.Platform.Architecture)
		if d.Platform.Architecture == "amd64" {
			amd64 = &im.Manifests[i]
		}
	}
	if strings.Join(plats, ",") != "linux/amd64,linux/arm64" || amd64 == nil {
		t.Fatalf("pulled index platforms %v, want linux/amd64,linux/arm64", plats)
	}
	img, err := idx.Image(amd64.Digest)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if e := strings.Join(cf.Config.Entrypoint, " "); e != "/sidecar" || cf.Config.User != "1337:1337" {
		t.Fatalf("pulled image entrypoint %q user %q, want /sidecar as 1337:1337", e, cf.Config.User)
	}

	rootfs := filepath.Join(t.TempDir(), "rootfs")
	unpack(t, mutate.Extract(img), rootfs)
	passwd, err := os.ReadFile(filepath.Join(rootfs, "etc", "passwd"))
	if err != nil || !strings.Contains(string(passwd), "weft-proxy:x:1337:1337:") {
		t.Fatalf("unpacked /etc/passwd (%v):\n%s", err, passwd)
	}
	if fi, err := os.Stat(filepath.Join(rootfs, "tmp")); err != nil || fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
		t.Fatalf("unpacked /tmp: %v %v, want a sticky world-writable directory", fi, err)
	}

	cmd := exec.Command(filepath.Join(rootfs, "sidecar"), "--help")
	if os.Geteuid() == 0 {
		// Inside the image's root as its user: no host library or file can help the binary.
		cmd = exec.Command("/sidecar", "--help")
		cmd.Dir = "/"
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: rootfs, Credential: &syscall.Credential{Uid: 1337, Gid: 1337}}
		cmd.Env = []string{"PATH=/", "HOME=/tmp"}
	}
	var help bytes.Buffer
	cmd.Stdout, cmd.Stderr = &help, &help
	if err := cmd.Run(); err != nil {
		t.Fatalf("running the image's /sidecar --help: %v\n%s", err, help.String())
	}
	if !strings.Contains(help.String(), "-xds-address") {
		t.Fatalf("/sidecar --help printed no flag list:\n%s", help.String())
	}
	t.Logf("/sidecar --help from the pulled image (chroot as 1337: %v): %d bytes of usage", os.Geteuid() == 0, help.Len())

	// The capture init container runs weft-init from this image; it and the image's own
	// iptables (copied from the build host, with its libraries) run in the empty root.
	if os.Geteuid() == 0 {
		for _, argv := range [][]string{{"/weft-init", "--dry-run"}, {"iptables-restore", "--version"}} {
			cmd := exec.Command(argv[0], argv[1:]...)
			cmd.Dir = "/"
			cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: rootfs}
			cmd.Env = append([]string{}, cf.Config.Env...)
			cmd.Path = argv[0]
			if !strings.HasPrefix(argv[0], "/") {
				cmd.Path = "/usr/sbin/" + argv[0]
			}
			out, err := cmd.CombinedOutput()
			if err != nil || len(out) == 0 {
				t.Fatalf("%v in the image's root: %v\n%s", argv, err, out)
			}
			t.Logf("%v in the image's root: %.80s", argv, out)
		}
	}
}

// unpack writes a flattened image filesystem to dir, refusing paths that leave it.
func unpack(t *testing.T, rc io.ReadCloser, dir string) {
	t.Helper()
	defer rc.Close()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, h.Name)
		if !strings.HasPrefix(p, dir+string(filepath.Separator)) {
			t.Fatalf("layer entry %q leaves the root", h.Name)
		}
		mode := os.FileMode(h.Mode).Perm()
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			if h.Mode&0o1000 != 0 {
				mode |= os.ModeSticky
			}
			if err := os.Chmod(p, mode); err != nil {
				t.Fatal(err)
			}
		case tar.TypeSymlink: // the iptables layer's (/lib -> usr/lib, alternatives)
			if err := os.Symlink(h.Linkname, p); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(f, tr); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("layer entry %s has type %c; the images hold only directories and files", h.Name, h.Typeflag)
		}
	}
}
