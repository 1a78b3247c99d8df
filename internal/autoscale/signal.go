package autoscale

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	meshv1alpha1 "github.com/weftmesh/weft/api/v1alpha1"
	"github.com/weftmesh/weft/contract"
	"github.com/weftmesh/weft/internal/xds"
)

// signalHandler is the server side of contract.SignalService.
type signalHandler interface {
	Report(ctx context.Context, in *contract.StatsReport) (*contract.Ack, error)
	Demand(ctx context.Context, in *contract.DemandSignal) (*contract.Ack, error)
}

// The signal service's JSON codec; the sidecar registers the same one.
func init() { encoding.RegisterCodec(contract.SignalCodec{}) }

// SignalSink takes the signals the signal service has verified: *Autoscaler on the leader,
// and on another manager replica what forwards them to the leader (internal/peer). Each
// reports false when the function is not known (NotFound for a poke).
type SignalSink interface {
	Record(s Stat) bool
	Poke(fn FunctionKey) bool
	Held(fn FunctionKey, caller string, n int) bool
}

// RegisterSignalServer serves sidecar stats and demand pokes on s (the ADS
// server, so sidecars need one connection) and feeds them to a. revisions, if given,
// tells which revision an unauthenticated sidecar's pod belongs to.
func RegisterSignalServer(s grpc.ServiceRegistrar, a SignalSink, revisions ...RevisionSource) {
	srv := &signalServer{a: a}
	if len(revisions) > 0 {
		srv.revisions = revisions[0]
	}
	s.RegisterService(&signalServiceDesc, srv)
}

// RevisionSource names the revision a function's pod belongs to (its
// meshv1alpha1.LabelRevision label), "" for a pod of a function without revisions.
type RevisionSource interface {
	RevisionOf(namespace, pod string) string
}

// RevisionSourceFunc adapts a function to RevisionSource.
type RevisionSourceFunc func(namespace, pod string) string

// RevisionOf calls f.
func (f RevisionSourceFunc) RevisionOf(namespace, pod string) string { return f(namespace, pod) }

type signalServer struct {
	a         SignalSink
	revisions RevisionSource
}

// Report records every stat; stats for functions without a spec yet are
// dropped silently, since the next second brings fresh ones. On an authenticated server a
// sidecar reports only its own pod of the function it serves.
func (s *signalServer) Report(ctx context.Context, in *contract.StatsReport) (*contract.Ack, error) {
	if err := reporterMay(ctx, in); err != nil {
		return nil, err
	}
	for _, st := range in.Stats {
		s.a.Record(Stat{
			Function:    s.statKey(ctx, st),
			Pod:         st.Pod,
			Concurrency: st.Concurrency,
			Requests:    st.Requests,
			InFlight:    st.InFlight,
		})
	}
	return &contract.Ack{}, nil
}

// Demand pokes the function, with the number of requests the sending sidecar
// holds when the poke carries one (see Autoscaler.Held). An unknown function
// is NotFound so the caller sidecar can log it; it re-sends while it still
// holds requests. Nothing is stored for it. Any authenticated sidecar may poke (every
// workload may call every function); the server's interceptor has refused the others.
func (s *signalServer) Demand(ctx context.Context, in *contract.DemandSignal) (*contract.Ack, error) {
	fn := FunctionKey{Namespace: in.Namespace, Name: in.Name}
	if fn.Namespace == "" || fn.Name == "" {
		return nil, status.Errorf(codes.InvalidArgument,
			"demand for function %q names no namespace or no name: send both, as in the function cluster's weft.dev/function metadata", fn)
	}
	var known bool
	if in.Held == nil {
		known = s.a.Poke(fn)
	} else {
		known = s.a.Held(fn, demandCaller(ctx), *in.Held)
	}
	if !known {
		return nil, status.Errorf(codes.NotFound,
			"function %s is not known to the autoscaler: check that the MeshFunction exists and was accepted", fn)
	}
	return &contract.Ack{}, nil
}

// statKey is the autoscaler key a pod's stat counts for: a pod of a revision (a function
// with spec.traffic) reports under its function's name, and counts for its revision, which
// the autoscaler scales on its own. The revision comes from the verified pod's labels, or,
// on an unauthenticated server, from the RevisionSource.
func (s *signalServer) statKey(ctx context.Context, st contract.PodStat) FunctionKey {
	key := FunctionKey{Namespace: st.Namespace, Name: st.Name}
	rev := ""
	if id, ok := xds.IdentityFrom(ctx); ok {
		rev = id.Labels[meshv1alpha1.LabelRevision]
	} else if s.revisions != nil {
		rev = s.revisions.RevisionOf(st.Namespace, st.Pod)
	}
	if rev != "" {
		key.Name = rev
	}
	return key
}

// reporterMay refuses stats about another function or another pod than the caller's
// verified one. Without an identity in ctx the server runs unauthenticated (tests, dev).
func reporterMay(ctx context.Context, in *contract.StatsReport) error {
	id, ok := xds.IdentityFrom(ctx)
	if !ok {
		return nil
	}
	for _, st := range in.Stats {
		if fn := st.Namespace + "/" + st.Name; fn != id.Function() || st.Pod != id.Pod {
			return status.Errorf(codes.PermissionDenied,
				"stats for pod %s of function %s refused: the caller is pod %s/%s, which serves %q; a sidecar reports only its own pod",
				st.Pod, fn, id.Namespace, id.Pod, id.Function())
		}
	}
	return nil
}

// demandCaller names the sidecar a held count comes from: its verified pod when the
// server authenticates, else the address its connection comes from. Each sidecar keeps one
// connection to the manager, so its counts replace each other; after a reconnect the old
// address's count expires (HeldTTL).
func demandCaller(ctx context.Context) string {
	if id, ok := xds.IdentityFrom(ctx); ok {
		return id.Namespace + "/" + id.Pod
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

var signalServiceDesc = grpc.ServiceDesc{
	ServiceName: contract.SignalService,
	HandlerType: (*signalHandler)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Report", Handler: unary(contract.ReportMethod, signalHandler.Report)},
		{MethodName: "Demand", Handler: unary(contract.DemandMethod, signalHandler.Demand)},
	},
	Metadata: "weft.autoscale.v1 (JSON codec " + contract.SignalCodecName + ")",
}

// unary builds a grpc.MethodHandler for one method, the code protoc would generate.
func unary[In any](fullMethod string, call func(signalHandler, context.Context, *In) (*contract.Ack, error)) grpc.MethodHandler {
	return func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
		in := new(In)
		if err := dec(in); err != nil {
			return nil, err
		}
		h := srv.(signalHandler)
		if interceptor == nil {
			return call(h, ctx, in)
		}
		info := &grpc.UnaryServerInfo{Server: srv, FullMethod: fullMethod}
		return interceptor(ctx, in, info, func(ctx context.Context, req any) (any, error) {
			return call(h, ctx, req.(*In))
		})
	}
}
