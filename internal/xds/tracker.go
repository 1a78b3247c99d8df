package xds

import (
	"sort"
	"sync"
	"time"

	"github.com/weftmesh/weft/internal/snapshot"
)

// Rejection is a version a sidecar NACKed and the error it sent.
type Rejection struct {
	Version string
	Error   string
}

// NodeState is what the server knows about one connected sidecar.
type NodeState struct {
	ID   string
	View snapshot.View
	// Acked is the last version the sidecar ACKed, by type URL.
	Acked map[string]string
	// Rejected is the last version it NACKed, by type URL; cleared by a later ACK.
	Rejected map[string]Rejection
	// Want, set only for a sidecar connected to another manager replica (internal/peer), is
	// the versions of its view's current snapshot on that replica; Sync compares Acked with
	// it instead of this replica's versions, which may not know the view.
	Want map[string]string `json:",omitempty"`
}

// tracker records ACKs and NACKs per node and per stream.
type tracker struct {
	mu      sync.Mutex
	nodes   map[string]*nodeEntry // by node ID
	streams map[streamKey]*streamEntry
}

// streamKey names a stream by kind and number: go-control-plane numbers state-of-the-world
// and delta streams with separate counters, both from 1, so the number alone would make the
// first stream of each kind collide (the second to open would go unrecorded and the first
// to close would take the other's record, and its view's snapshot, with it).
type streamKey struct {
	delta bool
	id    int64
}

func sotwStream(id int64) streamKey  { return streamKey{id: id} }
func deltaStream(id int64) streamKey { return streamKey{delta: true, id: id} }

// maxErrorBytes bounds the NACK error text kept per node and type (it ends up in status).
const maxErrorBytes = 1024

// knownType reports whether typeURL is one Weft serves: only those are recorded, so a
// client sending made-up type URLs cannot grow a node's Acked or Rejected map.
func knownType(typeURL string) bool {
	for _, t := range Types {
		if t == typeURL {
			return true
		}
	}
	return false
}

type nodeEntry struct {
	state   NodeState
	streams int
}

type streamEntry struct {
	nodeID string
	view   snapshot.View
	// sent is the version of the last response per type, by nonce, so a NACK can be tied to
	// the version it rejects.
	sent map[string]sentResponse
	// delta streams track the last system version they sent per type.
	delta bool
	// opened is when the stream's first request arrived, and viewKey its view's key (a
	// hash, computed once), for the push-latency metric.
	opened  time.Time
	viewKey string
}

type sentResponse struct{ nonce, version string }

func newTracker() *tracker {
	return &tracker{nodes: map[string]*nodeEntry{}, streams: map[streamKey]*streamEntry{}}
}

// open registers the first request of a stream; it returns true when the stream is new.
func (t *tracker) open(streamID streamKey, id string, v snapshot.View, delta bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.streams[streamID]; ok {
		return false
	}
	t.streams[streamID] = &streamEntry{nodeID: id, view: v, sent: map[string]sentResponse{}, delta: delta, opened: time.Now(), viewKey: v.Key()}
	n, ok := t.nodes[id]
	if !ok {
		n = &nodeEntry{state: NodeState{ID: id, Acked: map[string]string{}, Rejected: map[string]Rejection{}}}
		t.nodes[id] = n
	}
	n.state.View = v
	n.streams++
	return true
}

// close forgets a stream and, with its last stream, the node. It returns the stream's view
// and whether the stream was known.
func (t *tracker) close(streamID streamKey) (snapshot.View, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.streams[streamID]
	if !ok {
		return snapshot.View{}, false
	}
	delete(t.streams, streamID)
	if n := t.nodes[s.nodeID]; n != nil {
		if n.streams--; n.streams <= 0 {
			delete(t.nodes, s.nodeID)
		}
	}
	return s.view, true
}

func (t *tracker) sent(streamID streamKey, typeURL, nonce, version string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s, ok := t.streams[streamID]; ok && knownType(typeURL) {
		s.sent[typeURL] = sentResponse{nonce, version}
	}
}

// lastSent is the version of the stream's last response of a type.
func (t *tracker) lastSent(streamID streamKey, typeURL string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s, ok := t.streams[streamID]; ok {
		return s.sent[typeURL].version
	}
	return ""
}

// ack records an ACK of version; it reports whether anything changed.
func (t *tracker) ack(streamID streamKey, typeURL, version string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.streams[streamID]
	if !ok || !knownType(typeURL) {
		return false
	}
	n := t.nodes[s.nodeID]
	_, hadRejection := n.state.Rejected[typeURL]
	if n.state.Acked[typeURL] == version && !hadRejection {
		return false
	}
	n.state.Acked[typeURL] = version
	delete(n.state.Rejected, typeURL)
	return true
}

// nack records a NACK of the response with nonce and returns the version it rejected ("" if
// the nonce is not the stream's last response of that type).
func (t *tracker) nack(streamID streamKey, typeURL, nonce, msg string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.streams[streamID]
	if !ok || !knownType(typeURL) {
		return ""
	}
	version := ""
	if last := s.sent[typeURL]; last.nonce == nonce || s.delta {
		version = last.version
	}
	if len(msg) > maxErrorBytes {
		msg = msg[:maxErrorBytes] + "…"
	}
	t.nodes[s.nodeID].state.Rejected[typeURL] = Rejection{Version: version, Error: msg}
	return version
}

// Nodes returns a copy of every connected sidecar's state, sorted by ID.
func (t *tracker) Nodes() []NodeState {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]NodeState, 0, len(t.nodes))
	for _, n := range t.nodes {
		s := NodeState{ID: n.state.ID, View: n.state.View, Acked: map[string]string{}, Rejected: map[string]Rejection{}}
		for k, v := range n.state.Acked {
			s.Acked[k] = v
		}
		for k, v := range n.state.Rejected {
			s.Rejected[k] = v
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// streamOf returns a known stream's view key, when it opened and whether it is a delta
// stream.
func (t *tracker) streamOf(streamID streamKey) (viewKey string, opened time.Time, delta, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.streams[streamID]
	if !ok {
		return "", time.Time{}, false, false
	}
	return s.viewKey, s.opened, s.delta, true
}

// syncedTo reports whether the stream's sidecar has ACKed every version in want and
// rejects none of them.
func (t *tracker) syncedTo(streamID streamKey, want map[string]string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.streams[streamID]
	if !ok || len(want) == 0 {
		return false
	}
	n := t.nodes[s.nodeID]
	for typ, ver := range want {
		if n.state.Acked[typ] != ver {
			return false
		}
		if r, bad := n.state.Rejected[typ]; bad && r.Version == ver {
			return false
		}
	}
	return true
}
