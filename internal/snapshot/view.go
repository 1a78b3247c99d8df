package snapshot

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/weftmesh/weft/contract"
)

// View is what decides which resources a sidecar receives (docs/xds-contract.md, Nodes):
// sidecars with equal views share one snapshot.
type View struct {
	Namespace string
	Labels    map[string]string
	// Function is "<ns>/<name>" of the MeshFunction the pod serves, if any.
	Function string
	// AppPort is the local app port; 0 means no inbound listener, unless InboundCapture.
	AppPort uint32
	// InboundCapture is set for a pod with no app port whose inbound ports are captured
	// (a pod that serves only TCP): its inbound listener has no HTTP chain, only the TCP
	// passthrough to 127.0.0.1:<original port> (tcpInbound). It has no effect with an
	// AppPort, whose inbound listener already passes the other ports through.
	InboundCapture bool
	// RedisProxy is "<ns>/<name>" when the sidecar is that RedisProxy's standalone proxy: it
	// serves that pool only, whatever the pool's workloadSelector says.
	RedisProxy string
	// ServiceAccount is the pod's verified ServiceAccount (internal/xds: TokenReview, bound
	// pod). With Namespace it is the workload identity MeshPolicies that target RedisProxy
	// pools judge for the pools served in this sidecar (redispolicy.go); empty when unknown,
	// which no rule naming callers admits.
	ServiceAccount string
	// Gateway is set for the gateway's sidecar (gateway.go), which the control plane
	// recognizes by its verified ServiceAccount; it replaces every other field's effect.
	Gateway bool
}

// ViewFromNode reads a node's view from its metadata; the namespace falls back to the part
// of the node ID after the first dot (<pod>.<namespace>).
func ViewFromNode(n *corev3.Node) View {
	f := n.GetMetadata().GetFields()
	v := View{Namespace: f[contract.NodeNamespace].GetStringValue(), Function: f[contract.NodeFunction].GetStringValue(),
		RedisProxy: f[contract.NodeRedisProxy].GetStringValue(), Gateway: f[NodeGateway].GetBoolValue(),
		ServiceAccount: f[NodeServiceAccount].GetStringValue(), InboundCapture: f[contract.NodeInboundCapture].GetBoolValue()}
	if v.Namespace == "" {
		if _, ns, ok := strings.Cut(n.GetId(), "."); ok {
			v.Namespace = ns
		}
	}
	if p := f[contract.NodeAppPort].GetNumberValue(); p > 0 && p < 65536 {
		v.AppPort = uint32(p)
	}
	if ls := f[contract.NodeLabels].GetStructValue().GetFields(); len(ls) > 0 {
		v.Labels = make(map[string]string, len(ls))
		for k, val := range ls {
			v.Labels[k] = val.GetStringValue()
		}
	}
	return v
}

// Key is a stable hash of the view: the snapshot cache key sidecars of one view share.
func (v View) Key() string {
	h := sha256.New()
	fmt.Fprintf(h, "%q\x00%q\x00%d\x00%q\x00", v.Namespace, v.Function, v.AppPort, v.RedisProxy)
	if v.Gateway {
		h.Write([]byte("gateway\x00"))
	}
	if v.ServiceAccount != "" { // written only when set: the keys of views without one stay as they were
		fmt.Fprintf(h, "sa=%q\x00", v.ServiceAccount)
	}
	if v.InboundCapture {
		h.Write([]byte("inbound-capture\x00")) // only when set: the keys of other views stay as they were
	}
	keys := make([]string, 0, len(v.Labels))
	for k := range v.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(h, "%q=%q\x00", k, v.Labels[k])
	}
	return "view-" + hex.EncodeToString(h.Sum(nil)[:12])
}

type versioned[T any] struct {
	v   T
	ver string
}

// sharedHashes are the per-type content hashes of the resources every sidecar shares.
type sharedHashes struct {
	clusters, endpoints [32]byte
	outbound            *listenerv3.Listener
	outboundHash        [32]byte
}

func hashOf(m proto.Message) [32]byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic(err)
	}
	return sha256.Sum256(b)
}

