package sandbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// PullLimits bound what the node agent pulls and unpacks for one image. The defaults are
// far above Weft's images (one layer each, ≤ 25 MiB compressed, ≤ 70 MiB unpacked) and
// below what would fill the state dir's disk by accident.
type PullLimits struct {
	// MaxLayers refuses images with more layers (default 64; Docker's overlay driver
	// stops at 128).
	MaxLayers int
	// MaxImageBytes refuses images whose compressed layers sum to more (default 1 GiB).
	MaxImageBytes int64
	// MaxLayerBytes refuses a layer whose files unpack to more (default 2 GiB).
	MaxLayerBytes int64
	// MaxLayerEntries refuses a layer with more tar entries (default 100,000).
	MaxLayerEntries int
}

func (l PullLimits) withDefaults() PullLimits {
	if l.MaxLayers <= 0 {
		l.MaxLayers = 64
	}
	if l.MaxImageBytes <= 0 {
		l.MaxImageBytes = 1 << 30
	}
	if l.MaxLayerBytes <= 0 {
		l.MaxLayerBytes = 2 << 30
	}
	if l.MaxLayerEntries <= 0 {
		l.MaxLayerEntries = 100_000
	}
	return l
}

// ImageStore pulls images for the node agent and keeps their layers unpacked, one
// directory per layer digest (Dir/layers/sha256-<hex>), so pods of one image share one
// download and one unpack; a container's root is assembled from them (rootfs.go). The
// cache lives as long as the state dir: a new `weft dev` run starts with an empty one.
type ImageStore struct {
	Dir    string
	Limits PullLimits
	// Platform is the image picked from an index; default linux/<this machine's arch>.
	Platform v1.Platform
	// Options go to go-containerregistry's remote (transport, auth) after the defaults.
	Options []remote.Option

	mu    sync.Mutex
	locks map[string]*sync.Mutex // per layer digest: one unpack at a time
}

// PulledImage is an image ready to be assembled into a container root.
type PulledImage struct {
	Ref    string
	Digest v1.Hash // of the platform's image manifest
	Config v1.Config
	Layers []string // unpacked layer dirs, lowest first
}

// Pull resolves ref (by tag or digest; an index gives the store's platform), checks the
// limits against the manifest before fetching a layer, and unpacks each layer it does not
// hold yet. Errors name the image and say what to do.
func (s *ImageStore) Pull(ctx context.Context, ref string) (*PulledImage, error) {
	lim := s.Limits.withDefaults()
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("image %q is not a valid reference: %w", ref, err)
	}
	plat := s.Platform
	if plat.OS == "" {
		plat = v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	}
	opts := append([]remote.Option{remote.WithContext(ctx), remote.WithPlatform(plat)}, s.Options...)
	desc, err := remote.Get(r, opts...)
	if err != nil {
		return nil, fmt.Errorf("pulling %s: %w (is it pushed? make images REGISTRY=%s/...)", ref, err, r.Context().RegistryStr())
	}
	img, err := desc.Image()
	if err != nil {
		return nil, fmt.Errorf("pulling %s: no %s image in it: %w", ref, plat, err)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("pulling %s: manifest: %w", ref, err)
	}
	if len(m.Layers) > lim.MaxLayers {
		return nil, fmt.Errorf("image %s has %d layers; weft dev runs images of at most %d", ref, len(m.Layers), lim.MaxLayers)
	}
	var total int64
	for _, l := range m.Layers {
		if l.Size < 0 {
			return nil, fmt.Errorf("image %s: layer %s has a negative size", ref, l.Digest)
		}
		total += l.Size
	}
	if total > lim.MaxImageBytes {
		return nil, fmt.Errorf("image %s is %d MiB compressed; weft dev pulls images of at most %d MiB", ref, total>>20, lim.MaxImageBytes>>20)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("pulling %s: config: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return nil, err
	}
	out := &PulledImage{Ref: ref, Digest: d, Config: cf.Config}
	for _, l := range m.Layers {
		dir, err := s.layer(img, l, lim)
		if err != nil {
			return nil, fmt.Errorf("pulling %s: layer %s: %w", ref, l.Digest, err)
		}
		out.Layers = append(out.Layers, dir)
	}
	return out, nil
}

// layer returns the unpacked directory of layer desc, fetching and unpacking it once.
func (s *ImageStore) layer(img v1.Image, desc v1.Descriptor, lim PullLimits) (string, error) {
	if desc.Digest.Algorithm != "sha256" || len(desc.Digest.Hex) != 64 {
		return "", fmt.Errorf("digest %s: only sha256 layers are pulled", desc.Digest)
	}
	key := "sha256-" + desc.Digest.Hex
	dir := filepath.Join(s.Dir, "layers", key)
	s.mu.Lock()
	if s.locks == nil {
		s.locks = map[string]*sync.Mutex{}
	}
	mu := s.locks[key]
	if mu == nil {
		mu = &sync.Mutex{}
		s.locks[key] = mu
	}
	s.mu.Unlock()
	mu.Lock()
	defer mu.Unlock()
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return dir, nil
	}
	tmpDir := filepath.Join(s.Dir, "tmp")
	if err := os.MkdirAll(tmpDir, 0o700); err != nil {
		return "", err
	}
	blob, err := s.download(img, desc, tmpDir)
	if err != nil {
		return "", err
	}
	defer os.Remove(blob)
	layer, err := tarball.LayerFromFile(blob) // gzip, zstd or plain, by its first bytes
	if err != nil {
		return "", err
	}
	rc, err := layer.Uncompressed()
	if err != nil {
		return "", fmt.Errorf("decompressing: %w", err)
	}
	defer rc.Close()
	work, err := os.MkdirTemp(tmpDir, key+"-")
	if err != nil {
		return "", err
	}
	if err := unpackLayer(rc, work, layerLimits{maxBytes: lim.MaxLayerBytes, maxEntries: lim.MaxLayerEntries}); err != nil {
		_ = os.RemoveAll(work)
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(work, dir); err != nil {
		_ = os.RemoveAll(work)
		return "", err
	}
	return dir, nil
}

// download copies the compressed blob to a file under tmpDir, reading at most its declared
// size and checking its digest: a registry cannot feed more bytes, or other bytes, than the
// manifest names.
func (s *ImageStore) download(img v1.Image, desc v1.Descriptor, tmpDir string) (string, error) {
	l, err := img.LayerByDigest(desc.Digest)
	if err != nil {
		return "", err
	}
	rc, err := l.Compressed()
	if err != nil {
		return "", fmt.Errorf("fetching: %w", err)
	}
	defer rc.Close()
	f, err := os.CreateTemp(tmpDir, "blob-")
	if err != nil {
		return "", err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(rc, desc.Size+1))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	switch {
	case err != nil:
		err = fmt.Errorf("fetching: %w", err)
	case n != desc.Size:
		err = fmt.Errorf("the registry sent %d bytes where the manifest says %d", n, desc.Size)
	case hex.EncodeToString(h.Sum(nil)) != desc.Digest.Hex:
		err = errors.New("the registry sent bytes whose digest is not the manifest's")
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

// Unpacked builds a container root at dir from the image's layers, lowest first.
func (p *PulledImage) Unpacked(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	for _, l := range p.Layers {
		if err := applyLayer(l, root); err != nil {
			return fmt.Errorf("assembling the root of %s from layer %s: %w", p.Ref, filepath.Base(l), err)
		}
	}
	return nil
}

// owner is a file's uid and gid (Linux).
func owner(fi os.FileInfo) (int, int) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid), int(st.Gid)
	}
	return 0, 0
}
