package snapshot

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
)

// Queue is where asynchronous calls go: the NATS JetStream server sidecars publish to and
// pull from, and how each sidecar authenticates to it. Make one with NewQueue.
type Queue struct {
	URL string
	// Credential gives the sidecars of one queue identity their credential (User and
	// Password, InboxPrefix, or Token); its URL is ignored.
	Credential QueueCredentialFunc
	// RevisionCredential, when set, gives the pods of one revision of a function with
	// revisions (a pod labelled weft.dev/revision) theirs: they dispatch the function's
	// queued calls and run their revision's (internal/queue KindRevision). Unset: they get
	// the function's.
	RevisionCredential func(namespace, function, revision string) contract.QueueMeta

	cluster *clusterv3.Cluster // without a credential
}

// QueueCredentialFunc returns the credential of the sidecars of namespace that serve
// function (a name in namespace, or "" for the namespace's other sidecars). The embedded
// server's is internal/queue's per-identity Credentials; an external cluster's is
// internal/queue's Issuer (a user JWT and NKEY seed per identity) or, as a legacy option,
// one SharedQueueToken.
type QueueCredentialFunc func(namespace, function string) contract.QueueMeta

// SharedQueueToken is the legacy credential of an external NATS cluster (--nats-url with
// --nats-token and no account signing key): the same token for every sidecar, so every
// sidecar may do whatever that token's user may.
func SharedQueueToken(token string) QueueCredentialFunc {
	return func(string, string) contract.QueueMeta { return contract.QueueMeta{Token: token} }
}

// NewQueue checks the queue's URL and prepares the cluster sidecars will get, each with the
// credential cred gives its view (nil: none).
func NewQueue(url string, cred QueueCredentialFunc) (*Queue, error) {
	if cred == nil {
		cred = func(string, string) contract.QueueMeta { return contract.QueueMeta{} }
	}
	q := &Queue{URL: url, Credential: cred}
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

// queueIdentity is the queue identity of view v: the function its pods serve, or the
// namespace's sidecars that serve none (callers). A gateway or any other identity kind is
// chosen here.
func queueIdentity(v View) (namespace, function string) {
	if ns, name, ok := strings.Cut(v.Function, "/"); ok && ns == v.Namespace && name != "" {
		return ns, name
	}
	return v.Namespace, ""
}

// clusterFor is the queue cluster of v's identity and its credential's secret (nil when
// the queue takes no credential). The cluster's metadata keeps the URL, the user and the
// inbox prefix; the password, token, or user JWT and NKEY seed travel only in the secret,
// which the cluster names.
// A revision's pods have their own queue identity, so their secret is named for it.
func (q *Queue) clusterFor(v View) (*clusterv3.Cluster, *tlsv3.Secret) {
	ns, fn := queueIdentity(v)
	var m contract.QueueMeta
	secretName := contract.QueueSecretName(ns, fn)
	if rev := v.Labels[meshv1alpha1.LabelRevision]; fn != "" && rev != "" && q.RevisionCredential != nil {
		m = q.RevisionCredential(ns, fn, rev)
		secretName = contract.QueueRevisionSecretName(ns, fn, rev)
	} else {
		m = q.Credential(ns, fn)
	}
	m.URL = q.URL
	values := map[string]string{}
	if m.Password != "" {
		values[contract.QueueSecretPassword] = m.Password
	}
	if m.Token != "" {
		values[contract.QueueSecretToken] = m.Token
	}
	if m.JWT != "" && m.Seed != "" {
		values[contract.QueueSecretJWT] = m.JWT
		values[contract.QueueSecretSeed] = m.Seed
	}
	m.Password, m.Token, m.JWT, m.Seed = "", "", "", ""
	c := proto.Clone(q.cluster).(*clusterv3.Cluster)
	c.Metadata = metadata(contract.QueueMetadataKey, m.Encode())
	if len(values) == 0 {
		return c, nil
	}
	sec := genericSecrets(secretName, values)
	c.Metadata = withSecretRef(c.Metadata, sec.GetName())
	return c, sec
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
		Metadata: metadata(contract.QueueMetadataKey, contract.QueueMeta{URL: q.URL}.Encode()),
	}, nil
}

// addQueue keeps the queue for the views that need it (needsQueue): its cluster carries
// each view's own credential, so it is not among the clusters every sidecar shares.
func (r *Result) addQueue(q *Queue) {
	if q.cluster != nil { // nil when not made by NewQueue
		r.queue = q
	}
}

// queueCluster is the queue cluster view v receives, naming its identity's credential, and
// that credential's secret (nil: none).
func (r *Result) queueCluster(v View) (*clusterv3.Cluster, *tlsv3.Secret) {
	return r.queue.clusterFor(v)
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
