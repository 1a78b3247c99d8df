package snapshot

import (
	"fmt"
	"net"
	"net/url"
	"strconv"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/weftmesh/weft/contract"
)

// Queue is where asynchronous calls go: the NATS JetStream server sidecars publish to and
// pull from, and the token they authenticate with. Make one with NewQueue.
type Queue struct {
	URL   string
	Token string

	cluster *clusterv3.Cluster
}

// NewQueue checks the queue's URL and prepares the cluster every sidecar will get.
func NewQueue(url, token string) (*Queue, error) {
	q := &Queue{URL: url, Token: token}
	c, err := queueCluster(q)
	if err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("queue cluster: %w", err)
	}
	q.cluster = c
	return q, nil
}

// queueCluster is a STATIC cluster with the queue's address and its metadata.
func queueCluster(q *Queue) (*clusterv3.Cluster, error) {
	u, err := url.Parse(q.URL)
	if err != nil || u.Hostname() == "" {
		return nil, fmt.Errorf("queue URL %q: want nats://host:port", q.URL)
	}
	port := 4222
	if p := u.Port(); p != "" {
		if port, err = strconv.Atoi(p); err != nil || port < 1 || port > 65535 {
			return nil, fmt.Errorf("queue URL %q: bad port", q.URL)
		}
	}
	host := u.Hostname()
	if net.ParseIP(host) == nil {
		// A STATIC cluster takes IP addresses only; the URL in the metadata is what sidecars
		// dial, the endpoint is informational. Keep a valid placeholder.
		host = "0.0.0.0"
	}
	return &clusterv3.Cluster{
		Name:                 contract.QueueClusterName,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(defaultConnectTimeout),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: contract.QueueClusterName, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: socketAddress(host, uint32(port)),
			}}}},
		}}},
		Metadata: metadata(contract.QueueMetadataKey, contract.QueueMeta{URL: q.URL, Token: q.Token}.Encode()),
	}, nil
}

// addQueue keeps the queue cluster for the views that need it (needsQueue): it carries the
// queue's credential, so it is not among the clusters every sidecar shares.
func (r *Result) addQueue(q *Queue) {
	r.queue = q.cluster // nil when not made by NewQueue
}

// needsQueue reports whether sidecars of view v get the queue's address and credential:
// the pods of a function (they pull its calls) and every workload that may call a function
// (they publish async calls), which is every sidecar but a standalone Redis proxy while any
// MeshFunction exists. A mesh without functions sends the credential to nobody.
func (r *Result) needsQueue(v View) bool {
	if r.queue == nil {
		return false
	}
	if v.Function != "" {
		return true
	}
	return v.RedisProxy == "" && len(r.functionTimeouts) > 0
}
