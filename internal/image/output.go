package image

import (
	"context"
	"fmt"
	"os"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Named is an index and the reference (repository:tag) it is published as.
type Named struct {
	Ref   string
	Index v1.ImageIndex
}

// WriteLayout writes a fresh OCI image layout at dir (removing what was there) holding every
// index, in the given order, each annotated with its reference. A fresh layout has no
// leftovers from earlier builds, so index.json is a function of the indexes alone.
func WriteLayout(dir string, images []Named) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("creating OCI layout %s: %w", dir, err)
	}
	for _, n := range images {
		err := p.AppendIndex(n.Index, layout.WithAnnotations(map[string]string{
			"org.opencontainers.image.ref.name": n.Ref,
			"io.containerd.image.name":          n.Ref,
		}))
		if err != nil {
			return fmt.Errorf("writing %s to %s: %w", n.Ref, dir, err)
		}
	}
	return nil
}

// Push writes the index and its images to the registry under ref (repository:tag). Plain
// HTTP is used for localhost and private addresses (go-containerregistry's rule);
// credentials come from the Docker config (~/.docker/config.json), as docker login wrote them.
func Push(ctx context.Context, ref string, idx v1.ImageIndex) error {
	r, err := name.ParseReference(ref)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", ref, err)
	}
	if err := remote.WriteIndex(r, idx, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return fmt.Errorf("pushing %s: %w", ref, err)
	}
	return nil
}
