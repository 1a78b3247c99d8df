// Package sidecartest holds test helpers shared by the sidecar's packages: a real
// in-process go-control-plane ADS server and builders that make xDS resources exactly as
// docs/xds-contract.md says the Weft control plane does (names, metadata keys).
package sidecartest

import (
	"context"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
)

// NodeID is the node the test sidecars identify as.
const NodeID = "app-0.default"

// ControlPlane is a real go-control-plane ADS server on 127.0.0.1 with a snapshot cache.
type ControlPlane struct {
	t     testing.TB
	Cache cachev3.SnapshotCache
	addr  string
	ver   atomic.Int64

	mu    sync.Mutex
	nacks []NACK
	acks  map[string]string // type URL → last ACKed version
	grpc  *grpc.Server
}

// StartControlPlane starts the server on a dynamic port; it stops when the test ends.
func StartControlPlane(t testing.TB) *ControlPlane {
	cp := &ControlPlane{t: t, Cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil), acks: map[string]string{}}
	cp.listen("127.0.0.1:0")
	t.Cleanup(cp.Stop)
	return cp
}

func (cp *ControlPlane) listen(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		cp.t.Fatalf("control plane listen %s: %v", addr, err)
	}
	cp.addr = ln.Addr().String()
	cb := serverv3.CallbackFuncs{StreamRequestFunc: func(_ int64, req *discoveryv3.DiscoveryRequest) error {
		cp.mu.Lock()
		defer cp.mu.Unlock()
		if req.GetErrorDetail() != nil {
			cp.nacks = append(cp.nacks, NACK{TypeURL: req.GetTypeUrl(), Version: req.GetVersionInfo(), Message: req.GetErrorDetail().GetMessage()})
		} else if req.GetResponseNonce() != "" {
			cp.acks[req.GetTypeUrl()] = req.GetVersionInfo()
		}
		return nil
	}}
	srv := serverv3.NewServer(context.Background(), cp.Cache, cb)
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, srv)
	cp.mu.Lock()
	cp.grpc = g
	cp.mu.Unlock()
	go func() { _ = g.Serve(ln) }()
}

// Addr is the server's host:port.
func (cp *ControlPlane) Addr() string { return cp.addr }

// Stop kills the server, dropping every stream.
func (cp *ControlPlane) Stop() {
	cp.mu.Lock()
	g := cp.grpc
	cp.grpc = nil
	cp.mu.Unlock()
	if g != nil {
		g.Stop()
	}
}

// Restart starts the server again on the same address with the same cache.
func (cp *ControlPlane) Restart() { cp.listen(cp.addr) }

// NACK is one rejected response as the server saw it.
type NACK struct {
	TypeURL string
	// Version is the version_info the client sent with the NACK: its last good version.
	Version string
	Message string
}

// NACKs returns every NACK the server received.
func (cp *ControlPlane) NACKs() []NACK {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return append([]NACK(nil), cp.nacks...)
}

// ACKed returns the last version the client ACKed for a type URL.
func (cp *ControlPlane) ACKed(typeURL string) string {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.acks[typeURL]
}

// Set publishes a snapshot with a fresh version for NodeID and returns the version. The
// snapshot must be Consistent(), as the contract promises of the real control plane.
func (cp *ControlPlane) Set(res Snapshot) string {
	cp.t.Helper()
	v := strconv.FormatInt(cp.ver.Add(1), 10)
	snap, err := cachev3.NewSnapshot(v, map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: res.Listeners, resourcev3.RouteType: res.Routes,
		resourcev3.ClusterType: res.Clusters, resourcev3.EndpointType: res.Endpoints,
	})
	if err != nil {
		cp.t.Fatalf("building snapshot: %v", err)
	}
	if !res.SkipConsistency {
		if err := snap.Consistent(); err != nil {
			cp.t.Fatalf("snapshot %s is not consistent: %v", v, err)
		}
	}
	if err := cp.Cache.SetSnapshot(context.Background(), NodeID, snap); err != nil {
		cp.t.Fatalf("setting snapshot: %v", err)
	}
	return v
}

// Snapshot lists the resources of one snapshot.
type Snapshot struct {
	Listeners, Routes, Clusters, Endpoints []types.Resource
	SkipConsistency                        bool
}
