package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

// MaxRegistryRequestBytes bounds one request body the local registry accepts (a blob
// upload, a manifest): the largest Weft image layer is ~25 MiB, so 1 GiB refuses only
// something that is not an image of this project. go-containerregistry's registry holds a
// chunked upload in memory until it completes, so this is also the memory one upload may use.
const MaxRegistryRequestBytes = 1 << 30

// Registry is the OCI registry `weft dev --registry` serves in process: go-containerregistry's
// pkg/registry (the distribution API: push, pull, tags), blobs on disk under the state dir,
// manifests in memory. `make images REGISTRY=<addr>/weftmesh` pushes to it and the node agent
// pulls from it (pull.go). It lives as long as the mesh; a new run starts empty.
type Registry struct {
	// Addr is host:port, e.g. 127.0.0.1:5000.
	Addr string
	srv  *http.Server
	done chan struct{}
}

// ServeRegistry listens on addr (host:port; port 0 picks one) and serves a registry whose
// blobs live in dir. Plain HTTP: go-containerregistry, and so `make images` and the agent,
// speak HTTP to loopback and private addresses without being told.
func ServeRegistry(addr, dir string) (*Registry, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("registry blob dir %s: %w", dir, err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("the local registry cannot listen on %s (pick another with --registry=host:port): %w", addr, err)
	}
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithBlobHandler(registry.NewDiskBlobHandler(filepath.Clean(dir))))
	r := &Registry{Addr: ln.Addr().String(), done: make(chan struct{}),
		srv: &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			req.Body = http.MaxBytesReader(w, req.Body, MaxRegistryRequestBytes)
			h.ServeHTTP(w, req)
		})}}
	go func() {
		defer close(r.done)
		if err := r.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Printf("weft dev: registry on %s stopped: %v", r.Addr, err)
		}
	}()
	return r, nil
}

// Close stops the registry, waiting up to 5 s for requests in flight.
func (r *Registry) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = r.srv.Shutdown(ctx)
	<-r.done
}

// SourceRegistry is where config/ and the manager name Weft's images. With --registry
// the agent mirrors it to the local registry's weftmesh/ path.
const SourceRegistry = "ghcr.io/weftmesh"

// RegistryFile holds the local registry's host:port while the mesh runs.
func RegistryFile(stateDir string) string { return filepath.Join(stateDir, "registry-addr") }

// startRegistry serves the mesh's registry (its blobs fresh under the state dir) and points
// the node agent's image store at it, with <state>/images as the unpacked-layer cache (the
// state dir, so the cache too, is emptied when a run starts).
func startRegistry(o Options) (*Registry, error) {
	blobs := filepath.Join(o.StateDir, "registry")
	if err := os.RemoveAll(blobs); err != nil {
		return nil, err
	}
	reg, err := ServeRegistry(o.Registry, blobs)
	if err != nil {
		return nil, err
	}
	store := filepath.Join(o.StateDir, "images")
	_ = os.RemoveAll(filepath.Join(store, "tmp"))
	o.Images.Store = &ImageStore{Dir: store}
	o.Images.PullFrom = append(o.Images.PullFrom, reg.Addr)
	if o.Registry != reg.Addr { // localhost:5000, or a port 0 the kernel picked
		o.Images.PullFrom = append(o.Images.PullFrom, o.Registry)
	}
	if o.Images.Mirrors == nil {
		o.Images.Mirrors = map[string]string{}
	}
	o.Images.Mirrors[SourceRegistry] = reg.Addr + "/weftmesh"
	if err := os.WriteFile(RegistryFile(o.StateDir), []byte(reg.Addr+"\n"), 0o644); err != nil {
		reg.Close()
		return nil, err
	}
	return reg, nil
}
