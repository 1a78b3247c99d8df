package xds

import (
	"context"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/go-logr/logr"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/weftmesh/weft/internal/snapshot"
)

// callbacks learn nodes, record ACKs and NACKs, and keep a NACKed version from being sent
// straight back. go-control-plane calls them synchronously on the stream's goroutine,
// before it opens the watch for the request.
//
// With authentication on (secure), a stream's node is never what the sidecar claims: the
// stream interceptor verified its token and put the pod's identity in the stream context,
// OnStreamOpen keeps it, and every request's node is replaced by one built from it before
// the cache sees the request. A request naming another node ID is refused.
type callbacks struct {
	cache    *Cache
	tracker  *tracker
	log      logr.Logger
	onChange func()
	secure   bool

	mu sync.Mutex
	// idents holds, per open authenticated stream, its identity and verified node: one
	// entry per stream gRPC accepted with a valid token, removed when it closes.
	idents map[streamKey]streamIdentity
}

type streamIdentity struct {
	id   *Identity
	node *corev3.Node
}

var _ serverv3.Callbacks = (*callbacks)(nil)

func (c *callbacks) changed() {
	if c.onChange != nil {
		c.onChange()
	}
}

// opened keeps the identity of an authenticated stream.
func (c *callbacks) opened(ctx context.Context, key streamKey) error {
	if !c.secure {
		return nil
	}
	id, ok := IdentityFrom(ctx)
	if !ok {
		return errUnauthenticated("stream carries no verified identity")
	}
	c.mu.Lock()
	c.idents[key] = streamIdentity{id: id, node: verifiedNode(id)}
	c.mu.Unlock()
	return nil
}

// verify replaces the request's node by the stream's verified one; it refuses a request that
// names another node ID.
func (c *callbacks) verify(key streamKey, node **corev3.Node) error {
	if !c.secure {
		return nil
	}
	c.mu.Lock()
	si, ok := c.idents[key]
	c.mu.Unlock()
	if !ok {
		return errUnauthenticated("stream carries no verified identity")
	}
	if claimed := (*node).GetId(); claimed != "" && claimed != si.id.NodeID() {
		return status.Errorf(codes.PermissionDenied,
			"weft control plane: node ID %q is not this pod's: the token is bound to pod %s/%s, whose node ID is %q",
			claimed, si.id.Namespace, si.id.Pod, si.id.NodeID())
	}
	*node = si.node
	return nil
}

func (c *callbacks) learn(ctx context.Context, key streamKey, n *corev3.Node) {
	if n.GetId() == "" {
		return
	}
	v := snapshot.ViewFromNode(n)
	if !c.tracker.open(key, n.GetId(), v, key.delta) {
		return
	}
	recordStreamOpen(key.delta)
	if err := c.cache.addNode(ctx, v); err != nil {
		c.log.Error(err, "building the snapshot of a new view", "node", n.GetId(), "view", v.Key())
	}
	c.changed()
}

func (c *callbacks) closed(key streamKey) {
	if c.secure {
		c.mu.Lock()
		delete(c.idents, key)
		c.mu.Unlock()
	}
	_, _, delta, known := c.tracker.streamOf(key)
	if v, ok := c.tracker.close(key); ok {
		if known {
			recordStreamClose(delta)
		}
		c.cache.removeNode(v)
		c.changed()
	}
}

// OnStreamOpen keeps the stream's verified identity (secure mode); the node is learnt from
// its first request.
func (c *callbacks) OnStreamOpen(ctx context.Context, streamID int64, _ string) error {
	return c.opened(ctx, sotwStream(streamID))
}

// OnStreamClosed forgets the stream's node.
func (c *callbacks) OnStreamClosed(streamID int64, _ *corev3.Node) { c.closed(sotwStream(streamID)) }