func hashAll[T proto.Message](ms []T) [32]byte {
	h := sha256.New()
	for _, m := range ms {
		s := hashOf(m)
		h.Write(s[:])
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

func version(parts ...[32]byte) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write(p[:])
	}
	return hex.EncodeToString(h.Sum(nil)[:10])
}

func (r *Result) hashes() *sharedHashes {
	r.once.Do(func() {
		r.shared.clusters = hashAll(r.Clusters)
		r.shared.endpoints = combine(r.sumsOf()) // = hashAll(r.Endpoints), keeping the per-assignment hashes for UpdateEndpoints
		r.shared.outbound = captureOutboundListener(&r.plan, r.blocked)
		r.shared.outboundHash = hashOf(r.shared.outbound)
	})
	return &r.shared
}

// routeConfig is the per-port route configurations as namespace ns sees them (every
// accepted host, and the bare short names of ns's own objects and Services), cached.
func (r *Result) routeConfig(ns string) versioned[[]types.Resource] {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rc, ok := r.routes[ns]; ok {
		return rc
	}
	rcs, sum := r.routeConfigurations(ns)
	out := versioned[[]types.Resource]{asResources(rcs), version(sum)}
	r.routes[ns] = out
	return out
}

// Includes reports whether sidecars of view v receive object k, so their ACKs and NACKs
// count in its status: routes and functions go to every sidecar, a redis pool to those its
// selector picks.
func (r *Result) Includes(v View, k ObjectKey) bool {
	if k.Kind == KindMeshPolicy {
		return r.includesPolicy(v, k)
	}
	if k.Kind != KindRedisProxy {
		return true
	}
	if v.Gateway {
		return false
	}
	for _, p := range r.Redis {
		if p.Key == k {
			return p.Selects(v)
		}
	}
	return false
}

// Snapshot assembles the snapshot of view v. Every resource has passed Validate (shared
// ones in Translate, the view's own here) and the snapshot is Consistent; each type's
// version is a hash of its content, so an unchanged type is not pushed again.
func (r *Result) Snapshot(v View) (*cachev3.Snapshot, error) {
	if v.Gateway {
		return r.gatewaySnapshot(v)
	}
	sh := r.hashes()
	clusters := append([]types.Resource(nil), asResources(r.Clusters)...)
	endpoints := append([]types.Resource(nil), asResources(r.Endpoints)...)
	listeners := []types.Resource{sh.outbound}
	var extraC, extraE, extraL []proto.Message
	if v.AppPort != 0 {
		l, c := inbound(v.AppPort, r.functionTimeouts[v.Function], r.rbacFilters(v))
		extraL, extraC = append(extraL, l), append(extraC, c)
	} else if v.InboundCapture {
		extraL = append(extraL, tcpInbound())
	}
	pools := map[string]*RedisPool{}
	for _, p := range r.Redis {
		pools[p.Cluster.Name] = p
	}
	wantPool := map[string]bool{}
	var secrets viewSecrets
	for _, p := range r.Redis {
		if p.Listener == nil || !p.Selects(v) {
			continue
		}
		l, allowed := r.poolForView(p, v) // redispolicy.go: MeshPolicies on the pool
		extraL = append(extraL, l)
		if !allowed {
			continue // no password, cluster, servers or secret of the pool
		}
		secrets.add(p.DownstreamSecret)
		wantPool[p.Cluster.Name] = true
		for _, n := range p.Routes {
			wantPool[n] = true
		}
	}
	if r.needsQueue(v) {
		c, s := r.queueCluster(v)
		extraC = append(extraC, c)
		secrets.add(s)
	}
	for _, n := range sortedKeys(wantPool) {
		if p, ok := pools[n]; ok {
			extraC, extraE = append(extraC, p.Cluster), append(extraE, p.Endpoints)
			secrets.add(p.UpstreamSecret)
		}
	}
	extraS := secrets.sorted()
	for _, m := range append(append(append(append([]proto.Message(nil), extraL...), extraC...), extraE...), extraS...) {
		if err := m.(interface{ Validate() error }).Validate(); err != nil {
			return nil, fmt.Errorf("view %s: %w", v.Key(), err)
		}
	}
	for _, m := range extraC {
		clusters = append(clusters, m)
	}
	for _, m := range extraE {
		endpoints = append(endpoints, m)
	}
	for _, m := range extraL {
		listeners = append(listeners, m)
	}
	rc := r.routeConfig(v.Namespace)
	snap := &cachev3.Snapshot{}
	set := func(t string, ver string, items []types.Resource) {
		snap.Resources[cachev3.GetResponseType(t)] = cachev3.NewResources(ver, items)
	}
	set(resourcev3.ClusterType, version(sh.clusters, hashAll(extraC)), clusters)
	set(resourcev3.EndpointType, version(sh.endpoints, hashAll(extraE)), endpoints)
	set(resourcev3.ListenerType, version(sh.outboundHash, hashAll(extraL)), listeners)
	set(resourcev3.RouteType, rc.ver, rc.v)
	set(resourcev3.SecretType, version(hashAll(extraS)), asResources(extraS))
	if err := snap.Consistent(); err != nil {
		return nil, fmt.Errorf("view %s: snapshot is not consistent: %w", v.Key(), err)
	}
	return snap, nil
}

