package image

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"sort"
	"strings"
	"time"
)

// A base layer made from the build host's own files, for programs a Go binary cannot
// replace: weft-init runs iptables-restore, a C program with shared libraries and plugins,
// and no base image can be downloaded here. HostLayer copies the programs, every shared
// library they need (their ELF DT_NEEDED entries, followed recursively, found in the
// library directories), the ELF interpreter, and whole plugin directories (the xtables
// match/target modules iptables dlopens), each at its host path, with the symlinks on the
// way kept as symlinks (Debian's /lib -> usr/lib, /usr/sbin/iptables-restore ->
// /etc/alternatives/... -> xtables-nft-multi). The result runs in a chroot holding nothing
// else. Its digest is a function of the host's packages and created: one host, one digest.

// DebianLibDirs are where Debian's dynamic loader looks without an ld.so.cache (its
// multiarch directories are built in), for amd64 and arm64.
var DebianLibDirs = []string{
	"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
	"/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
	"/lib64", "/usr/lib64", "/lib", "/usr/lib",
}

// maxHostLayerBytes bounds what HostLayer copies (iptables with its libraries and modules
// is ~6 MiB on Debian 12): a path list that pulls in a whole /usr is a mistake.
const maxHostLayerBytes = 256 << 20

type hostEntry struct {
	typ    byte // tar.TypeDir, TypeReg, TypeSymlink
	mode   fs.FileMode
	target string // symlink
	src    string // host file to read
	size   int64
}

type hostCollector struct {
	libDirs []string
	entries map[string]hostEntry // by path without the leading /
	seen    map[string]bool      // ELF files whose needs were followed
	total   int64
}

// HostLayer returns the uncompressed tar of the host files at paths (files, or
// directories whose files are all taken, one level deep) and what they need to run, and
// the list of regular files in it. Every header is fixed but the file's mode: root owns
// everything and every time is created.
func HostLayer(paths, libDirs []string, created time.Time) ([]byte, []string, error) {
	c := &hostCollector{libDirs: libDirs, entries: map[string]hostEntry{}, seen: map[string]bool{}}
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, nil, fmt.Errorf("base layer: %w", err)
		}
		if !fi.IsDir() {
			if err := c.add(p, 0); err != nil {
				return nil, nil, err
			}
			continue
		}
		des, err := os.ReadDir(p)
		if err != nil {
			return nil, nil, err
		}
		if err := c.add(p, 0); err != nil {
			return nil, nil, err
		}
		for _, de := range des {
			if err := c.add(path.Join(p, de.Name()), 0); err != nil {
				return nil, nil, err
			}
		}
	}
	return c.tar(created)
}

// add records p and every path element on the way, following symlinks (recorded as such)
// to the file they name; an ELF file's libraries and interpreter are added too.
func (c *hostCollector) add(p string, depth int) error {
	if depth > 40 {
		return fmt.Errorf("base layer: too many symlinks resolving %s", p)
	}
	p = path.Clean(p)
	if !path.IsAbs(p) {
		return fmt.Errorf("base layer: %s is not absolute", p)
	}
	els := strings.Split(strings.TrimPrefix(p, "/"), "/")
	cur := ""
	for i, el := range els {
		cur += "/" + el
		fi, err := os.Lstat(cur)
		if err != nil {
			return fmt.Errorf("base layer: %w", err)
		}
		name := cur[1:]
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(cur)
			if err != nil {
				return err
			}
			c.entries[name] = hostEntry{typ: tar.TypeSymlink, mode: 0o777, target: target}
			resolved := target
			if !path.IsAbs(target) {
				resolved = path.Join(path.Dir(cur), target)
			}
			return c.add(path.Join(append([]string{resolved}, els[i+1:]...)...), depth+1)
		case fi.IsDir():
			if _, ok := c.entries[name]; !ok {
				c.entries[name] = hostEntry{typ: tar.TypeDir, mode: fi.Mode().Perm()}
			}
		case fi.Mode().IsRegular() && i == len(els)-1:
			if _, ok := c.entries[name]; ok {
				return nil
			}
			if c.total += fi.Size(); c.total > maxHostLayerBytes {
				return fmt.Errorf("base layer: more than %d MiB of host files", maxHostLayerBytes>>20)
			}
			c.entries[name] = hostEntry{typ: tar.TypeReg, mode: fi.Mode().Perm(), src: cur, size: fi.Size()}
			return c.needs(cur)
		default:
			return fmt.Errorf("base layer: %s is neither a file, a directory nor a symlink", cur)
		}
	}
	return nil
}

