package sandbox

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Whiteouts, as the OCI image spec (layer.md) defines them: an entry .wh.NAME in a layer
// deletes NAME of the layers below; an entry .wh..wh..opq in a directory hides everything
// the layers below put in that directory.
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// errUnsafeLayer marks a layer refused for what it holds, not for an I/O failure.
var errUnsafeLayer = errors.New("unsafe image layer")

// layerLimits bound one layer's unpacking.
type layerLimits struct {
	maxBytes   int64 // file content, uncompressed
	maxEntries int
}

// entryName turns a tar entry's name into a clean path relative to the layer root. A
// leading / or ./ is dropped (tar writers differ); a ".." element anywhere is refused,
// whether or not the cleaned path would stay inside: no image of ours has one, and a name
// that climbs is how a hostile layer writes outside the root.
func entryName(name string) (string, error) {
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%w: entry name %q holds a NUL byte", errUnsafeLayer, name)
	}
	for _, el := range strings.Split(name, "/") {
		if el == ".." {
			return "", fmt.Errorf("%w: entry %q climbs out of the image root (a \"..\" element)", errUnsafeLayer, name)
		}
	}
	p := path.Clean("/" + name)
	if p == "/" {
		return ".", nil
	}
	return p[1:], nil
}

// unpackLayer extracts the uncompressed tar r into dir, which must not exist yet or be
// empty. Every write goes through an os.Root opened on dir, so no entry — a name, a
// symlink an earlier entry planted, a hard link's target — can reach a file outside it:
// os.Root refuses a path that resolves outside, symlinks included. Whiteout entries are
// kept as empty files under their own names; applyLayer (rootfs.go) acts on them when it
// stacks layers. Devices and FIFOs are skipped: a container gets /dev/null and friends from
// the host (rootfs.go), never from an image.
func unpackLayer(r io.Reader, dir string, lim layerLimits) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	tr := tar.NewReader(r)
	var total int64
	for n := 0; ; n++ {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading the layer's tar: %w", err)
		}
		if n >= lim.maxEntries {
			return fmt.Errorf("%w: more than %d entries (weft dev's limit per layer)", errUnsafeLayer, lim.maxEntries)
		}
		name, err := entryName(h.Name)
		if err != nil {
			return err
		}
		if name == "." {
			continue
		}
		if err := unpackEntry(root, tr, h, name, lim.maxBytes-total); err != nil {
			return fmt.Errorf("layer entry %q: %w", h.Name, err)
		}
		if h.Typeflag == tar.TypeReg {
			total += h.Size
		}
	}
}

// unpackEntry writes one entry; budget is what is left of the layer's byte limit.
func unpackEntry(root *os.Root, tr *tar.Reader, h *tar.Header, name string, budget int64) error {
	mode := fs.FileMode(h.Mode).Perm() | modeBits(h.Mode)
	parent := path.Dir(name)
	if parent != "." {
		if err := root.MkdirAll(parent, 0o755); err != nil {
			return err
		}
	}
	switch h.Typeflag {
	case tar.TypeDir:
		if fi, err := root.Lstat(name); err == nil && !fi.IsDir() {
			if err := root.RemoveAll(name); err != nil {
				return err
			}
		}
		if err := root.MkdirAll(name, 0o755); err != nil {
			return err
		}
		if err := root.Chmod(name, mode); err != nil {
			return err
		}
	case tar.TypeReg:
		if h.Size > budget {
			return fmt.Errorf("%w: the layer unpacks to more than weft dev's limit of %d MiB", errUnsafeLayer, (budget+h.Size)>>20)
		}
		if err := root.RemoveAll(name); err != nil {
			return err
		}
		f, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		_, err = io.CopyN(f, tr, h.Size)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		if err := root.Chmod(name, mode); err != nil {
			return err
		}
	case tar.TypeSymlink:
		if err := root.RemoveAll(name); err != nil {
			return err
		}
		// The target is data, resolved inside the container's root when the container runs;
		// later entries cannot write through it to outside (os.Root).
		if err := root.Symlink(h.Linkname, name); err != nil {
			return err
		}
	case tar.TypeLink:
		target, err := entryName(h.Linkname)
		if err != nil {
			return err
		}
		if err := root.RemoveAll(name); err != nil {
			return err
		}
		if err := root.Link(target, name); err != nil {
			return err
		}
	default: // devices, FIFOs, PAX global headers
		return nil
	}
	return root.Lchown(name, h.Uid, h.Gid)
}

// modeBits carries setuid, setgid and sticky from a tar mode to an fs.FileMode.
func modeBits(m int64) fs.FileMode {
	var out fs.FileMode
	if m&0o4000 != 0 {
		out |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		out |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		out |= fs.ModeSticky
	}
	return out
}

// applyLayer stacks an unpacked layer (unpackLayer's dir) onto root, the container's root
// directory being assembled: whiteouts delete what lower layers put there, an opaque
// directory is emptied before its entries are copied, everything else is copied (files
// replace files, owners and modes kept). Writes go through os.Root: a symlink a lower
// layer left cannot redirect a copy outside root.
func applyLayer(layerDir string, root *os.Root) error {
	return filepath.WalkDir(layerDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(layerDir, p)
		if err != nil {
			return err
		}
		base := d.Name()
		switch {
		case rel == ".":
			return clearIfOpaque(p, root, ".")
		case base == whiteoutOpaque:
			return nil
		case strings.HasPrefix(base, whiteoutPrefix):
			return root.RemoveAll(filepath.Join(filepath.Dir(rel), strings.TrimPrefix(base, whiteoutPrefix)))
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		uid, gid := owner(fi)
		switch {
		case fi.IsDir():
			cur, err := root.Lstat(rel)
			if err == nil && cur.Mode()&fs.ModeSymlink != 0 {
				// A lower layer's symlink to a directory (lib -> usr/lib): the layer's
				// entries go into that directory, as when a runtime extracts onto the
				// merged root. os.Root keeps the resolution inside root.
				if st, err := root.Stat(rel); err == nil && st.IsDir() {
					return clearIfOpaque(p, root, rel)
				}
			}
			if err == nil && !cur.IsDir() {
				if err := root.RemoveAll(rel); err != nil {
					return err
				}
			}
			if err := root.MkdirAll(rel, 0o755); err != nil {
				return err
			}
			if err := root.Chmod(rel, fi.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
				return err
			}
			if err := clearIfOpaque(p, root, rel); err != nil {
				return err
			}
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := root.RemoveAll(rel); err != nil {
				return err
			}
			if err := root.Symlink(target, rel); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			if err := copyInto(root, rel, p, fi.Mode()); err != nil {
				return err
			}
		default:
			return nil
		}
		return root.Lchown(rel, uid, gid)
	})
}

// clearIfOpaque empties rel in root when the layer's directory p is marked opaque.
func clearIfOpaque(p string, root *os.Root, rel string) error {
	if _, err := os.Lstat(filepath.Join(p, whiteoutOpaque)); err != nil {
		return nil //nolint:nilerr // no marker: nothing to hide
	}
	f, err := root.Open(rel)
	if err != nil {
		return err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := root.RemoveAll(filepath.Join(rel, n)); err != nil {
			return err
		}
	}
	return nil
}

func copyInto(root *os.Root, rel, src string, mode fs.FileMode) error {
	if err := root.RemoveAll(rel); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := root.OpenFile(rel, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return root.Chmod(rel, mode&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky))
}