func asResources[T types.Resource](ms []T) []types.Resource {
	out := make([]types.Resource, len(ms))
	for i, m := range ms {
		out[i] = m
	}
	return out
}

// PoolServers counts a RedisProxy pool's servers and those with a ready endpoint (for a
// static server list every server counts as ready: only the sidecars' health checks know
// more). RedisProxy status reports them.
func (r *Result) PoolServers(ns, name string) (total, ready int32) {
	var eps []*endpointv3.LbEndpoint
	for _, p := range r.Redis {
		if p.Key.Namespace == ns && p.Key.Name == name && p.Endpoints != nil {
			for _, loc := range p.Endpoints.GetEndpoints() {
				eps = append(eps, loc.GetLbEndpoints()...)
			}
		}
	}
	for _, e := range eps {
		total++
		if s := e.GetHealthStatus(); s == corev3.HealthStatus_HEALTHY || s == corev3.HealthStatus_UNKNOWN {
			ready++
		}
	}
	return total, ready
}

// FunctionServing reports whether the function's cluster has an endpoint taking new requests
// (HEALTHY); DRAINING endpoints only finish what they have.
func (r *Result) FunctionServing(ns, name string) bool {
	cn := contract.FunctionClusterName(ns, name)
	i := sort.Search(len(r.Endpoints), func(i int) bool { return r.Endpoints[i].GetClusterName() >= cn })
	if i == len(r.Endpoints) || r.Endpoints[i].GetClusterName() != cn {
		return false
	}
	for _, loc := range r.Endpoints[i].GetEndpoints() {
		for _, e := range loc.GetLbEndpoints() {
			if s := e.GetHealthStatus(); s == corev3.HealthStatus_HEALTHY || s == corev3.HealthStatus_UNKNOWN {
				return true
			}
		}
	}
	return false
}

// NodeMetadata is the inverse of ViewFromNode: the node metadata that reads back as v. The
// xDS server writes it over what an authenticated sidecar sent, so the cache keys the
// stream by the verified view.
func NodeMetadata(v View) *structpb.Struct {
	f := map[string]*structpb.Value{contract.NodeNamespace: structpb.NewStringValue(v.Namespace)}
	if v.Function != "" {
		f[contract.NodeFunction] = structpb.NewStringValue(v.Function)
	}
	if v.RedisProxy != "" {
		f[contract.NodeRedisProxy] = structpb.NewStringValue(v.RedisProxy)
	}
	if v.AppPort != 0 {
		f[contract.NodeAppPort] = structpb.NewNumberValue(float64(v.AppPort))
	}
	if v.Gateway {
		f[NodeGateway] = structpb.NewBoolValue(true)
	}
	if v.ServiceAccount != "" {
		f[NodeServiceAccount] = structpb.NewStringValue(v.ServiceAccount)
	}
	if v.InboundCapture {
		f[contract.NodeInboundCapture] = structpb.NewBoolValue(true)
	}
	if len(v.Labels) > 0 {
		ls := make(map[string]*structpb.Value, len(v.Labels))
		for k, val := range v.Labels {
			ls[k] = structpb.NewStringValue(val)
		}
		f[contract.NodeLabels] = structpb.NewStructValue(&structpb.Struct{Fields: ls})
	}
	return &structpb.Struct{Fields: f}
}