// needs adds the interpreter and DT_NEEDED libraries of an ELF file (nothing for others).
func (c *hostCollector) needs(file string) error {
	if c.seen[file] {
		return nil
	}
	c.seen[file] = true
	f, err := elf.Open(file)
	if err != nil {
		var fe *elf.FormatError
		if errors.As(err, &fe) {
			return nil // not ELF: a script or data file
		}
		return fmt.Errorf("base layer: reading %s: %w", file, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type != elf.PT_INTERP {
			continue
		}
		b := make([]byte, prog.Filesz)
		if _, err := prog.ReadAt(b, 0); err != nil {
			return fmt.Errorf("base layer: interpreter of %s: %w", file, err)
		}
		if err := c.add(strings.TrimRight(string(b), "\x00"), 0); err != nil {
			return err
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		return fmt.Errorf("base layer: DT_NEEDED of %s: %w", file, err)
	}
	for _, lib := range libs {
		found := ""
		for _, d := range c.libDirs {
			if fi, err := os.Stat(path.Join(d, lib)); err == nil && fi.Mode().IsRegular() {
				found = path.Join(d, lib)
				break
			}
		}
		if found == "" {
			return fmt.Errorf("base layer: %s needs %s, found in none of %s", file, lib, strings.Join(c.libDirs, " "))
		}
		if err := c.add(found, 0); err != nil {
			return err
		}
	}
	return nil
}

func (c *hostCollector) tar(created time.Time) ([]byte, []string, error) {
	names := make([]string, 0, len(c.entries))
	for n := range c.entries {
		names = append(names, n)
	}
	sort.Strings(names) // a parent sorts before what it holds
	var buf bytes.Buffer
	var files []string
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := c.entries[n]
		h := &tar.Header{Name: n, Typeflag: e.typ, Mode: int64(e.mode), ModTime: created.UTC(),
			Uname: "root", Gname: "root", Format: tar.FormatPAX}
		var data []byte
		switch e.typ {
		case tar.TypeDir:
			h.Name += "/"
		case tar.TypeSymlink:
			h.Linkname = e.target
		case tar.TypeReg:
			var err error
			if data, err = os.ReadFile(e.src); err != nil {
				return nil, nil, err
			}
			h.Size = int64(len(data))
			files = append(files, "/"+n)
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, nil, err
	}
	return buf.Bytes(), files, nil
}

// IptablesPrograms are the iptables programs weft-init runs (cmd/weft-init's tool: auto
// mode, and --iptables=nft), as found on the build host's PATH.
var IptablesPrograms = []string{
	"iptables-restore", "iptables-save", "ip6tables-restore", "ip6tables-save",
	"iptables-nft-restore", "iptables-nft-save", "ip6tables-nft-restore", "ip6tables-nft-save",
}

// ErrNoIptables says the build host has no iptables to copy.
var ErrNoIptables = errors.New("no iptables on this host (Debian: apt-get install iptables)")

// debianTriplet is Debian's multiarch directory name of a Go architecture.
var debianTriplet = map[string]string{"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}

// IptablesLayer is the HostLayer of the host's iptables programs (IptablesPrograms, which
// on Debian 12 are all xtables-nft-multi: the nft backend) with their libraries and the
// xtables modules directory (matches and targets such as owner and REDIRECT are plugins
// iptables dlopens from there). p must be the host's platform.
func IptablesLayer(p Platform, created time.Time) ([]byte, []string, error) {
	var paths []string
	for _, prog := range IptablesPrograms {
		pp, err := exec.LookPath(prog)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %s not found", ErrNoIptables, prog)
		}
		paths = append(paths, pp)
	}
	modules := "/usr/lib/" + debianTriplet[p.Arch] + "/xtables"
	if fi, err := os.Stat(modules); err != nil || !fi.IsDir() {
		return nil, nil, fmt.Errorf("iptables is installed but its modules directory %s is not there", modules)
	}
	return HostLayer(append(paths, modules), DebianLibDirs, created)
}
