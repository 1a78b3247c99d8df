package image

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/testenv"
)

// TestIptablesLayer: the host's iptables with what it needs to run in an empty root — the
// ELF interpreter, libc and the other DT_NEEDED libraries, the xtables modules (owner and
// REDIRECT among them) — symlinks kept as symlinks, root-owned, the fixed time, and the same
// bytes when built twice. (That it runs from such a root is
// internal/sandbox's TestWeftInitImageInstallsRules.)
func TestIptablesLayer(t *testing.T) {
	created := time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)
	host := Platform{OS: runtime.GOOS, Arch: runtime.GOARCH}
	b, files, err := IptablesLayer(host, created)
	if errors.Is(err, ErrNoIptables) {
		testenv.Missing(t, err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	again, _, err := IptablesLayer(host, created)
	if err != nil || !bytes.Equal(b, again) {
		t.Fatalf("two builds differ (%v)", err)
	}
	entries := map[string]*tar.Header{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(created) {
			t.Errorf("%s: owner %d:%d time %s, want 0:0 at %s", h.Name, h.Uid, h.Gid, h.ModTime, created)
		}
		if strings.Contains(h.Name, "..") || strings.HasPrefix(h.Name, "/") {
			t.Errorf("entry name %q", h.Name)
		}
		entries[strings.TrimSuffix(h.Name, "/")] = h
	}
	has := func(suffix string, typ byte) bool {
		for n, h := range entries {
			if strings.HasSuffix(n, suffix) && (typ == 0 || h.Typeflag == typ) {
				return true
			}
		}
		return false
	}
	for _, want := range []struct {
		suffix string
		typ    byte
	}{
		{"sbin/iptables-restore", tar.TypeSymlink},
		{"sbin/ip6tables-restore", tar.TypeSymlink},
		{"/libc.so.6", tar.TypeReg},
		{"/libxtables.so.12", 0}, // a symlink to libxtables.so.12.7.0 on Debian 12
		{"xtables/libxt_owner.so", tar.TypeReg},
		{"xtables/libxt_NAT.so", tar.TypeReg},
		{"xtables/libxt_REDIRECT.so", 0}, // -> libxt_NAT.so
	} {
		if !has(want.suffix, want.typ) {
			t.Errorf("no %s of type %c in the layer", want.suffix, want.typ)
		}
	}
	interp, err := os.Readlink("/lib64")
	if err == nil && entries["lib64"] == nil {
		t.Errorf("/lib64 (-> %s on this host) is not in the layer; the interpreter path would not resolve", interp)
	}
	var size int64
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			t.Errorf("listed file %s: %v", f, err)
			continue
		}
		size += fi.Size()
	}
	t.Logf("iptables layer: %d entries, %d files, %.1f MiB", len(entries), len(files), float64(size)/(1<<20))
}

// TestHostLayerRefuses: a relative path, a missing file, a device.
func TestHostLayerRefuses(t *testing.T) {
	for _, p := range []string{"relative/file", filepath.Join(t.TempDir(), "missing"), "/dev/null"} {
		if _, _, err := HostLayer([]string{p}, DebianLibDirs, time.Unix(0, 0)); err == nil {
			t.Errorf("HostLayer(%s) succeeded", p)
		}
	}
}
