// Package image assembles OCI images of Weft's static Go binaries without a container
// runtime and without a base image: it takes one built binary per platform and the release
// metadata (version, revision, a fixed creation time) and produces a one-layer image per
// platform and a multi-platform index. The same inputs give byte-for-byte the same blobs, so
// the same digests: every timestamp is the metadata's Created, every tar header is fixed,
// and entries are written in one order.
package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// User is the account an image runs as. Its group has the same id and name.
type User struct {
	Name string
	UID  int
}

var (
	// NonRoot is distroless's non-root user, for every image but the sidecar.
	NonRoot = User{Name: "nonroot", UID: 65532}
	// Proxy is the sidecar's user. The mesh's traffic capture exempts this UID (Istio's
	// proxy UID, 1337) so the sidecar's own outbound connections are not redirected back
	// to itself; internal/inject and internal/workload set runAsUser: 1337 to match.
	Proxy = User{Name: "weft-proxy", UID: 1337}
)

// Spec says what one image holds, whatever the platform.
type Spec struct {
	// Name is the repository's last element, e.g. weft-manager.
	Name string
	// Title is the org.opencontainers.image.title label (a short description).
	Title string
	// Binary is the absolute path of the program in the image and its entrypoint, e.g.
	// /manager (config/manager runs command: ["/manager"]).
	Binary string
	// User runs the entrypoint.
	User User
	// CACerts, when set, is a PEM bundle copied to /etc/ssl/certs/ca-certificates.crt, where
	// Go's crypto/x509 looks on Linux. Only images that dial TLS servers outside the cluster
	// with the system roots need it; the in-cluster API server's CA comes from the service
	// account mount.
	CACerts []byte
	// Extra are more programs of the image by platform: absolute path → bytes, in the
	// program's layer (the sidecar image's /weft-init).
	Extra map[Platform]map[string][]byte
	// Base is the uncompressed tar of a layer below the program's, by platform (HostLayer:
	// iptables for weft-init). A platform without one gets none; with one, PATH also
	// searches /usr/sbin, /usr/bin, /sbin and /bin.
	Base map[Platform][]byte
}

// Meta is the release metadata every image of one build shares.
type Meta struct {
	Source   string    // org.opencontainers.image.source, e.g. https://github.com/weftmesh/weft
	Revision string    // the commit
	Version  string    // the tag, e.g. v0.1.0
	Licenses string    // an SPDX expression, e.g. Apache-2.0
	Created  time.Time // fixed (the commit time) so rebuilding gives the same digest
}

// Platform is a GOOS/GOARCH pair.
type Platform struct{ OS, Arch string }

func (p Platform) String() string { return p.OS + "/" + p.Arch }

// ParsePlatform reads "linux/amd64".
func ParsePlatform(s string) (Platform, error) {
	os, arch, ok := strings.Cut(s, "/")
	if !ok || os == "" || arch == "" || strings.Contains(arch, "/") {
		return Platform{}, fmt.Errorf("platform %q: want os/arch, e.g. linux/amd64", s)
	}
	return Platform{OS: os, Arch: arch}, nil
}

// Labels are the org.opencontainers.image.* labels of an image (also the index's annotations).
func Labels(s Spec, m Meta) map[string]string {
	return map[string]string{
		"org.opencontainers.image.source":   m.Source,
		"org.opencontainers.image.revision": m.Revision,
		"org.opencontainers.image.version":  m.Version,
		"org.opencontainers.image.created":  m.Created.UTC().Format(time.RFC3339),
		"org.opencontainers.image.title":    s.Title,
		"org.opencontainers.image.licenses": m.Licenses,
	}
}

// Image builds the single-platform image of binary (the program's bytes).
func Image(s Spec, m Meta, p Platform, binary []byte) (v1.Image, error) {
	if !path.IsAbs(s.Binary) || path.Clean(s.Binary) != s.Binary || s.Binary == "/" {
		return nil, fmt.Errorf("image %s: binary path %q must be absolute and clean", s.Name, s.Binary)
	}
	if len(binary) == 0 {
		return nil, fmt.Errorf("image %s (%s): empty binary", s.Name, p)
	}
	created := m.Created.UTC()
	rootfs, err := rootFS(s, created, binary, s.Extra[p])
	if err != nil {
		return nil, fmt.Errorf("image %s (%s): %w", s.Name, p, err)
	}
	layer, err := gzipLayer(rootfs)
	if err != nil {
		return nil, fmt.Errorf("image %s (%s): layer: %w", s.Name, p, err)
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	pathEnv := "PATH=/"
	if hostTar := s.Base[p]; len(hostTar) > 0 {
		bl, err := gzipLayer(hostTar)
		if err != nil {
			return nil, fmt.Errorf("image %s (%s): base layer: %w", s.Name, p, err)
		}
		if base, err = mutate.Append(base, mutate.Addendum{Layer: bl, History: v1.History{
			Created:   v1.Time{Time: created},
			CreatedBy: "weft hack/images: host files (HostLayer)",
			Comment:   "programs, their shared libraries and plugins, copied from the build host",
		}}); err != nil {
			return nil, fmt.Errorf("image %s (%s): %w", s.Name, p, err)
		}
		pathEnv = "PATH=/:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	img, err := mutate.Append(base, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: created},
			CreatedBy: "weft hack/images: " + s.Binary + " " + m.Version,
			Comment:   "static Go binary, /etc/passwd, /etc/group, /tmp",
		},
	})
	if err != nil {
		return nil, fmt.Errorf("image %s (%s): %w", s.Name, p, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: created}
	cf.OS, cf.Architecture = p.OS, p.Arch
	uid := strconv.Itoa(s.User.UID)
	cf.Config = v1.Config{
		Entrypoint: []string{s.Binary},
		User:       uid + ":" + uid,
		WorkingDir: "/",
		Env:        []string{pathEnv, "HOME=/tmp"},
		Labels:     Labels(s, m),
	}
	if len(s.CACerts) > 0 {
		cf.Config.Env = append(cf.Config.Env, "SSL_CERT_FILE="+caPath)
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("image %s (%s): config: %w", s.Name, p, err)
	}
	return img, nil
}

