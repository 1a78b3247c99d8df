package xdsclient_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"

	"github.com/weftmesh/weft/sidecar/config"
	st "github.com/weftmesh/weft/sidecar/sidecartest"
	"github.com/weftmesh/weft/sidecar/xdsclient"
)

// The full EDS response of a large mesh (5.0 MB at 10,000 routes) is over gRPC's default
// 4 MiB receive limit, which would have dropped the stream on every full push: the client
// takes responses up to MaxResponseBytes. 2,000 clusters of 60 endpoints make one EDS
// response of about 6 MB.
func TestEDSResponseOverGRPCDefaultLimitIsReceived(t *testing.T) {
	const clusters, perCluster = 2000, 60
	var cs, eps []types.Resource
	size := 0
	for i := range clusters {
		cn := fmt.Sprintf("outbound|80||svc-%d.default.svc.cluster.local", i)
		var list []st.Endpoint
		for j := range perCluster {
			list = append(list, st.Endpoint{Addr: fmt.Sprintf("10.%d.%d.%d:8080", i/250, i%250, j), Hostname: fmt.Sprintf("svc-%d-pod-%d", i, j)})
		}
		cla := st.Endpoints(cn, list...)
		size += proto.Size(cla)
		cs, eps = append(cs, st.EDSCluster(cn)), append(eps, cla)
	}
	if size <= 4<<20 || size >= xdsclient.MaxResponseBytes {
		t.Fatalf("the assignments take %d bytes: want between gRPC's 4 MiB default and MaxResponseBytes", size)
	}
	cp := st.StartControlPlane(t)
	cp.Set(st.Snapshot{Clusters: cs, Endpoints: eps})
	var applied atomic.Pointer[config.Config]
	ctx, cancel := context.WithCancel(context.Background())
	cl := xdsclient.New(xdsclient.Options{Address: cp.Addr(), Node: &corev3.Node{Id: st.NodeID},
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		Applier: xdsclient.ApplierFunc(func(c *config.Config) { applied.Store(c) })})
	done := make(chan struct{})
	go func() { defer close(done); _ = cl.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	st.Eventually(t, 60*time.Second, func() bool {
		c := applied.Load()
		if c == nil || len(c.Clusters) != clusters {
			return false
		}
		for _, cc := range c.Clusters {
			if len(cc.Endpoints) != perCluster {
				return false
			}
		}
		return true
	}, "a %d-byte EDS response never applied (status %+v)", size, cl.Status())
}
