package peer

import (
	"context"
	"sort"
	"sync"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	"github.com/weftmesh/weft/internal/autoscale"
	"github.com/weftmesh/weft/internal/xds"
)

// LocalNodes is what the Hub reads of its own replica's xDS server: its sidecars and its
// hand-off verdict. *xds.Server implements it.
type LocalNodes interface {
	Nodes() []xds.NodeState
	Drained(fn types.NamespacedName) bool
}

// Hub is the leader's side of the peer service: it feeds followers' signals to the local
// autoscaler and keeps their reports, so that Nodes (status) and Drained (hand-off) cover
// the sidecars of every replica. It serves on every replica (any of them may become the
// leader) and refuses signals while its replica does not lead, so a follower that found a
// stale leader looks again.
type Hub struct {
	Sink  autoscale.SignalSink
	Local LocalNodes
	// Elected is closed once this replica leads.
	Elected <-chan struct{}
	// OnChange is called (synchronously; keep it cheap) when a report changes: status
	// depends on it.
	OnChange func()
	Clock    clock.PassiveClock

	once    sync.Once
	mu      sync.Mutex
	reports map[string]report
	// leadingSince is when this Hub first saw its replica lead.
	leadingSince time.Time
}

type report struct {
	at      time.Time
	nodes   []xds.NodeState
	serving map[string]bool
}

func (h *Hub) init() {
	h.once.Do(func() {
		h.reports = map[string]report{}
		if h.Clock == nil {
			h.Clock = clock.RealClock{}
		}
	})
}

// Register serves the Hub on s.
func (h *Hub) Register(s grpc.ServiceRegistrar) {
	h.init()
	s.RegisterService(&serviceDesc, h)
}

// leading reports whether this replica leads.
func (h *Hub) leading() bool {
	select {
	case <-h.Elected:
		return true
	default:
		return false
	}
}

// Start notes when this replica started to lead and waits for ctx: the manager starts it
// on election (it needs leader election).
func (h *Hub) Start(ctx context.Context) error {
	h.init()
	h.mu.Lock()
	h.leadingSince = h.Clock.Now()
	h.mu.Unlock()
	<-ctx.Done()
	return nil
}

// HandleSignals applies a follower's batch to the local autoscaler.
func (h *Hub) HandleSignals(_ context.Context, in *Signals) (*Ack, error) {
	h.init()
	if !h.leading() {
		return nil, status.Errorf(codes.FailedPrecondition, "replica is not the leader: look up the leader again")
	}
	Apply(h.Sink, in)
	return &Ack{}, nil
}

// Apply feeds a batch to sink.
func Apply(sink autoscale.SignalSink, in *Signals) {
	for _, s := range in.Stats {
		sink.Record(autoscale.Stat{Function: autoscale.FunctionKey{Namespace: s.Namespace, Name: s.Name}, Pod: s.Pod,
			Concurrency: s.Concurrency, Requests: s.Requests, InFlight: s.InFlight})
	}
	for _, d := range in.Demand {
		fn := autoscale.FunctionKey{Namespace: d.Namespace, Name: d.Name}
		if d.Held == nil {
			sink.Poke(fn)
		} else {
			sink.Held(fn, d.Caller, *d.Held)
		}
	}
}

// HandleReport stores a follower's report. Every replica keeps them, so a new leader has its
// followers' sidecars as soon as their next report (ReportInterval) arrives.
func (h *Hub) HandleReport(_ context.Context, in *Report) (*Ack, error) {
	h.init()
	if in.Replica == "" {
		return nil, status.Errorf(codes.InvalidArgument, "report names no replica")
	}
	for i := range in.Nodes {
		if in.Nodes[i].Want == nil {
			in.Nodes[i].Want = map[string]string{} // its replica had no snapshot for it
		}
	}
	r := report{at: h.Clock.Now(), nodes: in.Nodes, serving: make(map[string]bool, len(in.Serving))}
	for _, f := range in.Serving {
		r.serving[f] = true
	}
	h.mu.Lock()
	h.reports[in.Replica] = r
	h.mu.Unlock()
	if h.OnChange != nil {
		h.OnChange()
	}
	return &Ack{}, nil
}

// fresh returns the reports younger than ReportTTL, forgetting the others. Call with h.mu
// held.
func (h *Hub) fresh() []report {
	now := h.Clock.Now()
	out := make([]report, 0, len(h.reports))
	for id, r := range h.reports {
		if now.Sub(r.at) > ReportTTL {
			delete(h.reports, id)
			continue
		}
		out = append(out, r)
	}
	return out
}

// Nodes returns every sidecar of the mesh: this replica's, then those other replicas
// reported (a sidecar that shows on two replicas, while it reconnects, counts once, as
// this replica's), sorted by ID. It implements the snapshot reconciler's NodeSource.
func (h *Hub) Nodes() []xds.NodeState {
	h.init()
	local := h.Local.Nodes()
	seen := make(map[string]bool, len(local))
	for _, n := range local {
		seen[n.ID] = true
	}
	h.mu.Lock()
	reports := h.fresh()
	h.mu.Unlock()
	out := local
	for _, r := range reports {
		for _, n := range r.nodes {
			if !seen[n.ID] {
				seen[n.ID] = true
				out = append(out, n)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Drained is the hand-off's verdict over every replica: this replica's sidecars ACKed a
// snapshot in which fn takes no new requests (xds.Server.Drained), and so did every other
// replica's, each against its own snapshot, which must not send fn new requests either.
// For one ReportInterval after this replica starts to lead it answers false: a follower's
// report may not have reached it yet (the MeshFunction controller's hand-off timeout still
// bounds the wait).
func (h *Hub) Drained(fn types.NamespacedName) bool {
	h.init()
	h.mu.Lock()
	since := h.leadingSince
	reports := h.fresh()
	h.mu.Unlock()
	if since.IsZero() || h.Clock.Since(since) < ReportInterval {
		return false
	}
	if !h.Local.Drained(fn) {
		return false
	}
	key := fn.String()
	for _, r := range reports {
		if r.serving[key] {
			return false
		}
		for _, n := range r.nodes {
			want := n.Want[resourcev3.EndpointType]
			if want != "" && n.Acked[resourcev3.EndpointType] != want {
				return false
			}
		}
	}
	return true
}