// Index builds the image of each platform's binary and the index over them, platforms in
// sorted order (so map iteration cannot reorder the index).
func Index(s Spec, m Meta, binaries map[Platform][]byte) (v1.ImageIndex, error) {
	plats := make([]Platform, 0, len(binaries))
	for p := range binaries {
		plats = append(plats, p)
	}
	if len(plats) == 0 {
		return nil, fmt.Errorf("image %s: no platforms", s.Name)
	}
	sort.Slice(plats, func(i, j int) bool { return plats[i].String() < plats[j].String() })
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	adds := make([]mutate.IndexAddendum, 0, len(plats))
	for _, p := range plats {
		img, err := Image(s, m, p, binaries[p])
		if err != nil {
			return nil, err
		}
		adds = append(adds, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: p.OS, Architecture: p.Arch}},
		})
	}
	idx = mutate.AppendManifests(idx, adds...)
	annotated, ok := mutate.Annotations(idx, Labels(s, m)).(v1.ImageIndex)
	if !ok {
		return nil, fmt.Errorf("image %s: annotating the index", s.Name)
	}
	return annotated, nil
}

const caPath = "/etc/ssl/certs/ca-certificates.crt"

// rootFS is the layer's tar: directories, then files, in a fixed order with fixed headers.
func rootFS(s Spec, created time.Time, binary []byte, extra map[string][]byte) ([]byte, error) {
	u := s.User
	passwd := "root:x:0:0:root:/root:/sbin/nologin\n"
	group := "root:x:0:\n"
	if u.UID != 0 {
		passwd += fmt.Sprintf("%s:x:%d:%d:%s:/tmp:/sbin/nologin\n", u.Name, u.UID, u.UID, u.Name)
		group += fmt.Sprintf("%s:x:%d:\n", u.Name, u.UID)
	}
	type entry struct {
		name string
		mode int64
		data []byte // nil: a directory
	}
	entries := []entry{
		{name: "etc/", mode: 0o755},
		{name: "etc/group", mode: 0o644, data: []byte(group)},
		{name: "etc/passwd", mode: 0o644, data: []byte(passwd)},
	}
	if len(s.CACerts) > 0 {
		entries = append(entries,
			entry{name: "etc/ssl/", mode: 0o755},
			entry{name: "etc/ssl/certs/", mode: 0o755},
			entry{name: strings.TrimPrefix(caPath, "/"), mode: 0o644, data: s.CACerts})
	}
	// /tmp is world-writable and sticky, as on any Linux root: the only place a
	// non-root process may write when the pod does not mount a volume.
	entries = append(entries, entry{name: "tmp/", mode: 0o1777})
	progs := map[string][]byte{s.Binary: binary}
	for p, b := range extra {
		if !path.IsAbs(p) || path.Clean(p) != p || p == "/" {
			return nil, fmt.Errorf("extra program path %q must be absolute and clean", p)
		}
		if _, dup := progs[p]; dup || p == "/tmp" || strings.HasPrefix(p, "/etc/") {
			return nil, fmt.Errorf("extra program path %q collides with the image's files", p)
		}
		progs[p] = b
	}
	names := make([]string, 0, len(progs))
	for p := range progs {
		names = append(names, p)
	}
	sort.Strings(names)
	dirs := map[string]bool{"etc": true, "tmp": true}
	for _, p := range names {
		if dir := path.Dir(p); dir != "/" {
			parts := strings.Split(strings.TrimPrefix(dir, "/"), "/")
			for i := range parts {
				d := strings.Join(parts[:i+1], "/")
				if !dirs[d] {
					dirs[d] = true
					entries = append(entries, entry{name: d + "/", mode: 0o755})
				}
			}
		}
		entries = append(entries, entry{name: strings.TrimPrefix(p, "/"), mode: 0o755, data: progs[p]})
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{
			Name:    e.name,
			Mode:    e.mode,
			ModTime: created,
			Uid:     0, Gid: 0, Uname: "root", Gname: "root",
			Format: tar.FormatPAX,
		}
		if e.data == nil {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("tar header %s: %w", e.name, err)
		}
		if e.data != nil {
			if _, err := tw.Write(e.data); err != nil {
				return nil, fmt.Errorf("tar %s: %w", e.name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// gzipLayer is an OCI layer of the uncompressed tar b, compressed by compress.
func gzipLayer(b []byte) (v1.Layer, error) {
	gz, err := compress(b)
	if err != nil {
		return nil, err
	}
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(gz)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// compress gzips b. The gzip header carries no name and a zero time, and Go's compressor is
// deterministic for a given level and Go release, so the compressed digest is stable too.
func compress(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.DefaultCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(b); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
