package xds

import (
	"context"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/go-logr/logr"

	"github.com/weftmesh/weft/internal/snapshot"
)

// callbacks learn nodes, record ACKs and NACKs, and keep a NACKed version from being sent
// straight back. go-control-plane calls them synchronously on the stream's goroutine,
// before it opens the watch for the request.
type callbacks struct {
	cache    *Cache
	tracker  *tracker
	log      logr.Logger
	onChange func()
}

var _ serverv3.Callbacks = (*callbacks)(nil)

func (c *callbacks) changed() {
	if c.onChange != nil {
		c.onChange()
	}
}

func (c *callbacks) learn(ctx context.Context, streamID int64, n *corev3.Node, delta bool) {
	if n.GetId() == "" {
		return
	}
	v := snapshot.ViewFromNode(n)
	if !c.tracker.open(streamID, n.GetId(), v, delta) {
		return
	}
	recordStreamOpen(delta)
	if err := c.cache.addNode(ctx, v); err != nil {
		c.log.Error(err, "building the snapshot of a new view", "node", n.GetId(), "view", v.Key())
	}
	c.changed()
}

func (c *callbacks) closed(streamID int64) {
	_, _, delta, known := c.tracker.streamOf(streamID)
	if v, ok := c.tracker.close(streamID); ok {
		if known {
			recordStreamClose(delta)
		}
		c.cache.removeNode(v)
		c.changed()
	}
}

// OnStreamOpen accepts every stream; the node is learnt from its first request.
func (c *callbacks) OnStreamOpen(context.Context, int64, string) error { return nil }

// OnStreamClosed forgets the stream's node.
func (c *callbacks) OnStreamClosed(streamID int64, _ *corev3.Node) { c.closed(streamID) }

// OnStreamRequest learns the node, and records an ACK or a NACK. On a NACK it rewrites the
// request's version to the rejected one: the snapshot cache answers any request whose
// version differs from the snapshot's, so without this it would re-send the rejected
// version at once, in a loop (go-control-plane#962). With it, the cache waits for the next
// snapshot, which is the only thing that can fix the rejection.
func (c *callbacks) OnStreamRequest(streamID int64, req *discoveryv3.DiscoveryRequest) error {
	c.learn(context.Background(), streamID, req.GetNode(), false)
	if req.GetResponseNonce() == "" {
		return nil
	}
	if ed := req.GetErrorDetail(); ed != nil {
		recordNACK(req.GetTypeUrl())
		rejected := c.tracker.nack(streamID, req.GetTypeUrl(), req.GetResponseNonce(), ed.GetMessage())
		c.log.Info("sidecar rejected configuration", "node", req.GetNode().GetId(), "type", req.GetTypeUrl(),
			"version", rejected, "error", ed.GetMessage())
		if rejected != "" {
			req.VersionInfo = rejected
		}
		c.changed()
		return nil
	}
	if c.tracker.ack(streamID, req.GetTypeUrl(), req.GetVersionInfo()) {
		c.observeAck(streamID, req.GetTypeUrl(), req.GetVersionInfo())
		c.changed()
	}
	return nil
}

// OnStreamResponse remembers which version went out under which nonce.
func (c *callbacks) OnStreamResponse(_ context.Context, streamID int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	recordPush(resp.GetTypeUrl())
	c.tracker.sent(streamID, resp.GetTypeUrl(), resp.GetNonce(), resp.GetVersionInfo())
}

// OnDeltaStreamOpen accepts every delta stream; the node comes with its first request.
func (c *callbacks) OnDeltaStreamOpen(context.Context, int64, string) error { return nil }

// OnDeltaStreamClosed forgets the stream's node.
func (c *callbacks) OnDeltaStreamClosed(streamID int64, _ *corev3.Node) {
	c.closed(deltaStreamID(streamID))
}

// deltaStreamID keys a delta stream in the tracker. go-control-plane numbers state-of-the-world
// and delta streams with separate counters, both from 1, so the first stream of each kind
// would share ID 1: the second to open would go unrecorded and the first to close would
// take the other's record with it. Delta streams are tracked under the negated ID.
func deltaStreamID(id int64) int64 { return -id }

// OnStreamDeltaRequest learns the node and records ACKs and NACKs. The delta cache sends
// only resources whose version changed, so a NACKed resource is not re-sent.
func (c *callbacks) OnStreamDeltaRequest(streamID int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	streamID = deltaStreamID(streamID)
	c.learn(context.Background(), streamID, req.GetNode(), true)
	if req.GetResponseNonce() == "" {
		return nil
	}
	if ed := req.GetErrorDetail(); ed != nil {
		recordNACK(req.GetTypeUrl())
		c.tracker.nack(streamID, req.GetTypeUrl(), req.GetResponseNonce(), ed.GetMessage())
		c.changed()
		return nil
	}
	// A delta ACK carries no version: it acknowledges the last response, whose snapshot
	// version OnStreamDeltaResponse recorded.
	if ver := c.tracker.lastSent(streamID, req.GetTypeUrl()); ver != "" && c.tracker.ack(streamID, req.GetTypeUrl(), ver) {
		c.observeAck(streamID, req.GetTypeUrl(), ver)
		c.changed()
	}
	return nil
}

// OnStreamDeltaResponse remembers the snapshot version behind each delta response.
func (c *callbacks) OnStreamDeltaResponse(streamID int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	streamID = deltaStreamID(streamID)
	recordPush(resp.GetTypeUrl())
	c.tracker.sent(streamID, resp.GetTypeUrl(), resp.GetNonce(), resp.GetSystemVersionInfo())
}

// OnFetchRequest allows REST fetches (unused by the sidecar).
func (c *callbacks) OnFetchRequest(context.Context, *discoveryv3.DiscoveryRequest) error { return nil }

// OnFetchResponse does nothing.
func (c *callbacks) OnFetchResponse(*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {}
