// Package peer connects the manager's replicas (docs/ha.md). Every replica serves xDS and
// takes sidecars' signals; only the leader decides scaling and hands functions off. A
// follower forwards the stats and demand its signal service has verified to the leader
// (Forwarder → Hub.HandleSignals), and reports which sidecars it serves and what they
// ACKed (Hub.HandleReport), so the leader's autoscaler sees every pod and its hand-off and
// status count every sidecar, whichever replica it is connected to.
//
// Replicas talk gRPC (the signal service's JSON codec) on their own peer port, over TLS
// with the xDS certificate and a token derived from its private key: only a process that
// can read the manager's xDS Secret can forward signals, so the peer port is no way around
// the signal service's checks.
package peer

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"

	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/xds"
)

// The peer service's JSON codec, the signal service's.
func init() { encoding.RegisterCodec(contract.SignalCodec{}) }

const (
	// ServiceName is the peer gRPC service.
	ServiceName = "weft.peer.v1.Peer"
	// SignalsMethod carries a batch of verified signals from a follower to the leader.
	SignalsMethod = "/" + ServiceName + "/Signals"
	// NodesMethod carries a follower's sidecars and what they ACKed to the leader.
	NodesMethod = "/" + ServiceName + "/Nodes"
	// Port is the peer port's default.
	Port = 18001
)

// Limits. A batch is what a follower buffered while it had no leader to send to; a report
// lists the sidecars connected to one replica.
const (
	// MaxBufferedStats bounds the stats a follower holds for the leader: at one stat per
	// pod per second, 4,096 are 4 s of 1,000 pods. The oldest go first.
	MaxBufferedStats = 4096
	// MaxBufferedDemands bounds the (function, caller) demand entries a follower holds:
	// each caller's latest held count replaces its earlier ones.
	MaxBufferedDemands = 4096
	// MaxStatAge drops buffered stats older than this: the decider's panic window is 6 s,
	// and a stat that old says little about now.
	MaxStatAge = 10 * time.Second
	// MaxMessageBytes bounds one peer message: a report of 10,000 sidecars at ~1 KiB each.
	MaxMessageBytes = 16 << 20
	// ReportInterval is how often a follower re-sends its report when nothing changed; a
	// change is sent within ReportDelay.
	ReportInterval = 5 * time.Second
	// ReportDelay coalesces the ACKs of one push into one report: at most 5 reports a
	// second (a report of 1,000 sidecars is ~0.5 MB), and a hand-off waits at most this
	// long for a follower's ACKs to reach the leader.
	ReportDelay = 200 * time.Millisecond
	// ReportTTL expires the report of a replica that stopped sending (it died: its sidecars
	// reconnect to another replica, which reports them).
	ReportTTL = 3 * ReportInterval
	// callTimeout bounds one RPC to the leader.
	callTimeout = 2 * time.Second
)

// Stat is one pod's stat, already verified and keyed (its revision resolved) by the
// follower's signal service.
type Stat struct {
	Namespace   string  `json:"namespace"`
	Name        string  `json:"name"`
	Pod         string  `json:"pod"`
	Concurrency float64 `json:"concurrency,omitempty"`
	Requests    float64 `json:"requests,omitempty"`
	InFlight    int     `json:"inFlight,omitempty"`
}

// Demand is a poke (Held nil) or a caller's held count for a function.
type Demand struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Caller    string `json:"caller,omitempty"`
	Held      *int   `json:"held,omitempty"`
}

// Signals is a follower's batch.
type Signals struct {
	Replica string   `json:"replica"`
	Stats   []Stat   `json:"stats,omitempty"`
	Demand  []Demand `json:"demand,omitempty"`
}

// Report is everything the leader needs about one follower's sidecars: each one's state,
// with Want set to the versions the follower serves its view, and the functions the
// follower's current snapshot still sends new requests to.
type Report struct {
	Replica string          `json:"replica"`
	Nodes   []xds.NodeState `json:"nodes,omitempty"`
	// Serving are "<namespace>/<name>" of the functions with an endpoint taking new
	// requests in the follower's snapshot.
	Serving []string `json:"serving,omitempty"`
}

// Ack is the empty answer.
type Ack struct{}

// handler is the server side of the peer service.
type handler interface {
	HandleSignals(ctx context.Context, in *Signals) (*Ack, error)
	HandleReport(ctx context.Context, in *Report) (*Ack, error)
}

var serviceDesc = grpc.ServiceDesc{
	ServiceName: ServiceName,
	HandlerType: (*handler)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Signals", Handler: unary(SignalsMethod, handler.HandleSignals)},
		{MethodName: "Nodes", Handler: unary(NodesMethod, handler.HandleReport)},
	},
	Metadata: "weft.peer.v1 (JSON codec " + contract.SignalCodecName + ")",
}

// unary builds a grpc.MethodHandler for one method, the code protoc would generate.
func unary[In any](fullMethod string, call func(handler, context.Context, *In) (*Ack, error)) grpc.MethodHandler {
	return func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
		in := new(In)
		if err := dec(in); err != nil {
			return nil, err
		}
		h := srv.(handler)
		if interceptor == nil {
			return call(h, ctx, in)
		}
		info := &grpc.UnaryServerInfo{Server: srv, FullMethod: fullMethod}
		return interceptor(ctx, in, info, func(ctx context.Context, req any) (any, error) {
			return call(h, ctx, req.(*In))
		})
	}
}
