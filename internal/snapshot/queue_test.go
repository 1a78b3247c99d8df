package snapshot

import (
	"path/filepath"
	"testing"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/sidecar/config"
)

// Every sidecar learns where the async queue is from one static cluster whose metadata it
// decodes; a bad URL is refused when the queue is made, not at translation.
func TestQueueReachesEverySidecar(t *testing.T) {
	if _, err := NewQueue("not a url", "t"); err == nil {
		t.Fatal("NewQueue accepted a URL without a host")
	}
	q, err := NewQueue("nats://10.244.0.1:4222", "tok")
	if err != nil {
		t.Fatal(err)
	}
	in, views := readInput(t, filepath.Join("testdata", "route-all-fields.in.yaml"))
	in.Queue = q
	res := Translate(in)
	for _, v := range views {
		snap, err := res.Snapshot(v)
		if err != nil {
			t.Fatal(err)
		}
		checkSidecarAccepts(t, snap, v)
		c, ok := snap.GetResources(resourcev3.ClusterType)[contract.QueueClusterName]
		if !ok {
			t.Fatalf("view %+v has no %s cluster", v, contract.QueueClusterName)
		}
		got, err := config.Build(config.Resources{resourcev3.ClusterType: {contract.QueueClusterName: c.(proto.Message)}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if qm := got.Clusters[contract.QueueClusterName].Queue; qm == nil || qm.URL != "nats://10.244.0.1:4222" || qm.Token != "tok" {
			t.Fatalf("the sidecar decoded the queue as %+v", qm)
		}
	}
	for i := 1; i < len(res.Clusters); i++ {
		if res.Clusters[i-1].GetName() >= res.Clusters[i].GetName() {
			t.Fatalf("clusters not sorted after adding the queue: %s before %s", res.Clusters[i-1].GetName(), res.Clusters[i].GetName())
		}
	}
}