// OnStreamRequest learns the node, and records an ACK or a NACK. On a NACK it rewrites the
// request's version to the rejected one: the snapshot cache answers any request whose
// version differs from the snapshot's, so without this it would re-send the rejected
// version at once, in a loop (go-control-plane#962). With it, the cache waits for the next
// snapshot, which is the only thing that can fix the rejection.
func (c *callbacks) OnStreamRequest(streamID int64, req *discoveryv3.DiscoveryRequest) error {
	key := sotwStream(streamID)
	if err := c.verify(key, &req.Node); err != nil {
		return err
	}
	c.learn(context.Background(), key, req.GetNode())
	if req.GetResponseNonce() == "" {
		return nil
	}
	if ed := req.GetErrorDetail(); ed != nil {
		recordNACK(req.GetTypeUrl())
		rejected := c.tracker.nack(key, req.GetTypeUrl(), req.GetResponseNonce(), ed.GetMessage())
		c.log.Info("sidecar rejected configuration", "node", req.GetNode().GetId(), "type", req.GetTypeUrl(),
			"version", rejected, "error", ed.GetMessage())
		if rejected != "" {
			req.VersionInfo = rejected
		}
		c.changed()
		return nil
	}
	if c.tracker.ack(key, req.GetTypeUrl(), req.GetVersionInfo()) {
		c.observeAck(key, req.GetTypeUrl(), req.GetVersionInfo())
		c.changed()
	}
	return nil
}

// OnStreamResponse remembers which version went out under which nonce.
func (c *callbacks) OnStreamResponse(_ context.Context, streamID int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	recordPush(resp.GetTypeUrl())
	c.tracker.sent(sotwStream(streamID), resp.GetTypeUrl(), resp.GetNonce(), resp.GetVersionInfo())
}

// OnDeltaStreamOpen keeps the stream's verified identity (secure mode); the node comes with
// its first request.
func (c *callbacks) OnDeltaStreamOpen(ctx context.Context, streamID int64, _ string) error {
	return c.opened(ctx, deltaStream(streamID))
}

// OnDeltaStreamClosed forgets the stream's node.
func (c *callbacks) OnDeltaStreamClosed(streamID int64, _ *corev3.Node) {
	c.closed(deltaStream(streamID))
}

// OnStreamDeltaRequest learns the node and records ACKs and NACKs. The delta cache sends
// only resources whose version changed, so a NACKed resource is not re-sent.
func (c *callbacks) OnStreamDeltaRequest(streamID int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	key := deltaStream(streamID)
	if err := c.verify(key, &req.Node); err != nil {
		return err
	}
	c.learn(context.Background(), key, req.GetNode())
	if req.GetResponseNonce() == "" {
		return nil
	}
	if ed := req.GetErrorDetail(); ed != nil {
		recordNACK(req.GetTypeUrl())
		c.tracker.nack(key, req.GetTypeUrl(), req.GetResponseNonce(), ed.GetMessage())
		c.changed()
		return nil
	}
	// A delta ACK carries no version: it acknowledges the last response, whose snapshot
	// version OnStreamDeltaResponse recorded.
	if ver := c.tracker.lastSent(key, req.GetTypeUrl()); ver != "" && c.tracker.ack(key, req.GetTypeUrl(), ver) {
		c.observeAck(key, req.GetTypeUrl(), ver)
		c.changed()
	}
	return nil
}

// OnStreamDeltaResponse remembers the snapshot version behind each delta response.
func (c *callbacks) OnStreamDeltaResponse(streamID int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	recordPush(resp.GetTypeUrl())
	c.tracker.sent(deltaStream(streamID), resp.GetTypeUrl(), resp.GetNonce(), resp.GetSystemVersionInfo())
}

// OnFetchRequest allows REST fetches (unused by the sidecar).
func (c *callbacks) OnFetchRequest(context.Context, *discoveryv3.DiscoveryRequest) error { return nil }

// OnFetchResponse does nothing.
func (c *callbacks) OnFetchResponse(*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {}
