package sandbox

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// tentry is one tar entry of a test layer.
type tentry struct {
	name, link, body string
	typ              byte
	mode             int64
}

func layerTar(t *testing.T, es ...tentry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Size: int64(len(e.body))}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			if _, err := io.WriteString(tw, e.body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

var testLimits = layerLimits{maxBytes: 1 << 20, maxEntries: 100}

// TestUnpackRefusesHostileLayers: a layer that names a path outside its root — directly,
// through a symlink it planted, or as a hard link's target — is refused, and nothing
// appears outside the root.
func TestUnpackRefusesHostileLayers(t *testing.T) {
	cases := []struct {
		name    string
		entries []tentry
	}{
		{"dot-dot name", []tentry{{name: "../pwned", body: "x"}}},
		{"dot-dot inside the name", []tentry{{name: "etc/../../pwned", body: "x"}}},
		{"absolute dot-dot", []tentry{{name: "/../pwned", body: "x"}}},
		{"write through an absolute symlink", []tentry{
			{name: "etc", typ: tar.TypeSymlink, link: "OUTSIDE"}, {name: "etc/pwned", body: "x"}}},
		{"write through a climbing symlink", []tentry{
			{name: "a/", typ: tar.TypeDir, mode: 0o755},
			{name: "a/up", typ: tar.TypeSymlink, link: "../../outside"}, {name: "a/up/pwned", body: "x"}}},
		{"hard link to a climbing target", []tentry{{name: "pwned", typ: tar.TypeLink, link: "../outside/secret"}}},
		{"directory through a symlink", []tentry{
			{name: "d", typ: tar.TypeSymlink, link: "OUTSIDE"}, {name: "d/sub/", typ: tar.TypeDir, mode: 0o755}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			base := t.TempDir()
			outside := filepath.Join(base, "outside")
			if err := os.MkdirAll(outside, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("host secret"), 0o600); err != nil {
				t.Fatal(err)
			}
			for i := range c.entries {
				c.entries[i].link = strings.ReplaceAll(c.entries[i].link, "OUTSIDE", outside)
			}
			root := filepath.Join(base, "layers", "l1")
			err := unpackLayer(bytes.NewReader(layerTar(t, c.entries...)), root, testLimits)
			if err == nil {
				t.Fatal("hostile layer unpacked without an error")
			}
			if c.name != "hard link to a climbing target" && strings.Contains(c.name, "dot-dot") && !errors.Is(err, errUnsafeLayer) {
				t.Errorf("err = %v, want errUnsafeLayer", err)
			}
			var found []string
			_ = filepath.WalkDir(base, func(p string, d os.DirEntry, _ error) error {
				if d != nil && d.Name() == "pwned" || d != nil && d.Name() == "sub" {
					found = append(found, p)
				}
				return nil
			})
			for _, p := range found {
				if !strings.HasPrefix(p, root+string(filepath.Separator)) {
					t.Errorf("the layer wrote %s, outside its root %s", p, root)
				}
			}
			if b, _ := os.ReadFile(filepath.Join(outside, "secret")); string(b) != "host secret" {
				t.Errorf("outside file now %q", b)
			}
		})
	}
}

func TestUnpackLimits(t *testing.T) {
	dir := t.TempDir()
	big := layerTar(t, tentry{name: "a", body: strings.Repeat("x", 600)}, tentry{name: "b", body: strings.Repeat("y", 600)})
	err := unpackLayer(bytes.NewReader(big), filepath.Join(dir, "1"), layerLimits{maxBytes: 1000, maxEntries: 10})
	if !errors.Is(err, errUnsafeLayer) || !strings.Contains(err.Error(), "limit") {
		t.Errorf("1200 bytes under a 1000-byte limit: err = %v", err)
	}
	var many []tentry
	for i := range 11 {
		many = append(many, tentry{name: "f" + strings.Repeat("x", i)})
	}
	err = unpackLayer(bytes.NewReader(layerTar(t, many...)), filepath.Join(dir, "2"), layerLimits{maxBytes: 1000, maxEntries: 10})
	if !errors.Is(err, errUnsafeLayer) || !strings.Contains(err.Error(), "10 entries") {
		t.Errorf("11 entries under a 10-entry limit: err = %v", err)
	}
	// A truncated tar is an error, not a partial root.
	ok := layerTar(t, tentry{name: "a", body: strings.Repeat("x", 600)})
	if err := unpackLayer(bytes.NewReader(ok[:700]), filepath.Join(dir, "3"), testLimits); err == nil {
		t.Error("a truncated layer unpacked without an error")
	}
}

// TestApplyLayersWhiteouts stacks two layers: the upper one deletes a file (.wh.x), a
// directory (.wh.c), hides a directory's lower contents (.wh..wh..opq), replaces a file by
// a directory and keeps modes and symlinks.
func TestApplyLayersWhiteouts(t *testing.T) {
	dir := t.TempDir()
	l1 := filepath.Join(dir, "l1")
	l2 := filepath.Join(dir, "l2")
	must(t, unpackLayer(bytes.NewReader(layerTar(t,
		tentry{name: "a/", typ: tar.TypeDir, mode: 0o755},
		tentry{name: "a/x", body: "x"}, tentry{name: "a/y", body: "y"},
		tentry{name: "b/z", body: "z"}, tentry{name: "b/sub/deep", body: "d"},
		tentry{name: "c/keep", body: "k"},
		tentry{name: "f", body: "file"},
		tentry{name: "bin/prog", body: "#!", mode: 0o755},
		tentry{name: "lib", typ: tar.TypeSymlink, link: "usr/lib"},
		tentry{name: "usr/lib/libc.so", body: "elf"},
		tentry{name: "tmp/", typ: tar.TypeDir, mode: 0o1777},
	)), l1, testLimits))
	must(t, unpackLayer(bytes.NewReader(layerTar(t,
		tentry{name: "a/.wh.x"},
		tentry{name: "b/.wh..wh..opq"}, tentry{name: "b/new", body: "n"},
		tentry{name: ".wh.c"},
		tentry{name: "f/", typ: tar.TypeDir, mode: 0o700},
		tentry{name: "f/inner", body: "i"},
		tentry{name: "lib/libextra.so", body: "extra"},
	)), l2, testLimits))
	rootDir := filepath.Join(dir, "root")
	must(t, (&PulledImage{Ref: "test", Layers: []string{l1, l2}}).Unpacked(rootDir))

	got := tree(t, rootDir)
	want := []string{"a/", "a/y", "b/", "b/new", "bin/", "bin/prog", "f/", "f/inner", "lib@usr/lib",
		"tmp/", "usr/", "usr/lib/", "usr/lib/libc.so", "usr/lib/libextra.so"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("root:\n got %v\nwant %v", got, want)
	}
	if fi, err := os.Stat(filepath.Join(rootDir, "bin/prog")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("bin/prog: %v %v, want mode 0755", fi, err)
	}
	if fi, err := os.Stat(filepath.Join(rootDir, "tmp")); err != nil || fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
		t.Errorf("tmp: %v %v, want 1777", fi, err)
	}
	if fi, err := os.Stat(filepath.Join(rootDir, "f")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("f: %v %v, want a 0700 directory", fi, err)
	}
	// The layer cache is untouched by assembling a root from it.
	if _, err := os.Stat(filepath.Join(l1, "a/x")); err != nil {
		t.Errorf("lower layer lost a/x: %v", err)
	}
}

// tree lists a directory: dirs with a trailing /, symlinks as name@target.
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case d.IsDir():
			rel += "/"
		case d.Type()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			rel += "@" + target
		}
		out = append(out, rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
